"""`python -m mvd_jax.tables --results DIR`: measured UCF-101 FVDs merged with the efficiency rows into
the paper's layout (markdown + CSV), the paper's numbers beside ours."""
import csv
import json
import os
import subprocess
import sys

import pytest

from mvd_jax import tables

XATTN = os.path.join(tables.PAPER_CONFIG_DIR, "xattn.py")


def fake_result(folder, name, fps, fvd, config, nfe, n=64):
    """A result.json as ucf101.py writes it (only the keys the table reads, plus one it ignores)."""
    folder.mkdir(parents=True, exist_ok=True)
    data = {"kind": "mvd_jax.eval.ucf101", "name": name, "config": config, "fps": fps, "fvd": fvd, "nfe": nfe,
            "videos_used": n, "config_path": None, "steps": nfe}
    (folder / "result.json").write_text(json.dumps(data))
    (folder / "settings.json").write_text(json.dumps({"fps": fps}))  # not a result: ignored


def test_paper_fvd_numbers_are_the_papers():
    """Spot checks against mobilevd_paper.md Tables 1–8 (typed from the spec, not computed)."""
    assert tables.PAPER_FVD["mobilevd"][1:4] == (1, 149, 171)
    assert tables.PAPER_FVD["svd_512x256"][1:4] == (50, 366, 476)
    assert tables.PAPER_FVD["svd_1024x576"][1:4] == (50, 140, 149)
    assert tables.PAPER_FVD["xattn_adv"][1:4] == (1, 133, 168)
    assert tables.PAPER_FVD["pruned_80"][2:4] == (245, None)
    assert tables.PAPER_FVD["mobilevd_hd"][2:4] == (126, 184)
    config_stems = {os.path.splitext(f)[0] for f in os.listdir(tables.PAPER_CONFIG_DIR) if f.endswith(".py")}
    assert {v[0] for v in tables.PAPER_FVD.values()} <= config_stems  # every row's config exists


def test_results_table(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_result(runs / "adv7", "xattn_adv", 7, 171.25, "xattn", 1)
    fake_result(runs / "adv25", "xattn_adv", 25, 140.5, "xattn", 1)
    fake_result(runs / "mine", "my_model", 7, 300.0, None, 4, n=8)
    (runs / "junk.json").write_text("{not json")
    rows = tables.main(["--results", str(runs), "--configs", XATTN])
    by_row = {r["row"]: r for r in rows}
    assert [r["row"] for r in rows] == ["xattn", "xattn_adv", "my_model"]  # paper order, then ours
    adv = by_row["xattn_adv"]
    assert (adv["fvd_7fps"], adv["paper_fvd_7fps"], adv["fvd_25fps"], adv["paper_fvd_25fps"]) == (171.25, 168, 140.5, 133)
    assert adv["nfe"] == "1" and adv["paper_nfe"] == 1 and adv["videos_7fps"] == 64
    assert adv["paper_tflops"] == 8.24 and 7.9 < adv["tflops"] < 8.3 and adv["params"] == 1_524_623_082
    assert by_row["xattn"]["fvd_7fps"] is None and by_row["xattn"]["paper_fvd_7fps"] == 196
    assert by_row["my_model"]["fvd_7fps"] == 300.0 and by_row["my_model"]["paper_fvd_7fps"] is None

    out = capsys.readouterr()
    md = (runs / "quality_table.md").read_text()
    assert md.strip() == out.out.strip()
    assert (f"| xattn_adv | xattn | 1 | 1 | 140.5 (n=64) | 133 | 171.2 (n=64) | 168 | {adv['tflops']:.2f} | 8.24 | "
            "1,524,623,082 |") in md
    assert "note: skipping" in out.err and "junk.json" in out.err
    with open(runs / "quality_table.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert [r["row"] for r in table] == ["xattn", "xattn_adv", "my_model"]
    assert table[1]["fvd_7fps"] == "171.25" and table[1]["paper_fvd_7fps"] == "168" and table[0]["fvd_7fps"] == ""
    assert list(table[0]) == tables.QUALITY_COLUMNS


@pytest.mark.parametrize("case", ["missing", "no_results", "duplicate", "incomplete"])
def test_results_errors(tmp_path, case, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    expected = {"missing": "results folder not found", "no_results": "no UCF-101 results",
                "duplicate": "two results for row 'a' at 7 fps", "incomplete": "incomplete ucf101 result"}[case]
    if case == "missing":
        runs = tmp_path / "nope"
    elif case == "duplicate":
        fake_result(runs / "x", "a", 7, 1.0, None, 1)
        fake_result(runs / "y", "a", 7, 2.0, None, 1)
    elif case == "incomplete":
        (runs / "result.json").write_text(json.dumps({"kind": "mvd_jax.eval.ucf101", "name": "a"}))
    with pytest.raises(SystemExit) as e:
        tables.main(["--results", str(runs), "--configs", XATTN])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert e.value.code == 2 and err.startswith("error: ") and expected in err, err
    assert not (runs / "quality_table.md").exists()


def test_results_cli_entry_point(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mvd_jax.tables", "--results", str(tmp_path)], capture_output=True,
                          text=True, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: no UCF-101 results")
