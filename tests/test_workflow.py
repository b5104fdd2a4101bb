"""The user's loop through the installed executable: `mome train` on a manifest, then `mome evaluate` on it."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from test_training import CLIPS, make_clip

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

MOME = str(Path(sys.executable).parent / "mome")
RECIPE = Path(__file__).parent.parent / "recipes" / "tiny.toml"


def mome(*args, cwd):
    env = {**os.environ, "MOME_HOME": str(cwd / "home"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([MOME, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env)
    result.explain = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def test_train_then_evaluate_every_rate_and_snr(tmp_path):
    rows = []
    for name, (video, audio, seconds, text) in CLIPS.items():
        make_clip(tmp_path / name, video, audio, seconds)
        rows.append({"id": Path(name).stem, "video": name, "text": text})
    (tmp_path / "corpus.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    trained = mome("train", "--config", RECIPE, "--train", tmp_path / "corpus.jsonl", "--roi", "-o", tmp_path / "run",
                   "--steps", 240, "--batch-frames", 100, "--save-every", 240, "--eval-every", 1000, cwd=tmp_path)
    assert trained.returncode == 0, trained.explain
    evaluated = mome("evaluate", "--dataset", tmp_path / "corpus.jsonl", "--model", tmp_path / "run", "--roi",
                     "--snr", "clean,0", "-o", tmp_path / "eval", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.explain

    rates = ["4,2", "4,5", "16,2", "16,5"]
    table = evaluated.stdout
    assert all(rate in table for rate in rates) and "clean" in table and "0" in table, evaluated.explain
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    cells = report["results"]
    assert len(cells) == len(rates) * 2
    words = sum(len(text.split()) for *_, text in CLIPS.values())
    for cell in cells:
        assert cell["utterances"] == len(CLIPS) and cell["ref_words"] == words, cell
        assert cell["substitutions"] + cell["deletions"] + cell["insertions"] == round(cell["wer"] * words), cell
        if cell["snr"] == "clean":  # 4 of the 8 cells
            assert cell["wer"] == 0, cell  # the training clips, learned: word-perfect at every rate pair
    hypotheses = [json.loads(line) for line in (tmp_path / "eval" / "hypotheses.jsonl").read_text().splitlines()]
    assert len(hypotheses) == len(CLIPS) * len(rates) * 2
    assert {h["id"] for h in hypotheses} == {Path(n).stem for n in CLIPS}
    assert (tmp_path / "eval" / "wer.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
