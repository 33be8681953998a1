"""CLIP's byte-level BPE tokenizer (Stable Diffusion's `tokenizer/`), in plain Python, no dependencies.

Reads a checkpoint's `tokenizer/` folder — `vocab.json` (token → id), `merges.txt` (one merge "a b" per
line, by priority), and, when present, `tokenizer_config.json` / `special_tokens_map.json` (bos / eos /
pad / unk tokens, model_max_length); a folder saved by transformers ≥ 5 has `tokenizer.json` instead of
the first two, whose BPE model (vocab, merges, added tokens) is read — and turns prompts into the (B, 77)
input_ids of the text encoder exactly as transformers 5.23's `CLIPTokenizer(prompt, padding="max_length",
max_length=77, truncation=True)` does. Its steps, in order:

1. Special tokens. Occurrences of the special tokens' strings (bos, eos, pad, unk and the folder's
   added tokens) in the raw text — case-sensitive, leftmost, longest first — become their ids as they are;
   the text between them goes through 2–5 piece by piece.
2. Cleanup (the normalizer transformers uses when ftfy is absent): Unicode NFC, every run of white space
   (the Unicode White_Space characters) replaced by one space, then lower case, character by character
   (so a final capital sigma becomes σ, not ς).
3. Pre-tokenisation with CLIP's pattern
       <|startoftext|> | <|endoftext|> | 's | 't | 're | 've | 'm | 'll | 'd | letters+ | one digit | other+
   where letters are Unicode category L, digits category N and "other" anything that is neither nor white
   space; white space only separates. The byte-level step then splits the two literal markers once more,
   into "<|", the word and "|>" (GPT-2's pattern, which it applies to every piece, changes nothing else).
4. Byte-to-unicode: each piece's UTF-8 bytes as GPT-2's printable stand-ins (the printable Latin-1 bytes
   stand for themselves, the other 68 bytes for U+0100 onwards in byte order).
5. BPE: the piece's symbols, the last one carrying the end-of-word mark "</w>", are merged pair by pair:
   always the adjacent pair with the best (lowest) merge rank, every occurrence of it left to right, until
   no adjacent pair has a rank. A symbol missing from the vocabulary becomes the unknown token and takes
   part in no merge.
6. [bos] + ids + [eos], the content truncated to max_length − 2, then padded with the pad token to
   max_length (SD-1.5's pad token is "<|endoftext|>", the eos; SD 2's is "!").
Not implemented: ftfy's mojibake repair (transformers 5 does not apply it either), decoding ids to text.
"""
from __future__ import annotations

import functools
import json
import unicodedata
from pathlib import Path
from typing import NamedTuple, Sequence

import numpy as np

from mvd_jax.errors import UserError

END_OF_WORD = "</w>"
DEFAULT_MAX_LENGTH = 77  # CLIP's context length; used when tokenizer_config.json gives none
# The markers CLIP's pre-tokenisation pattern keeps whole (step 3 of the module docstring).
MARKERS = ("<|startoftext|>", "<|endoftext|>")
CONTRACTIONS = ("s", "t", "re", "ve", "m", "ll", "d")  # after an apostrophe, in the pattern's order
DEFAULT_SPECIAL_TOKENS = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                          "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
# Unicode's White_Space property: what the tokenizer's regular expressions mean by \s. (Python's str.isspace
# also counts U+001C–U+001F, which are not white space there.)
WHITE_SPACE = frozenset("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000"
                        + "".join(chr(c) for c in range(0x2000, 0x200B)))
# transformers writes this model_max_length when a tokenizer has none (int(1e30)); treated as absent.
_UNSET_MAX_LENGTH = 10 ** 29


@functools.lru_cache(maxsize=1)
def byte_to_unicode() -> tuple[str, ...]:
    """The stand-in character of each byte 0…255 (step 4 of the module docstring)."""
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return tuple(out)


def _is_letter(c: str) -> bool:
    return unicodedata.category(c)[0] == "L"


