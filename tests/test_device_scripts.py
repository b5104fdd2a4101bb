"""scripts/device_demo.sh, the demo's `mome train` step on the lent GPU machine, run here on the CPU: a kit made the
way scripts/device_kit.sh makes one, but from this machine's own ffmpeg and espeak-ng (the real kit comes from the
package registries), tiny backbones, a small corpus. Only run on a GPU session otherwise, the script would rot here."""
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from mome_cli import synth

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("espeak-ng") is None,
                                 reason="needs ffmpeg and espeak-ng")]

REPO = Path(__file__).parents[1]
ESPEAK_DATA = ("phondata", "phonindex", "phontab", "intonations", "en_dict", "lang", "voices")


def espeak_paths() -> tuple[Path, Path]:
    """This machine's libespeak-ng and its data folder (what `espeak-ng --version` names)."""
    version = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, check=True).stdout
    data = Path(re.search(r"Data at: (\S+)", version).group(1))
    return Path(os.path.realpath(data.parent / "libespeak-ng.so.1")), data


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """A kit as device_kit.sh lays it out, and tiny backbones trained for two steps on a small corpus."""
    root = tmp_path_factory.mktemp("device")
    kit = root / "kit"
    (kit / "wheels").mkdir(parents=True)
    with tarfile.open(kit / "ffmpeg.tar.xz", "w:xz") as tar:
        for name in ("ffmpeg", "ffprobe"):
            tar.add(os.path.realpath(shutil.which(name)), arcname=name)
    library, data = espeak_paths()
    with tarfile.open(kit / "espeak.tar.xz", "w:xz") as tar:
        tar.add(library, arcname="libespeak-ng.so.1")
        for name in ESPEAK_DATA:
            tar.add(data / name, arcname=f"espeak-ng-data/{name}")
    with tarfile.open(kit / "fortunes.tar.xz", "w:xz"):
        pass  # only unpacked where /usr/share/games/fortunes is missing
    env = {**os.environ, "MOME_HOME": str(root / "home"), "OMP_NUM_THREADS": "1"}
    assert synth.main([str(root / "corpus"), "--utterances", "6", "--seed", "3", "--speakers", "2"]) == 0
    subprocess.run([sys.executable, "-m", "mome_cli.pretrain", "backbones", "--train",
                    str(root / "corpus" / "train.jsonl"), "-o", str(kit / "backbones"), "--steps", "2",
                    "--batch-frames", "150", "--threads", "1"], check=True, env=env, capture_output=True)
    return kit


def device_demo(kit: Path, root: Path, *args) -> subprocess.CompletedProcess:
    (root / "out").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OUT": str(root / "out"), "MOME_DEVICE_ROOT": str(root / "machine"),
           "MOME_DEVICE_KIT": str(kit), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # python3: this one
    return subprocess.run(["bash", str(REPO / "scripts" / "device_demo.sh"), "--device", "cpu", "--utterances", "40",
                           *map(str, args)], env=env, capture_output=True, text=True, cwd=REPO)


def members(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


def test_device_demo_makes_the_corpus_trains_evaluates_and_resumes_on_a_fresh_machine(kit, tmp_path):
    first = device_demo(kit, tmp_path / "first", "--steps", 2, "--baselines")
    assert first.returncode == 0, first.stderr
    machine = tmp_path / "first" / "machine"
    assert (machine / "bin" / "ffprobe").is_file() and (machine / "espeak" / "libespeak-ng.so.1").is_file()
    corpus = json.loads((machine / "work" / "synth" / "corpus.json").read_text())
    assert corpus["utterances"] == 40 and corpus["espeak_ng"] == synth.espeak().version
    out = tmp_path / "first" / "out"
    runs = ["baseline-16-2", "baseline-16-5", "baseline-4-2", "baseline-4-5", "demo-run"]
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{r}.tar" for r in runs] + ["evals.tar"])
    for run in runs:  # each run's files and output, the run's folder as it lies there
        assert members(out / f"{run}.tar") == [f"{run}.log"] + [f"{run}/{name}" for name in (
            "config.json", "log.jsonl", "model.safetensors", "train_config.json", "trainer_state.pt")]
    reports = [name for name in members(out / "evals.tar") if name.endswith("report.json")]
    assert reports == sorted(f"evals/{run}/{mode}/report.json" for run in runs for mode in ("a", "av", "v"))
    with tarfile.open(out / "evals.tar") as tar:
        demo = json.load(tar.extractfile("evals/demo-run/av/report.json"))
        baseline = json.load(tar.extractfile("evals/baseline-16-5/av/report.json"))
    assert demo["snrs"] == ["clean", -5, 0, 5] and len(demo["rates"]) == 4  # the demo run under babble too
    assert baseline["snrs"] == ["clean"] and baseline["rates"] == [[16, 5]]  # a baseline at its own pair alone
    with tarfile.open(out / "baseline-16-5.tar") as tar:
        trained = json.load(tar.extractfile("baseline-16-5/train_config.json"))
    assert [tuple(p) for p in trained["rates"]] == [(16, 5)]
    with tarfile.open(out / "demo-run.tar") as tar:
        assert torch.load(tar.extractfile("demo-run/trainer_state.pt"), weights_only=True)["step"] == 2
    assert "training for at most" in first.stderr and "demo-run: finished" in first.stderr

    # Next session: a bare machine, and what came back unpacked into the kit (.device): the demo run is resumed,
    # not started again (a finished one resumes to no more steps and is evaluated)
    with tarfile.open(out / "demo-run.tar") as tar:
        tar.extractall(kit, filter="data")
    try:
        again = device_demo(kit, tmp_path / "second")
    finally:
        shutil.rmtree(kit / "demo-run")
        (kit / "demo-run.log").unlink()
    assert again.returncode == 0, again.stderr
    assert "--resume" in again.stderr, again.stderr
    assert "resuming at step 2" in (tmp_path / "second" / "machine" / "work" / "demo-run.log").read_text()
    assert sorted(p.name for p in (tmp_path / "second" / "out").iterdir()) == ["demo-run.tar", "evals.tar"]


def test_device_demo_says_what_is_missing(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "MOME_DEVICE_KIT": str(tmp_path / "no-kit")}
    result = subprocess.run(["bash", str(REPO / "scripts" / "device_demo.sh")], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 4 and "ffmpeg.tar.xz is missing" in result.stderr, result.stderr
