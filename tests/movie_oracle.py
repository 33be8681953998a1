"""Tiny random InstructPix2Pix pieces for MoViE's tests: a CLIP vocabulary built here, and a whole
diffusers StableDiffusionInstructPix2PixPipeline folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/).

Test-only: imports torch, diffusers and transformers.
"""
from __future__ import annotations

import collections
import json

from mvd_jax.data.clip_tokenizer import byte_to_unicode

# ---- a small CLIP vocabulary, built here ----------------------------------------------------------
# Like CLIP's: the 256 byte symbols, the same with the end-of-word mark, BPE merges, then the two markers
# (so <|endoftext|> has the largest id, as SD-1.5's legacy pooling rule assumes). The merges are learned
# from this corpus by plain BPE training, so they stack several levels deep.
CORPUS = ("a photo of a cat sitting on the mat . the cat is orange and the dog is brown ! "
          "turn the sky into a starry night , make it snow , add fireworks ; photo of the city at night "
          "replace the cat with a dog . what's that ? it's the 2nd photograph 's sitting") * 3
NUM_MERGES = 120


def learn_merges(corpus: str, n: int) -> list[tuple[str, str]]:
    words = collections.Counter(tuple(w[:-1]) + (w[-1] + "</w>",) for w in corpus.split())
    merges = []
    for _ in range(n):
        pairs = collections.Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = max(pairs, key=lambda p: (pairs[p], p))
        merges.append(best)
        merged = collections.Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def _special(content: str) -> dict:
    return {"content": content, "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}


def write_tokenizer(folder, *, pad_token="<|endoftext|>", drop_symbols=(), configs=True):
    """vocab.json + merges.txt (+ SD-1.5-style tokenizer_config.json / special_tokens_map.json)."""
    folder.mkdir(parents=True)
    symbols = [s for s in sorted(byte_to_unicode(), key=ord) if s not in drop_symbols]  # CLIP's order: "!" is 0
    merges = [m for m in learn_merges(CORPUS, NUM_MERGES) if not any(s in "".join(m) for s in drop_symbols)]
    vocab = {}
    for token in symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + \
            ["<|startoftext|>", "<|endoftext|>"]:
        vocab.setdefault(token, len(vocab))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    if configs:
        tokens = {"bos_token": _special("<|startoftext|>"), "eos_token": _special("<|endoftext|>"),
                  "unk_token": _special("<|endoftext|>"), "pad_token": pad_token}
        (folder / "special_tokens_map.json").write_text(json.dumps(tokens))
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "add_prefix_space": False, "do_lower_case": True, "errors": "replace", "model_max_length": 77,
            "tokenizer_class": "CLIPTokenizer", **{k: dict(v, __type="AddedToken") if isinstance(v, dict) else v
                                                   for k, v in tokens.items()}}))
    return folder, vocab


# ---- a whole tiny InstructPix2Pix pipeline -----------------------------------------------------------
# Sizes: a 2-level UNet (cross-attention at the top level and in the mid block), a 2-level VAE (factor 2; 32
# groups as SD's), a 2-layer text encoder; every parameter random (oracle.randomize_parameters).
IP2P_UNET = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8, cross_attention_dim=32,
                 sample_size=8, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                 up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), attention_head_dim=(2, 4), in_channels=8,
                 out_channels=4)
IP2P_VAE = dict(block_out_channels=(32, 64), layers_per_block=1, latent_channels=4, norm_num_groups=32,
                down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2)
IP2P_TEXT = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                 max_position_embeddings=77, projection_dim=16, hidden_act="quick_gelu", bos_token_id=0,
                 eos_token_id=2, pad_token_id=1)
IP2P_SCHEDULER = {  # timbrooks/instruct-pix2pix's scheduler/scheduler_config.json
    "_class_name": "EulerAncestralDiscreteScheduler", "_diffusers_version": "0.15.0.dev0", "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
    "trained_betas": None}


def tiny_ip2p_pipeline(folder, seed: int = 0):
    """A random diffusers StableDiffusionInstructPix2PixPipeline saved to `folder`; returns the pipeline."""
    import torch
    from diffusers import (AutoencoderKL, EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from oracle import randomize_parameters

    _, vocab = write_tokenizer(folder / "tokenizer")
    torch.manual_seed(seed)
    unet = randomize_parameters(UNet2DConditionModel(**IP2P_UNET).eval(), seed + 1)
    vae = randomize_parameters(AutoencoderKL(**IP2P_VAE).eval(), seed + 2)
    text = randomize_parameters(CLIPTextModel(CLIPTextConfig(vocab_size=len(vocab), **IP2P_TEXT)).eval(), seed + 3)
    scheduler = EulerAncestralDiscreteScheduler.from_config(
        {k: v for k, v in IP2P_SCHEDULER.items() if not k.startswith("_")})
    pipe = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text, tokenizer=CLIPTokenizer.from_pretrained(folder / "tokenizer"), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    pipe.save_pretrained(folder)
    return pipe