def _is_number(c: str) -> bool:
    return unicodedata.category(c)[0] == "N"


def clean_text(text: str) -> str:
    """Step 2: NFC, white-space runs → one space, per-character lower case."""
    text = unicodedata.normalize("NFC", text)
    out, in_space = [], False
    for c in text:
        if c in WHITE_SPACE:
            if not in_space:
                out.append(" ")
            in_space = True
        else:
            out.append(c.lower())
            in_space = False
    return "".join(out)


def pre_tokenize(text: str) -> list[str]:
    """Step 3 on cleaned text: the pieces BPE runs on, white space dropped."""
    pieces, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if c in WHITE_SPACE:
            i += 1
            continue
        marker = next((m for m in MARKERS if text.startswith(m, i)), None)
        if marker is not None:
            pieces += ["<|", marker[2:-2], "|>"]
            i += len(marker)
            continue
        if c == "'":
            suffix = next((s for s in CONTRACTIONS if text.startswith(s, i + 1)), None)
            if suffix is not None:
                pieces.append("'" + suffix)
                i += 1 + len(suffix)
                continue
        j = i + 1
        if _is_letter(c):
            while j < n and _is_letter(text[j]):
                j += 1
        elif not _is_number(c):  # a run of "other" characters; a digit is a piece on its own
            while j < n and not (text[j] in WHITE_SPACE or _is_letter(text[j]) or _is_number(text[j])):
                j += 1
        pieces.append(text[i:j])
        i = j
    return pieces


class Tokenized(NamedTuple):
    input_ids: np.ndarray  # (B, max_length) int32
    attention_mask: np.ndarray  # (B, max_length) int32: 1 for bos, content and eos, 0 for padding


