"""scripts/device_demo.sh, the demo's `mome train` step on the lent GPU machine, run here on the CPU: a kit made the
way scripts/device_kit.sh makes one, but from this machine's own ffmpeg and espeak-ng (the real kit comes from the
package registries), tiny backbones, a small corpus. Only run on a GPU session otherwise, the script would rot here."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
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


def device_demo(kit: Path, root: Path, *args, trial: bool = True, run=subprocess.run, **kwargs):
    """The script on a machine whose folders are under root, on the CPU: a trial on 40 clips, or the real run (the
    recipe's 4,000 clips: too many to make here, so only what it does before it has them can be seen)."""
    (root / "out").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OUT": str(root / "out"), "MOME_DEVICE_ROOT": str(root / "machine"),
           "MOME_DEVICE_KIT": str(kit), "OMP_NUM_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # python3: this one
    kwargs = {"stdout": subprocess.PIPE, **kwargs}
    # A budget no CPU run here reaches: at the script's 500 s, a machine shared with other work stopped the slowest
    # evaluation (the demo run's av under babble) and its report was missing
    return run(["bash", str(REPO / "scripts" / "device_demo.sh"), "--device", "cpu", "--budget", "3600",
                *(["--utterances", "40"] if trial else []), *map(str, args)],
               env=env, stderr=subprocess.PIPE, text=True, cwd=REPO, **kwargs)


def members(tar_path: Path) -> list[str]:
    with tarfile.open(tar_path) as tar:
        return sorted(m.name for m in tar.getmembers() if m.isfile())


@pytest.fixture(scope="module")
def trial(kit, tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """A machine (the folder) where a trial ran: 40 clips, 2 steps, the baselines beside the demo run."""
    root = tmp_path_factory.mktemp("first")
    return root, device_demo(kit, root, "--steps", 2, "--baselines")


def test_device_demo_makes_the_corpus_trains_evaluates_and_resumes_on_a_fresh_machine(kit, trial, tmp_path):
    root, first = trial
    assert first.returncode == 0, first.stderr
    machine = root / "machine"
    assert (machine / "bin" / "ffprobe").is_file() and (machine / "espeak" / "libespeak-ng.so.1").is_file()
    corpus = json.loads((machine / "work" / "synth-n40" / "corpus.json").read_text())
    assert corpus["utterances"] == 40 and corpus["espeak_ng"] == synth.espeak().version
    out = root / "out"
    runs = ["baseline-16-2", "baseline-16-5", "baseline-4-2", "baseline-4-5", "demo-run"]
    # a trial's: named after it, in a folder of its own (unpacked into the kit, never the real run's)
    assert sorted(p.name for p in out.iterdir()) == sorted([f"trial-n40-{r}.tar" for r in runs]
                                                           + ["trial-n40-evals.tar"])
    files = ("config.json", "log.jsonl", "model.safetensors", "train_config.json", "trainer_state.pt")
    for run in runs:  # each run's files and output, the run's folder as it lies there
        folder = f"trial-n40/{run}"
        assert members(out / f"trial-n40-{run}.tar") == [f"{folder}.log", *(f"{folder}/{f}" for f in files)]
    reports = [name for name in members(out / "trial-n40-evals.tar") if name.endswith("report.json")]
    assert reports == sorted(f"trial-n40/evals/{run}/{mode}/report.json" for run in runs for mode in ("a", "av", "v"))
    with tarfile.open(out / "trial-n40-evals.tar") as tar:
        demo = json.load(tar.extractfile("trial-n40/evals/demo-run/av/report.json"))
        baseline = json.load(tar.extractfile("trial-n40/evals/baseline-16-5/av/report.json"))
    assert demo["snrs"] == ["clean", -5, 0, 5] and len(demo["rates"]) == 4  # the demo run under babble too
    assert baseline["snrs"] == ["clean"] and baseline["rates"] == [[16, 5]]  # a baseline at its own pair alone
    with tarfile.open(out / "trial-n40-baseline-16-5.tar") as tar:
        trained = json.load(tar.extractfile("trial-n40/baseline-16-5/train_config.json"))
    assert [tuple(p) for p in trained["rates"]] == [(16, 5)]
    with tarfile.open(out / "trial-n40-demo-run.tar") as tar:
        assert torch.load(tar.extractfile("trial-n40/demo-run/trainer_state.pt"), weights_only=True)["step"] == 2
    assert "training for at most" in first.stderr and "demo-run: finished" in first.stderr

    # Next session: a bare machine, and what came back unpacked into the kit (.device): the demo run is resumed by
    # the same trial, not started again (a finished one, resumed, says it is complete and is evaluated)
    with tarfile.open(out / "trial-n40-demo-run.tar") as tar:
        tar.extractall(kit, filter="data")
    try:
        again = device_demo(kit, tmp_path / "second")
    finally:
        shutil.rmtree(kit / "trial-n40")
    assert again.returncode == 0, again.stderr
    assert "--resume" in again.stderr, again.stderr
    second = tmp_path / "second"
    resumed = (second / "machine" / "work" / "trial-n40" / "demo-run.log").read_text()
    assert "demo-run is complete: 2 steps" in resumed, resumed  # resumed, not trained again: it had nothing left
    assert sorted(p.name for p in (second / "out").iterdir()) == ["trial-n40-demo-run.tar", "trial-n40-evals.tar"]

    # The first machine again, still warm, the trial called without --baselines: only this call's reports come back
    # (the baselines' reports of the first call came back again, as if made now)
    shutil.rmtree(out)
    warm = device_demo(kit, root)
    assert warm.returncode == 0, warm.stderr
    assert sorted(p.name for p in out.iterdir()) == ["trial-n40-demo-run.tar", "trial-n40-evals.tar"]
    assert {name.split("/")[2] for name in members(out / "trial-n40-evals.tar")} == {"demo-run"}


def test_device_demo_never_takes_a_trial_for_the_real_run(kit, trial):
    """What a trial left, as an older device_demo.sh left it under the real run's names (a trial on 30 clips for 2
    steps, then the real call said "corpus: 30 clips" and "demo-run: finished" with no step trained), is not the
    real run's: a run in the kit is refused, a corpus on the machine made again."""
    root, first = trial
    assert first.returncode == 0, first.stderr
    work = root / "machine" / "work"
    trained = work / "trial-n40" / "demo-run"
    shutil.copytree(trained, kit / "demo-run")
    try:
        refused = device_demo(kit, root, trial=False)
        assert refused.returncode == 2, refused.stderr
        assert refused.stderr.splitlines() == [
            f"device_demo.sh: {kit / 'demo-run'} is not this call's run: it was trained on the corpus synth-n40, not "
            f"synth (a trial's, kept by an older device_demo.sh?); move it out of {kit} to start the run afresh"]
        config = json.loads((kit / "demo-run" / "train_config.json").read_text())  # as the older script named it
        config["train"] = str(work / "synth" / "train.jsonl")
        (kit / "demo-run" / "train_config.json").write_text(json.dumps(config))
        refused = device_demo(kit, root, trial=False)
        assert refused.returncode == 2 and "it was trained for 2 steps, not the recipe's" in refused.stderr
    finally:
        shutil.rmtree(kit / "demo-run")

    # The trial's corpus and run where the real run's go: the corpus is made again (4,000 clips: stopped once begun)
    (work / "synth-n40").rename(work / "synth")
    shutil.copytree(trained, work / "demo-run")
    real = device_demo(kit, root, trial=False, run=subprocess.Popen, stdout=subprocess.DEVNULL,
                       start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while real.poll() is None and time.monotonic() < deadline:
            made = work / "synth" / "corpus.json"
            if made.is_file() and json.loads(made.read_text())["utterances"] == 4000:
                break
            time.sleep(0.5)
    finally:
        if real.poll() is None:
            os.killpg(real.pid, signal.SIGKILL)
        stderr = real.communicate()[1]
    assert "corpus: synth holds another corpus (40 clips of seed 0), not 4000 clips of seed 0: made again" in stderr
    assert json.loads((work / "synth" / "corpus.json").read_text())["utterances"] == 4000, stderr
    assert not (work / "demo-run").exists()  # trained on the trial's corpus


def test_device_demo_says_what_is_missing(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "MOME_DEVICE_KIT": str(tmp_path / "no-kit")}
    result = subprocess.run(["bash", str(REPO / "scripts" / "device_demo.sh")], env=env, capture_output=True,
                            text=True)
    assert result.returncode == 4 and "ffmpeg.tar.xz is missing" in result.stderr, result.stderr


def test_device_demo_help_says_how_and_starts_nothing(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    for flag in ("-h", "--help"):
        result = subprocess.run(["bash", str(REPO / "scripts" / "device_demo.sh"), flag], env=env, capture_output=True,
                                text=True, cwd=tmp_path)
        assert result.returncode == 0, result.stderr  # before: "unknown argument --help", exit 2
        assert "bash scripts/device_demo.sh [--baselines]" in result.stdout and "What it does there:" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_device_kit_help_says_how_and_fetches_nothing(tmp_path):
    result = subprocess.run(["bash", str(REPO / "scripts" / "device_kit.sh"), "--help"], capture_output=True,
                            text=True, cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr  # before: --help was taken for KIT_DIR (realpath's own --help)
    assert "bash scripts/device_kit.sh [KIT_DIR]" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_device_demo_refuses_what_it_cannot_run_before_anything(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "MOME_DEVICE_KIT": str(tmp_path / "no-kit")}
    for args, said in [(["--steps", "0"], "--utterances and --steps take a whole number above 0"),
                       (["--utterances", "4k"], "--utterances and --steps take a whole number above 0"),
                       (["--bf16"], "unknown argument --bf16")]:
        result = subprocess.run(["bash", str(REPO / "scripts" / "device_demo.sh"), *args], env=env,
                                capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr == f"device_demo.sh: {said}\n", result.stderr


def test_the_kit_made_here_holds_the_espeak_data_device_kit_sh_packs():
    """The kit fixture stands in for device_kit.sh's (which needs the registries): the same espeak-ng data."""
    packed = re.search(r'"\$\{data#\*/\}"/\{([\w,]+)\}', (REPO / "scripts" / "device_kit.sh").read_text())
    assert packed is not None and tuple(packed.group(1).split(",")) == ESPEAK_DATA