class CLIPTokenizer:
    """CLIP's BPE tokenizer; `CLIPTokenizer.from_folder(".../tokenizer")` reads a checkpoint's files.

    `tokenizer(prompts)` → Tokenized(input_ids, attention_mask), each (B, max_length) int32.
    """

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]], *,
                 bos_token: str = "<|startoftext|>", eos_token: str = "<|endoftext|>",
                 pad_token: str = "<|endoftext|>", unk_token: str = "<|endoftext|>",
                 added_tokens: dict[str, int] | None = None, model_max_length: int = DEFAULT_MAX_LENGTH,
                 source: str = "<vocab>"):
        self.vocab = dict(vocab)
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, (a, b) in enumerate(merges):
            for token in (a, b, a + b):
                if token not in self.vocab:
                    raise UserError(f"{source}: merge {rank + 1} ({a!r} {b!r}) uses {token!r}, which is not in the "
                                    "vocabulary")
            self.ranks.setdefault((a, b), rank)
        # special token string → id: the config's added tokens, else the vocabulary's id
        self.special = dict(added_tokens or {})
        for name, token in (("bos_token", bos_token), ("eos_token", eos_token), ("pad_token", pad_token),
                            ("unk_token", unk_token)):
            if token not in self.special:
                if token not in self.vocab:
                    raise UserError(f"{source}: the {name} {token!r} is not in the vocabulary")
                self.special[token] = self.vocab[token]
        self.bos_token_id = self.special[bos_token]
        self.eos_token_id = self.special[eos_token]
        self.pad_token_id = self.special[pad_token]
        self.unk_token_id = self.special[unk_token]
        self._special_longest_first = sorted(self.special, key=len, reverse=True)
        if isinstance(model_max_length, bool) or not isinstance(model_max_length, int) or model_max_length < 2:
            raise UserError(f"{source}: model_max_length must be an integer ≥ 2 (bos and eos), "
                            f"got {model_max_length!r}")
        self.model_max_length = model_max_length
        self._bpe_cache: dict[str, tuple[str, ...]] = {}

    # ---- files ------------------------------------------------------------------------------------
    @classmethod
    def from_folder(cls, folder) -> "CLIPTokenizer":
        """From a `tokenizer/` folder, or an SD / InstructPix2Pix pipeline folder holding one."""
        folder = Path(folder)
        if not (folder / "vocab.json").is_file() and (folder / "tokenizer" / "vocab.json").is_file():
            folder = folder / "tokenizer"
        added = {}
        if not (folder / "vocab.json").is_file() and (folder / "tokenizer.json").is_file():
            vocab, merges, added = _read_tokenizer_json(folder / "tokenizer.json")
        else:
            vocab = _read_vocab(folder / "vocab.json")
            merges = _read_merges(folder / "merges.txt")
        config = _read_optional_json(folder / "tokenizer_config.json")
        token_map = _read_optional_json(folder / "special_tokens_map.json")
        kwargs = {}
        for name in DEFAULT_SPECIAL_TOKENS:  # tokenizer_config.json first, special_tokens_map.json fills gaps
            value = config.get(name) or token_map.get(name)
            if value is not None:
                kwargs[name] = _token_content(value, f"{folder}: {name}")
        for key, entry in (config.get("added_tokens_decoder") or {}).items():
            try:
                added[_token_content(entry, "added token")] = int(key)
            except ValueError:
                raise UserError(f"{folder / 'tokenizer_config.json'}: added_tokens_decoder key {key!r} is not an "
                                "id") from None
        max_length = config.get("model_max_length")
        if max_length is None or (isinstance(max_length, (int, float)) and max_length >= _UNSET_MAX_LENGTH):
            max_length = DEFAULT_MAX_LENGTH
        return cls(vocab, merges, added_tokens=added, model_max_length=max_length, source=str(folder), **kwargs)

    # ---- text → tokens ----------------------------------------------------------------------------
    def _split_special(self, text: str) -> list[tuple[str, bool]]:
        """Step 1: (segment, is_special) in order."""
        out, start, i = [], 0, 0
        while i < len(text):
            token = next((t for t in self._special_longest_first if text.startswith(t, i)), None)
            if token is None:
                i += 1
                continue
            if start < i:
                out.append((text[start:i], False))
            out.append((token, True))
            i = start = i + len(token)
        if start < len(text):
            out.append((text[start:], False))
        return out

    def bpe(self, piece: str) -> tuple[str, ...]:
        """Step 5 on one byte-mapped piece: its BPE tokens (strings; unknown symbols stay as they are)."""
        if piece in self._bpe_cache:
            return self._bpe_cache[piece]
        symbols = list(piece[:-1]) + [piece[-1] + END_OF_WORD]
        while len(symbols) > 1:
            pairs = [(self.ranks.get(p, -1), p) for p in zip(symbols, symbols[1:])]
            ranked = [rp for rp in pairs if rp[0] >= 0]
            if not ranked:
                break
            a, b = min(ranked)[1]
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and symbols[i] == a and symbols[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        out = tuple(symbols)
        self._bpe_cache[piece] = out
        return out

    def _tokens_and_ids(self, text: str) -> list[tuple[str, int]]:
        table = byte_to_unicode()
        out = []
        for segment, special in self._split_special(text):
            if special:
                out.append((segment, self.special[segment]))
                continue
            for piece in pre_tokenize(clean_text(segment)):
                out += [(t, self.vocab.get(t, self.unk_token_id))
                        for t in self.bpe("".join(table[b] for b in piece.encode("utf-8")))]
        return out

    def tokenize(self, text: str) -> list[str]:
        """The token strings of `text`, without bos/eos (special tokens as themselves; a symbol missing from
        the vocabulary as itself, though its id is the unknown token's)."""
        return [t for t, _ in self._tokens_and_ids(text)]

    def encode(self, text: str) -> list[int]:
        """The ids of `text`, without bos/eos and untruncated."""
        return [i for _, i in self._tokens_and_ids(text)]

    def __call__(self, prompts: str | Sequence[str], max_length: int | None = None) -> Tokenized:
        """Prompts → [bos] + ids[:max_length − 2] + [eos], right-padded with the pad id to max_length
        (default model_max_length, 77 for SD)."""
        if isinstance(prompts, str):
            prompts = [prompts]
        if not all(isinstance(p, str) for p in prompts):
            raise UserError("CLIPTokenizer: prompts must be strings")
        length = self.model_max_length if max_length is None else max_length
        if isinstance(length, bool) or not isinstance(length, int) or length < 2:
            raise UserError(f"CLIPTokenizer: max_length must be an integer ≥ 2 (bos and eos), got {length!r}")
        ids = np.full((len(prompts), length), self.pad_token_id, np.int32)
        mask = np.zeros((len(prompts), length), np.int32)
        for row, prompt in enumerate(prompts):
            seq = [self.bos_token_id, *self.encode(prompt)[:length - 2], self.eos_token_id]
            ids[row, :len(seq)] = seq
            mask[row, :len(seq)] = 1
        return Tokenized(ids, mask)


# ---- file readers --------------------------------------------------------------------------------
def _read_vocab(path: Path) -> dict[str, int]:
    if not path.is_file():
        raise UserError(f"tokenizer vocabulary not found: {path} (a CLIP tokenizer folder holds vocab.json and "
                        "merges.txt)")
    try:
        vocab = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
                                              for k, v in vocab.items()):
        raise UserError(f"{path} must map token strings to integer ids")
    return vocab


def _read_merges(path: Path) -> list[tuple[str, str]]:
    """merges.txt: an optional "#version" first line, then "a b" per line (blank lines ignored)."""
    if not path.is_file():
        raise UserError(f"tokenizer merges not found: {path} (a CLIP tokenizer folder holds vocab.json and "
                        "merges.txt)")
    merges = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        line = line.rstrip("\r")
        if not line.strip() or line.startswith("#version"):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise UserError(f"{path}:{number}: a merge is two tokens separated by one space, got {line!r}")
        merges.append((parts[0], parts[1]))
    return merges


def _read_tokenizer_json(path: Path) -> tuple[dict[str, int], list[tuple[str, str]], dict[str, int]]:
    """vocab, merges and added tokens of a `tokenizer.json` (the tokenizers library's file) holding CLIP's
    BPE model: end-of-word suffix "</w>", no continuing-subword prefix."""
    d = _read_optional_json(path)
    model = d.get("model")
    if not isinstance(model, dict) or model.get("type") != "BPE" or model.get("end_of_word_suffix") != END_OF_WORD \
            or model.get("continuing_subword_prefix") not in (None, ""):
        raise UserError(f"{path} does not hold CLIP's BPE model (type BPE, end_of_word_suffix {END_OF_WORD!r})")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or not all(isinstance(k, str) and isinstance(v, int) for k, v in vocab.items()):
        raise UserError(f"{path}: model.vocab must map token strings to integer ids")
    merges = []
    for m in model.get("merges") or []:
        parts = m.split(" ") if isinstance(m, str) else m
        if not isinstance(parts, (list, tuple)) or len(parts) != 2 or not all(isinstance(t, str) and t for t in parts):
            raise UserError(f"{path}: a merge is two tokens, got {m!r}")
        merges.append((parts[0], parts[1]))
    added = {}
    for entry in d.get("added_tokens") or []:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
            raise UserError(f"{path}: an added token needs an integer id, got {entry!r}")
        added[_token_content(entry, f"{path}: added token")] = entry["id"]
    return vocab, merges, added


def _read_optional_json(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(d, dict):
        raise UserError(f"{path} must hold a JSON object")
    return d


def _token_content(value, what: str) -> str:
    """A special token as tokenizer files write it: a string, or an AddedToken dict with "content"."""
    if isinstance(value, dict):
        value = value.get("content")
    if not isinstance(value, str) or not value:
        raise UserError(f"{what}: expected a token string (or an object with a 'content' string), got {value!r}")
    return value
