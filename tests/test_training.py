"""`mome train` end to end through the installed executable (and torchrun), on a tiny corpus made here with ffmpeg.

Every training process runs with one thread (OMP_NUM_THREADS=1): on two shared cores that is much faster, and it
keeps runs of the same config bit-identical.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mome_cli.checkpoint import BACKBONES_NAME, load_checkpoint
from mome_cli.data import load_manifest
from mome_cli.preprocess import Preprocessor, PreprocessOptions
from mome_cli.noise import add_babble
from mome_cli.train_config import ConfigError, TrainConfig, resolve_config
from mome_cli.outputs import counted
from mome_cli.train_data import load_clip, random_crop, time_mask
from mome_cli.training import tensor_digest

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

BIN = Path(sys.executable).parent
RECIPE = Path(__file__).parents[1] / "recipes" / "tiny.toml"
# Random tiny encoders map similar inputs to near-identical features: lengths, pictures and sounds all differ.
CLIPS = {  # name: (video source, audio source, seconds, transcript)
    "hello.mp4": ("testsrc2", "sine=frequency=300", 1.2, "hello world"),
    "morning.mp4": ("rgbtestsrc", "anoisesrc=color=pink:amplitude=0.3:seed=7", 1.8, "good morning"),
    "thanks.mp4": ("smptebars", "sine=frequency=900", 1.5, "thank you"),
}
STEPS, SAVE_EVERY = 240, 60


def make_clip(path: Path, video: str, audio: str, seconds: float) -> None:
    """A 96x96 25 fps mouth-crop style video (hence --roi) with a sound."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"{video}=size=96x96:rate=25:duration={seconds}",
                    "-f", "lavfi", "-i", f"{audio}:duration={seconds}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)


def environment(root: Path, **more) -> dict:
    return {**os.environ, "MOME_HOME": str(root / "home"), "OMP_NUM_THREADS": "1", **more}


def explain(result) -> str:
    return f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"


def mome(*args, root: Path, env=None):
    result = subprocess.run([str(BIN / "mome"), *map(str, args)], cwd=root, capture_output=True, text=True,
                            env=env or environment(root))
    result.explain = explain(result)
    return result


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    (root / "media").mkdir()
    rows = []
    for name, (video, audio, seconds, text) in CLIPS.items():
        make_clip(root / "media" / name, video, audio, seconds)
        rows.append({"id": Path(name).stem, "video": f"media/{name}", "text": text})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def train_args(root: Path, out: str) -> list:
    """The tiny recipe, small overrides: 2 batches an epoch (batch_frames 100), saves every 40 steps."""
    return ["train", "--config", RECIPE, "--train", root / "train.jsonl", "--valid", root / "train.jsonl", "--roi",
            "-o", root / out, "--steps", STEPS, "--batch-frames", 100, "--save-every", SAVE_EVERY,
            "--eval-every", 120, "--average-last", 2]


@pytest.fixture(scope="module")
def trained(corpus):
    result = mome(*train_args(corpus, "full"), root=corpus)
    assert result.returncode == 0, result.explain
    return corpus / "full"


def records(out: Path, kind: str) -> list[dict]:
    lines = (out / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_the_output_is_a_checkpoint_that_transcribes_the_training_clips(trained, corpus):
    from mome_cli.recognizer import RecognizeOptions, load_recognizer

    model = load_checkpoint(trained)
    assert model.config.rates == [(4, 2), (4, 5), (16, 2), (16, 5)] and model.config.mome.num_routed == 4
    recognizer = load_recognizer(str(trained), device="cpu", home=corpus / "home")
    clips = [Preprocessor(PreprocessOptions(roi=True))(corpus / "media" / name) for name in CLIPS]
    expected = [text for *_, text in CLIPS.values()]
    for rate in model.config.rates:
        got = [t.text for t in recognizer.transcribe_many(clips, RecognizeOptions(rate=rate))]
        assert got == expected, rate
    result = mome("transcribe", corpus / "media", "--model", trained, "--roi", "--stdout", "-o", corpus / "txt",
                  root=corpus)
    assert result.returncode == 0, result.explain
    assert {Path(line.split("\t")[0]).name: line.split("\t")[1] for line in result.stdout.splitlines()} == {
        name: text for name, (*_, text) in CLIPS.items()}, result.explain


def test_log_and_resolved_config(trained):
    train = records(trained, "train")
    assert [r["step"] for r in train] == list(range(10, STEPS + 1, 10))
    for r in train:
        assert set(r) >= {"step", "epoch", "loss", "lm_loss", "lb_loss", "rate_losses", "lr", "grad_norm", "seconds"}
        assert set(r["rate_losses"]) == {"4,2", "4,5", "16,2", "16,5"}
        assert r["loss"] == pytest.approx(r["lm_loss"] + 0.01 * r["lb_loss"], rel=1e-4)
    assert train[-1]["epoch"] == STEPS // 2  # two batches an epoch
    assert train[-1]["loss"] < train[0]["loss"] / 10
    lrs = [r["lr"] for r in train]  # a warmup of 12 steps (5 %) to 1e-2, then a cosine to 0
    assert lrs[0] == pytest.approx(1e-2 * 10 / 13) and lrs[1:] == sorted(lrs[1:], reverse=True)
    assert 9.9e-3 < lrs[1] < 1e-2 and 0 < lrs[-1] < 1e-6
    evals = records(trained, "eval")
    assert [r["step"] for r in evals] == [120, 240, 240]  # the last: the model saved, the mean of the last 2 saves
    assert [r.get("averaged_steps") for r in evals] == [None, None, [180, 240]]
    assert evals[-2]["wer"] == evals[-1]["wer"] == {"4,2": 0.0, "4,5": 0.0, "16,2": 0.0, "16,5": 0.0}
    assert [r["step"] for r in records(trained, "save")] == [60, 120, 180, 240]
    config = json.loads((trained / "train_config.json").read_text())
    assert config["steps"] == STEPS and config["epochs"] is None and config["batch_frames"] == 100
    assert config["lr"] == 1e-2 and config["model"] == "tiny" and config["roi"] is True  # recipe, then flags
    assert config["rates"] == [[4, 2], [4, 5], [16, 2], [16, 5]] and config["average_last"] == 2
    TrainConfig(**config)  # loads back as it is


def test_average_last_is_the_mean_of_the_last_snapshots(trained):
    snapshots = sorted(p.name for p in (trained / "snapshots").iterdir())
    assert snapshots == ["step-000120", "step-000180", "step-000240"]  # keep_last 3
    a = load_file(trained / "snapshots" / "step-000180" / "model.safetensors")
    b = load_file(trained / "snapshots" / "step-000240" / "model.safetensors")
    final = load_file(trained / "model.safetensors")
    assert set(final) == set(a)
    for name in final:
        torch.testing.assert_close(final[name], (a[name] + b[name]) / 2, rtol=0, atol=1e-7)
    assert any(not torch.equal(a[n], b[n]) for n in a)
    assert json.loads((trained / "config.json").read_text())["training"]["averaged_steps"] == [180, 240]


def test_resume_after_sigkill_is_bit_exact(trained, corpus):
    out = corpus / "killed"
    process = subprocess.Popen([str(BIN / "mome"), *map(str, train_args(corpus, "killed"))], cwd=corpus,
                               env=environment(corpus), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        log = out / "log.jsonl"
        if log.is_file() and '"kind": "save"' in log.read_text():  # written once trainer_state.pt is in place
            break
        time.sleep(0.01)
    assert process.poll() is None, f"the run ended before it could be killed: {process.stderr.read().decode()}"
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    saved = torch.load(out / "trainer_state.pt", weights_only=True)
    assert SAVE_EVERY <= saved["step"] < STEPS

    again = mome(*train_args(corpus, "killed"), root=corpus)
    assert again.returncode == 2 and "--resume" in again.stderr, again.explain  # a run is there: not overwritten
    resumed = mome(*train_args(corpus, "killed"), "--resume", root=corpus)
    assert resumed.returncode == 0, resumed.explain
    assert f"resuming at step {saved['step']}" in resumed.stderr, resumed.explain

    reference = torch.load(trained / "trainer_state.pt", weights_only=True)
    final = torch.load(out / "trainer_state.pt", weights_only=True)
    assert final["step"] == reference["step"] == STEPS
    assert final["model"].keys() == reference["model"].keys()
    for name in reference["model"]:
        assert torch.equal(final["model"][name], reference["model"][name]), name
    averaged, expected = load_file(out / "model.safetensors"), load_file(trained / "model.safetensors")
    assert all(torch.equal(averaged[n], expected[n]) for n in expected)
    assert [r["step"] for r in records(out, "train")] == list(range(10, STEPS + 1, 10))  # each step logged once
    assert [r["loss"] for r in records(out, "train")] == [r["loss"] for r in records(trained, "train")]


def test_a_stop_signal_saves_after_its_step_and_the_resumed_run_ends_as_an_unbroken_one(trained, corpus):
    out = corpus / "stopped"
    process = subprocess.Popen([str(BIN / "mome"), *map(str, train_args(corpus, "stopped"))], cwd=corpus,
                               env=environment(corpus), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        log = out / "log.jsonl"
        if log.is_file() and '"kind": "train"' in log.read_text():  # step 10 is done: the loop is running
            break
        time.sleep(0.01)
    assert process.poll() is None, f"the run ended before it could be stopped: {process.stderr.read()}"
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr  # 128 + SIGINT, as a shell reports it
    saved = torch.load(out / "trainer_state.pt", weights_only=True)
    assert 10 <= saved["step"] < STEPS
    assert f"stopped by SIGINT after step {saved['step']} of {STEPS}, saved" in stderr and "--resume" in stderr, stderr
    snapshots = sorted(int(p.name.split("-")[1]) for p in (out / "snapshots").glob("step-*"))
    assert all(s % SAVE_EVERY == 0 and s <= saved["step"] for s in snapshots)  # the stop adds no snapshot

    resumed = mome(*train_args(corpus, "stopped"), "--resume", root=corpus)
    assert resumed.returncode == 0 and f"resuming at step {saved['step']}" in resumed.stderr, resumed.explain
    reference = torch.load(trained / "trainer_state.pt", weights_only=True)
    final = torch.load(out / "trainer_state.pt", weights_only=True)
    assert all(torch.equal(final["model"][n], reference["model"][n]) for n in reference["model"])
    averaged, expected = load_file(out / "model.safetensors"), load_file(trained / "model.safetensors")
    assert all(torch.equal(averaged[n], expected[n]) for n in expected)  # --average-last 2: the same two saves
    assert [r["loss"] for r in records(out, "train")] == [r["loss"] for r in records(trained, "train")]


def at_its_last_save(trained: Path, out: Path, corpus: Path, eval_every: int, monkeypatch):
    """A copy of the trained run as it was when its last step was saved (before the averaging), and the config that
    resumes it in this process."""
    from mome_cli.train_config import resolve_config

    shutil.copytree(trained, out)
    shutil.copy(out / "snapshots" / f"step-{STEPS:06d}" / "model.safetensors", out / "model.safetensors")
    lines = (out / "log.jsonl").read_text().splitlines()  # no "done" yet: the end of the run writes it last
    (out / "log.jsonl").write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["kind"] != "done"))
    monkeypatch.setenv("MOME_HOME", str(corpus / "home"))
    monkeypatch.chdir(corpus)
    return resolve_config(RECIPE, {"train": str(corpus / "train.jsonl"), "valid": str(corpus / "train.jsonl"),
                                   "roi": True, "output": str(out), "steps": STEPS, "batch_frames": 100,
                                   "save_every": SAVE_EVERY, "eval_every": eval_every, "average_last": 2}, resume=True)


def test_a_stop_signal_after_the_last_step_stops_what_is_left_and_resume_does_it(trained, corpus, tmp_path,
                                                                                  monkeypatch):
    """The final validation, the averaging and its validation can take minutes: a Ctrl-C or a scheduler's SIGTERM
    there was said to stop the run and then ignored (exit 0 after all of them)."""
    from mome_cli import training

    out = tmp_path / "ending"
    config = at_its_last_save(trained, out, corpus, 120, monkeypatch)
    last = (out / "model.safetensors").read_bytes()
    finish = training.Trainer._finish

    def interrupted(self):  # Ctrl-C as the run's end begins (its last validation was at its last step)
        os.kill(os.getpid(), signal.SIGINT)
        return finish(self)

    monkeypatch.setattr(training.Trainer, "_finish", interrupted)
    with pytest.raises(training.TrainingStopped, match=f"stopped by SIGINT after the last step \\({STEPS}\\), saved; "
                                                       "the averaging and its validation left"):
        training.run(config, resume=True, quiet=True)
    assert (out / "model.safetensors").read_bytes() == last  # not averaged
    assert records(trained, "average") and not records(out, "average")  # the copy's forgotten, none made
    monkeypatch.setattr(training.Trainer, "_finish", finish)
    training.run(config, resume=True, quiet=True)
    averaged, expected = load_file(out / "model.safetensors"), load_file(trained / "model.safetensors")
    assert all(torch.equal(averaged[n], expected[n]) for n in expected)


def test_a_run_stopped_after_its_final_validation_does_not_validate_again_on_resume(trained, corpus, tmp_path,
                                                                                   monkeypatch):
    """The final validation (eval_every not at the last step) is done once: a stop in the averaging after it said it
    was left, and the resumed run did it again, writing a second record of it into log.jsonl."""
    from mome_cli import training

    out = tmp_path / "validated"
    config = at_its_last_save(trained, out, corpus, 100, monkeypatch)
    lines = (out / "log.jsonl").read_text().splitlines()
    (out / "log.jsonl").write_text("".join(ln + "\n" for ln in lines if json.loads(ln)["step"] < STEPS or
                                           json.loads(ln)["kind"] in ("train", "save")))  # as at its last save
    average = training.Trainer.average

    def interrupted(self, k):  # Ctrl-C once the averaging has written its record
        steps = average(self, k)
        os.kill(os.getpid(), signal.SIGINT)
        return steps

    monkeypatch.setattr(training.Trainer, "average", interrupted)
    with pytest.raises(training.TrainingStopped, match="saved; the averaging and its validation left"):
        training.run(config, resume=True, quiet=True)
    final = [r for r in records(out, "eval") if r["step"] == STEPS and "averaged_steps" not in r]
    assert len(final) == 1 and len(records(out, "average")) == 1
    monkeypatch.setattr(training.Trainer, "average", average)
    training.run(config, resume=True, quiet=True)
    assert [r for r in records(out, "eval") if r["step"] == STEPS and "averaged_steps" not in r] == final
    assert len(records(out, "average")) == 1  # the averaging done again, its first record forgotten
    assert len([r for r in records(out, "eval") if "averaged_steps" in r]) == 1


def test_an_utterance_longer_than_the_audio_window_is_skipped_with_a_warning(corpus, tmp_path):
    make_clip(tmp_path / "long.mp4", "testsrc2", "sine=frequency=500", 31)  # the tiny Whisper's window is 30 s
    rows = (corpus / "train.jsonl").read_text().replace('"media/', f'"{corpus}/media/')
    manifest = tmp_path / "with-long.jsonl"
    manifest.write_text(rows + json.dumps({"id": "long", "video": "long.mp4", "text": "a long one"}) + "\n")
    result = mome("train", "--config", RECIPE, "--train", manifest, "--valid", manifest, "--roi", "-o", tmp_path / "out",
                  "--steps", 2, "--eval-every", 2, root=corpus)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.explain
    for what in ("training", "validation"):
        assert (f"warning: {what} utterance long skipped: 31.0 s of audio, longer than the audio encoder's 30 s "
                f"window") in result.stderr, result.explain
    assert "warning: 1 of 4 training utterances skipped" in result.stderr, result.explain


@pytest.mark.parametrize("cache", ["memory", "disk"])
def test_a_missing_clip_is_skipped_with_a_warning_whichever_the_feature_cache(corpus, tmp_path, cache):
    rows = (corpus / "train.jsonl").read_text().replace('"media/', f'"{corpus}/media/')
    manifest = tmp_path / "with-gone.jsonl"
    manifest.write_text(rows + json.dumps({"id": "gone", "video": "gone.mp4", "text": "not here"}) + "\n")
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.read_text().replace('feature_cache = "memory"', f'feature_cache = "{cache}"'))
    result = mome("train", "--config", recipe, "--train", manifest, "--roi", "-o", tmp_path / "out", "--steps", 2,
                  root=corpus)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.explain
    assert f"warning: training utterance gone skipped: {tmp_path / 'gone.mp4'}: no such file" in result.stderr, \
        result.explain
    assert "warning: 1 of 4 training utterances skipped" in result.stderr, result.explain
    assert "; 3 utterances, " in result.stderr, result.explain  # those it trains on


def test_one_utterance_or_batch_is_said_in_the_singular(corpus, tmp_path):
    """"preparing 1 training utterances", "none of its 1 utterances", "1 batches an epoch" were said."""
    one = tmp_path / "one.jsonl"
    one.write_text(json.dumps({"id": "gone", "video": str(tmp_path / "gone.mp4"), "text": "a"}) + "\n")
    base = ["train", "--config", RECIPE, "--roi", "--steps", 1, "--device", "cpu"]
    result = mome(*base, "--train", one, "-o", tmp_path / "out", root=corpus)
    assert result.returncode == 1, result.explain
    assert "preparing 1 training utterance (" in result.stderr, result.explain
    assert f"{one}: its one utterance could not be prepared" in result.stderr, result.explain
    assert [counted(1, "batch", "batches"), counted(2, "batch", "batches"), counted(0, "step")] == [
        "1 batch", "2 batches", "0 steps"]
    alone = ["train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--roi", "-o", tmp_path / "alone",
             "--steps", 2, "--batch-frames", 50, "--device", "cpu"]
    assert mome(*alone, root=corpus).returncode == 0
    resumed = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "mome_cli",
                              *map(str, alone), "--steps", "3", "--resume"],
                             cwd=corpus, env=environment(corpus), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and "the run had 1 process, now 2" in resumed.stderr, explain(resumed)


def test_a_clip_whose_transcript_cannot_be_read_is_skipped_with_a_warning_even_with_its_features_cached(corpus,
                                                                                                       tmp_path):
    """A folder dataset (as an auto_avsr CSV row): one clip's unreadable .txt stopped the whole run before; it is that
    clip's warning, as a missing clip is, also when the disk cache holds its features from a run when it was read."""
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, (*_, text) in CLIPS.items():
        shutil.copy(corpus / "media" / name, folder / name)
        (folder / name).with_suffix(".txt").write_text(text)
    recipe = tmp_path / "recipe.toml"
    recipe.write_text(RECIPE.read_text().replace('feature_cache = "memory"', 'feature_cache = "disk"'))
    env = environment(tmp_path)
    first = mome("train", "--config", recipe, "--train", folder, "--roi", "-o", tmp_path / "first", "--steps", 1,
                 root=corpus, env=env)
    assert first.returncode == 0 and "; 3 utterances, " in first.stderr, first.explain
    (folder / "thanks.txt").write_bytes(b"thank you \xff")
    result = mome("train", "--config", recipe, "--train", folder, "--valid", folder, "--roi", "-o", tmp_path / "out",
                  "--steps", 2, "--eval-every", 2, root=corpus, env=env)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.explain
    for what in ("training", "validation"):
        assert (f"warning: {what} utterance thanks skipped: {folder / 'thanks.txt'}:1: not UTF-8 text (byte 11 of "
                "the line is 0xff); save it as UTF-8") in result.stderr.splitlines(), result.explain
    assert "warning: 1 of 3 training utterances skipped" in result.stderr, result.explain
    assert "; 2 utterances, " in result.stderr, result.explain  # those it trains on


def test_a_transcript_that_utf8_cannot_write_is_refused_naming_its_line(corpus, tmp_path):
    """A lone surrogate (a JSON \\ud800 escape) reached the tokenizer: a TypeError traceback at the step whose batch
    held it."""
    rows = (corpus / "train.jsonl").read_text().replace('"media/', f'"{corpus}/media/')
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(rows + json.dumps({"id": "bad", "video": "media/hello.mp4", "text": "bad \ud800"}) + "\n")
    result = mome("train", "--config", RECIPE, "--train", manifest, "--roi", "-o", tmp_path / "out", "--steps", 2,
                  root=corpus)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.explain
    assert result.stderr.splitlines()[-1] == (f'mome train: {manifest}:4: "text" holds \\ud800, a lone surrogate (half '
                                              'of a UTF-16 pair), which is no character'), result.explain


def test_eval_every_without_a_validation_manifest_is_a_warning(corpus, tmp_path):
    result = mome("train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--roi", "-o", tmp_path / "out",
                  "--steps", 2, "--eval-every", 1, root=corpus)
    assert result.returncode == 0, result.explain
    assert "warning: eval_every 1 but no validation manifest: give --valid MANIFEST" in result.stderr, result.explain


def test_a_validation_set_none_of_which_loads_is_a_warning_that_the_run_is_not_validated(corpus, tmp_path):
    manifest = tmp_path / "gone.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"gone{i}", "video": f"gone{i}.mp4", "text": "not here"}) + "\n"
                                for i in range(2)))
    result = mome("train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--valid", manifest, "--roi", "-o",
                  tmp_path / "out", "--steps", 2, "--eval-every", 1, root=corpus)
    assert result.returncode == 0, result.explain
    assert "warning: validation utterance gone1 skipped" in result.stderr, result.explain
    assert (f"warning: none of the 2 validation utterances in {manifest} could be prepared: the run is not validated "
            "(no WER)\n") in result.stderr, result.explain  # it went on without validation, saying nothing
    assert records(tmp_path / "out", "eval") == [] and len(records(tmp_path / "out", "save")) == 1


def strict_records(out: Path) -> list[dict]:
    """log.jsonl read as strict JSON: NaN, Infinity and -Infinity, which json.loads takes, are refused."""

    def refuse(constant):
        raise ValueError(f"{constant} in log.jsonl: not JSON")

    return [json.loads(line, parse_constant=refuse) for line in (out / "log.jsonl").read_text().splitlines()]


def test_a_wer_with_no_reference_words_is_null_in_the_log(corpus, tmp_path):
    """Validation texts all empty: an infinite WER (insertions, no words), written as Infinity before."""
    manifest = tmp_path / "silent.jsonl"
    rows = [json.loads(line) for line in (corpus / "train.jsonl").read_text().splitlines()]
    manifest.write_text("".join(json.dumps({**r, "video": str(corpus / r["video"]), "text": ""}) + "\n" for r in rows))
    result = mome("train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--valid", manifest, "--roi", "-o",
                  tmp_path / "out", "--steps", 2, "--eval-every", 2, root=corpus)
    assert result.returncode == 0, result.explain
    (evaluation,) = [r for r in strict_records(tmp_path / "out") if r["kind"] == "eval"]
    assert evaluation["wer"] == {"4,2": None, "4,5": None, "16,2": None, "16,5": None}, evaluation
    # The console said "4,2 inf%": a WER that is no number is "-", as in evaluate's table.
    assert "step 2  valid WER 4,2 -  4,5 -  16,2 -  16,5 -" in result.stderr.splitlines(), result.explain
    assert "inf" not in result.stderr, result.explain


def test_the_log_writes_nan_and_infinity_as_null_wherever_they_are(tmp_path):
    """A loss that is not finite never reaches the log (the step stops on its gradients first), but if one did, the
    line would still be JSON: every record goes through the same writer."""
    from mome_cli.training import Trainer

    trainer = Trainer(TrainConfig(train="t", output=str(tmp_path), steps=1), quiet=True, home=tmp_path)
    nan, inf = float("nan"), float("inf")
    trainer.record("train", loss=nan, rate_losses={"4,2": inf, "4,5": 1.5}, grad_norm=np.float64(-inf), steps=[1, nan])
    assert strict_records(tmp_path) == [{"kind": "train", "step": 0, "loss": None, "grad_norm": None,
                                         "rate_losses": {"4,2": None, "4,5": 1.5}, "steps": [1, None]}]


def test_resuming_a_complete_run_does_nothing_and_says_so_at_once(trained, corpus):
    """It prepared every training utterance's features again and redid the averaging and its validation before
    saying "done": hours on LRS3, for nothing."""
    lines = (trained / "log.jsonl").read_text().splitlines()
    assert json.loads(lines[-1]) == {"kind": "done", "step": STEPS}  # what the end of a run writes last
    shutil.copytree(trained, corpus / "again")
    before = {p.relative_to(corpus / "again"): p.read_bytes() for p in (corpus / "again").rglob("*") if p.is_file()}
    again = mome(*train_args(corpus, "again"), "--resume", "-v", root=corpus)
    assert again.returncode == 0, again.explain
    assert again.stderr == (f"{corpus / 'again'} is complete: {STEPS} steps, saved, its end done; nothing to do (a "
                            "larger --steps or --epochs trains on)\n"), again.explain  # no model built, no data read
    after = {p.relative_to(corpus / "again"): p.read_bytes() for p in (corpus / "again").rglob("*") if p.is_file()}
    assert after == before
    (corpus / "again" / "log.jsonl").write_text("\n".join(lines[:-1]) + "\n")  # a run of a mome before "done"
    redone = mome(*train_args(corpus, "again"), "--resume", root=corpus)
    assert redone.returncode == 0 and "is complete" not in redone.stderr, redone.explain
    assert json.loads((corpus / "again" / "log.jsonl").read_text().splitlines()[-1]) == {"kind": "done", "step": STEPS}


def test_resuming_a_complete_run_with_another_average_last_averages_again(trained, corpus):
    """--resume --average-last K of a finished run redid the averaging with K saves; the "done" record made it say
    "nothing to do" and keep the old mean, and its train_config.json said the old K."""
    shutil.copytree(trained, corpus / "reaveraged")
    args = [*train_args(corpus, "reaveraged")]
    args[args.index("--average-last") + 1] = 3
    result = mome(*args, "--resume", root=corpus)
    assert result.returncode == 0 and "is complete" not in result.stderr, result.explain
    assert f"mean of the saves at steps {STEPS - 2 * SAVE_EVERY}, {STEPS - SAVE_EVERY}, {STEPS}" in result.stderr
    assert json.loads((corpus / "reaveraged" / "train_config.json").read_text())["average_last"] == 3
    assert json.loads((corpus / "reaveraged" / "log.jsonl").read_text().splitlines()[-1])["kind"] == "done"
    again = mome(*args, "--resume", root=corpus)  # now as asked: nothing left
    assert again.returncode == 0 and "is complete" in again.stderr, again.explain


def test_a_run_resumed_longer_keeps_its_warmup_and_stretches_its_cosine(trained, corpus):
    from mome_cli.training import Trainer

    shutil.copytree(trained, corpus / "longer")
    config = json.loads((trained / "train_config.json").read_text())
    shorter = mome(*train_args(corpus, "longer"), "--steps", STEPS - 10, "--resume", root=corpus)
    assert shorter.returncode == 2 and (f"is at step {STEPS}: a resumed run cannot be shorter than that "
                                        f"({STEPS - 10} steps asked)") in shorter.stderr, shorter.explain
    assert "utterances" not in shorter.stderr, shorter.explain  # said before the data is prepared
    left = [corpus / "longer" / ".trainer_state.pt.k1ll3d.tmp", corpus / "longer" / "snapshots" /
            f"step-{STEPS:06d}" / ".model.safetensors.k1ll3d.tmp"]  # as a save killed mid-write leaves them
    for tmp in left:
        tmp.write_bytes(b"half")
    users = corpus / "longer" / ".notes.txt.tmp"  # not a save's: kept
    users.write_text("mine")
    log = corpus / "longer" / "log.jsonl"
    log.write_text(log.read_text() + '{"kind": "train", "st')  # a line torn by a full disk: dropped on resuming
    resumed = mome(*train_args(corpus, "longer"), "--steps", STEPS + 20, "--resume", root=corpus)
    assert resumed.returncode == 0, resumed.explain
    assert f"the run now lasts {STEPS + 20} steps, not {STEPS}" in resumed.stderr, resumed.explain
    assert f"learning rate at step {STEPS}: " in resumed.stderr, resumed.explain
    assert not any(tmp.exists() for tmp in left)
    assert users.read_text() == "mine"
    warmup = round(config["warmup_fraction"] * STEPS)  # as it was: the run is past it
    factor = Trainer._lr_factor(warmup, STEPS + 20, config["min_lr_ratio"])
    later = [r for r in records(corpus / "longer", "train") if r["step"] > STEPS]
    assert [r["step"] for r in later] == [STEPS + 10, STEPS + 20]
    for r in later:  # the rate step s used: lr x factor(s - 1)
        assert r["lr"] == pytest.approx(config["lr"] * factor(r["step"] - 1), rel=1e-9), r


def test_torchrun_two_processes_hold_the_same_parameters(corpus):
    out, digests = corpus / "ddp", corpus / "digests"
    env = environment(corpus, MOME_TRAIN_DIGEST_DIR=str(digests))
    result = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "mome_cli", "train",
         "--config", str(RECIPE), "--train", str(corpus / "train.jsonl"), "--roi", "-o", str(out), "--steps", "4",
         "--batch-frames", "50", "--save-every", "2", "--device", "cpu"],
        cwd=corpus, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, explain(result)
    rank0, rank1 = ((digests / f"rank-{r}.sha256").read_text().strip() for r in (0, 1))
    assert rank0 == rank1
    assert rank0 == tensor_digest(load_file(out / "model.safetensors"))  # what rank 0 saved
    assert [r["step"] for r in records(out, "train")] == [4]  # only rank 0 writes: one line per logged step
    assert [r["step"] for r in records(out, "save")] == [2, 4]
    assert "training" in result.stderr and result.stderr.count("done:") == 1, explain(result)  # rank 0 speaks
    load_checkpoint(out)


@pytest.mark.parametrize("mode", ["av,a,v", "a,v", "a"])
def test_torchrun_never_looks_for_unused_tensors_and_leaves_an_unread_modalitys_projectors_alone(corpus, mode):
    """DDP's search for unused tensors was a walk of the graph at each step (and a warning where it found none: av,a,v
    and a,v use every projector between them); in mode a, where the video projectors are never read, a worker
    sometimes aborted as it exited ("terminate called without an active exception"), after the run was done. Those
    projectors are left out of DDP instead: the two processes still hold the same tensors."""
    out, digests = corpus / f"ddp-{mode.replace(',', '')}", corpus / f"digests-{mode.replace(',', '')}"
    result = subprocess.run(
        [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "mome_cli", "train",
         "--config", str(RECIPE), "--train", str(corpus / "train.jsonl"), "--roi", "-o", str(out), "--steps", "2",
         "--batch-frames", "50", "--mode", mode, "--device", "cpu"],
        cwd=corpus, env=environment(corpus, MOME_TRAIN_DIGEST_DIR=str(digests)), capture_output=True, text=True,
        timeout=300)
    assert result.returncode == 0, explain(result)
    assert "unused parameters" not in result.stderr, explain(result)
    rank0, rank1 = ((digests / f"rank-{r}.sha256").read_text().strip() for r in (0, 1))
    assert rank0 == rank1 == tensor_digest(load_file(out / "model.safetensors"))


def _worker_of_rank(launcher: subprocess.Popen, rank: int) -> int | None:
    """PID of the torchrun worker whose RANK is rank, among the launcher's children (None until it runs)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])  # field 4, after the name
            environ = (entry / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent == launcher.pid and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


def test_a_run_stopped_under_torchrun_is_told_to_resume_under_torchrun(tmp_path):
    """A plain `mome train --resume` of a 2-process run goes on in one process (another data order, half the global
    batch): the stop message names torchrun and the number of processes; a one-process run's names plain mome."""
    from mome_cli.training import TrainingStopped

    alone = str(TrainingStopped(signal.SIGINT, 5, 10, tmp_path))
    assert f"continue with `mome train -o {tmp_path} --resume`" in alone and "torchrun" not in alone
    ddp = str(TrainingStopped(signal.SIGTERM, 5, 10, tmp_path, world=2))
    assert f"-m mome_cli train -o {tmp_path} --resume` with the 2 processes the run had" in ddp, ddp
    assert "torchrun" in str(TrainingStopped(signal.SIGINT, 10, 10, tmp_path, ["the averaging"], world=4))


def test_a_signal_that_comes_during_the_stop_all_reduce_is_kept_for_the_next_step(monkeypatch):
    """A worker waits in the step's all-reduce much of the time: a SIGTERM handled there, after the flag was made,
    must stop the run one step later, not be overwritten by that all-reduce's 0 (1 run in ~6 went on to the end)."""
    from mome_cli.training import _StopRequest

    stop = _StopRequest()

    def signal_during(flag, op=None):  # the handler runs while this process waits for the other
        stop.signal = signal.SIGTERM

    monkeypatch.setattr(torch.distributed, "all_reduce", signal_during)
    assert not stop.agreed(2, torch.device("cpu"))  # every process saw 0 in this step's flags: go on, together
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda flag, op=None: None)
    assert stop.agreed(2, torch.device("cpu")) and stop.signal == signal.SIGTERM  # the next step stops


def test_a_signal_to_one_torchrun_process_stops_both_after_the_same_step(corpus):
    # long enough for the signal to land mid-run on a fast machine (120 steps could end in 3 s, before it came)
    steps = 600
    out, digests = corpus / "ddp-stopped", corpus / "ddp-stopped-digests"
    env = environment(corpus, MOME_TRAIN_DIGEST_DIR=str(digests))
    command = [str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2", "-m", "mome_cli", "train", "--config",
               str(RECIPE), "--train", str(corpus / "train.jsonl"), "--roi", "-o", str(out), "--steps", str(steps),
               "--batch-frames", "50", "--save-every", "1000", "--device", "cpu"]
    launcher = subprocess.Popen(command, cwd=corpus, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)
    deadline, worker = time.monotonic() + 180, None
    while time.monotonic() < deadline and launcher.poll() is None:
        log = out / "log.jsonl"
        if log.is_file() and '"kind": "train"' in log.read_text():  # both processes are in the loop
            worker = _worker_of_rank(launcher, 1)
            break
        time.sleep(0.02)
    assert worker is not None, f"no rank-1 worker found running: {launcher.stderr.read() if launcher.poll() else ''}"
    os.kill(worker, signal.SIGTERM)  # rank 1 alone: rank 0 learns of it through the step's all-reduce
    stderr = launcher.communicate(timeout=180)[1]  # no process waits forever for the other
    saved = torch.load(out / "trainer_state.pt", weights_only=True)
    assert 10 <= saved["step"] < steps, stderr
    assert f"stopped by SIGTERM after step {saved['step']} of {steps}, saved" in stderr, stderr  # said by rank 0
    resumed = subprocess.run([*command, "--resume"], cwd=corpus, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0 and f"resuming at step {saved['step']}" in resumed.stderr, explain(resumed)
    rank0, rank1 = ((digests / f"rank-{r}.sha256").read_text().strip() for r in (0, 1))
    assert rank0 == rank1 == tensor_digest(load_file(out / "model.safetensors"))


@pytest.mark.parametrize("args, code, message", [
    (["--rates", "4,x"], 2, "4,x"),
    (["--rates", "4;16,5"], 2, "rates must be distinct audio,video pairs of rates >= 1, got '4;16,5'"),
    (["--experts", "2", "--top-k", "3"], 2, "top_k"),
    (["--train", "missing.jsonl"], 4, "missing.jsonl: no such manifest"),
    (["--model", "mome-1b"], 4, "mome download mome-1b"),
    (["--lr", "inf"], 2, "lr must be > 0 and finite, got inf"),
    (["--lr", "-1"], 2, "lr must be > 0"),
])
def test_bad_values_and_missing_inputs_exit_with_the_contract_codes(corpus, tmp_path, args, code, message):
    base = ["train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--roi", "-o", tmp_path / "out"]
    result = mome(*base, *args, root=corpus)
    assert result.returncode == code and message in result.stderr, result.explain


def test_a_save_that_cannot_be_written_is_one_line_naming_the_folder(corpus, tmp_path):
    """A disk that fills up: files over 300 kB cannot be written (as a full disk, torch.save's writer fails with a
    RuntimeError). The model (150 kB) is saved, the trainer state (480 kB) is not: a traceback before."""
    import resource

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of the process being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, 300_000))

    out = tmp_path / "run"
    args = ["train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--roi", "-o", out, "--steps", 2,
            "--save-every", 1, "--batch-frames", 100]
    result = subprocess.run([str(BIN / "mome"), *map(str, args)], cwd=corpus, env=environment(corpus), text=True,
                            capture_output=True, preexec_fn=small_files, timeout=300)
    last = result.stderr.splitlines()[-1]
    assert result.returncode == 1 and "Traceback" not in result.stderr, explain(result)
    assert last.startswith(f"mome train: cannot save step 1 in {out} (") and last.endswith("nothing was saved"), last
    assert not (out / "trainer_state.pt").exists() and not list(out.rglob("*.tmp")), sorted(out.rglob("*"))


def test_a_run_records_the_llm_commit_it_trained_on_and_resumes_on_it(corpus, tmp_path):
    """Backbones that name a hub LLM: the checkpoints record the commit its cached main led to (they said "main",
    which loads whatever main is later), and a resumed run keeps to that commit after main has moved."""
    from mome_cli.llm import build_tiny_llm
    from test_recognizer import COMMIT, LLAMA, snapshot

    home = tmp_path / "home"
    llm, tokenizer = build_tiny_llm("tiny")
    for folder in (snapshot(home, LLAMA), snapshot(home, LLAMA, commit="f" * 40)):
        llm.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    repo = home / "hub" / f"models--{LLAMA.replace('/', '--')}"
    (repo / "refs" / "main").write_text(COMMIT)
    backbones = tmp_path / "backbones"
    backbones.mkdir()
    (backbones / BACKBONES_NAME).write_text(json.dumps({"llm": LLAMA, "audio_encoder": "tiny", "audio_dim": 32,
                                                       "video_encoder": "tiny", "video_dim": 32}))
    out, env = tmp_path / "run", environment(corpus, MOME_HOME=str(home), HF_HUB_OFFLINE="1")
    args = ["train", "--config", RECIPE, "--model", backbones, "--train", corpus / "train.jsonl", "--roi", "-o", out,
            "--batch-frames", 100]
    first = mome(*args, "--steps", 1, root=corpus, env=env)
    assert first.returncode == 0, first.explain
    assert json.loads((out / "config.json").read_text())["model"]["llm_revision"] == COMMIT
    (repo / "refs" / "main").write_text("f" * 40)  # main has moved on
    resumed = mome(*args, "--steps", 2, "--resume", root=corpus, env=env)
    assert resumed.returncode == 0, resumed.explain
    saved = json.loads((out / "config.json").read_text())
    assert saved["training"]["step"] == 2 and saved["model"]["llm_revision"] == COMMIT
    assert not (out / ".train.lock").exists()  # the run's lock, taken back when it ends
    for path in (out / "config.json", *out.glob("snapshots/*/config.json")):  # where the commit is read back from
        path.write_text(path.read_text().replace('"format_version": 1', '"format_version": 2'))
    damaged = mome(*args, "--steps", 3, "--resume", root=corpus, env=env)
    assert damaged.returncode == 1 and damaged.stderr.splitlines()[-1].startswith(
        f"mome train: {out / 'config.json'}: checkpoint format 2"), damaged.explain  # a traceback


def test_a_folder_of_clips_with_their_transcripts_is_a_training_and_validation_set(corpus, tmp_path):
    folder = tmp_path / "clips"
    folder.mkdir()
    for name, (*_, text) in CLIPS.items():
        shutil.copy(corpus / "media" / name, folder / name)
        (folder / name).with_suffix(".txt").write_text(text + "\n")
    result = mome("train", "--config", RECIPE, "--train", folder, "--valid", folder, "--roi", "-o", tmp_path / "run",
                  "--steps", 1, "--batch-frames", 100, root=corpus)
    assert result.returncode == 0 and "3 utterances" in result.stderr, result.explain
    assert len(records(tmp_path / "run", "eval")[-1]["wer"]) == 4  # validated at every rate pair


def test_init_starts_the_projectors_from_a_file_and_refuses_one_that_does_not_fit(trained, corpus, tmp_path):
    from safetensors.torch import save_file

    done = load_file(trained / "model.safetensors")
    projectors = {k: t for k, t in done.items() if k.startswith(("audio.", "video."))}
    save_file(projectors, str(tmp_path / "projectors.safetensors"))
    base = ["train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--roi", "--steps", 1, "--lr", 1e-9]
    result = mome(*base, "-o", tmp_path / "warm", "--init", tmp_path / "projectors.safetensors", root=corpus)
    assert result.returncode == 0 and f"{len(projectors)} tensors initialised" in result.stderr, result.explain
    warm = load_file(tmp_path / "warm" / "model.safetensors")
    assert all(torch.allclose(warm[k], t, atol=1e-6) for k, t in projectors.items())  # a step of lr 1e-9 from them
    mome_keys = [k for k in done if k.startswith("mome.") and "up_weight" in k]
    assert not any(torch.equal(warm[k], done[k]) for k in mome_keys)  # the rest from the seed
    save_file({"audio.projectors.3.fc1.weight": torch.zeros(2, 2)}, str(tmp_path / "other.safetensors"))
    result = mome(*base, "-o", tmp_path / "misfit", "--init", tmp_path / "other.safetensors", root=corpus)
    assert result.returncode == 2 and "audio.projectors.3.fc1.weight" in result.stderr, result.explain


def test_resume_needs_a_run(corpus, tmp_path):
    result = mome("train", "--config", RECIPE, "--train", corpus / "train.jsonl", "-o", tmp_path, "--resume",
                  root=corpus)
    assert result.returncode == 2 and "no run to continue" in result.stderr, result.explain



@pytest.mark.parametrize("damage", [b'{"lr": 0.0', bytes(range(128, 256)), b"[]", b'{"lr": "fast"}'])
def test_a_damaged_run_config_is_one_line_naming_it(trained, tmp_path, corpus, damage):
    out = tmp_path / "damaged"
    shutil.copytree(trained, out)
    (out / "train_config.json").write_bytes(damage)  # tracebacks before, each of them
    result = mome(*train_args(corpus, out), "--resume", root=corpus)
    assert result.returncode == 2, result.explain
    assert (f"--resume: {out / 'train_config.json'}: damaged or from another version of mome, the run cannot be "
            "resumed from it (") in result.stderr, result.explain
    assert "Traceback" not in result.stderr, result.explain


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_a_damaged_run_state_is_one_line_naming_it(trained, corpus, damage):
    out = corpus / f"damaged-{damage}"
    shutil.copytree(trained, out)
    state = out / "trainer_state.pt"
    state.write_bytes(state.read_bytes()[:1000] if damage == "truncated" else b"")
    result = mome(*train_args(corpus, out.name), "--resume", root=corpus)
    assert result.returncode == 1, result.explain
    assert result.stderr.startswith(f"mome train: {state}: damaged, the run cannot be resumed from it ("), \
        result.explain  # at once: before the data is prepared
    assert len(result.stderr.strip().splitlines()) == 1, result.explain


def test_a_run_that_cannot_start_leaves_no_folder(corpus, tmp_path):
    (tmp_path / "notes.mp4").write_text("not a video")
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "n", "video": str(tmp_path / "notes.mp4"), "text": "x"}))
    result = mome("train", "--config", RECIPE, "--train", tmp_path / "bad.jsonl", "--roi", "-o",
                  tmp_path / "runs" / "new" / "run", "--steps", 2, "-v", root=corpus)
    assert result.returncode == 1 and "notes.mp4" in result.stderr, result.explain
    assert "model: " in result.stderr and "; built in " in result.stderr, result.explain  # -v, after the subcommand
    assert not (tmp_path / "runs").exists()  # nor the folders made above it


def test_a_folder_refused_as_output_is_named_on_one_line(corpus, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a\nb\x1b[2J").write_text("the user's")
    result = mome("train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--roi", "-o", tmp_path / "out",
                  root=corpus)
    assert result.returncode == 2 and "is not empty (a\\nb\\x1b[2J)" in result.stderr, result.explain
    assert "\x1b" not in result.stderr and (tmp_path / "out" / "a\nb\x1b[2J").read_text() == "the user's"


# ---- in-process units ----------------------------------------------------------------------------------------


def test_flags_override_the_recipe_and_steps_replace_epochs(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[optim]\nepochs = 3\nlr = 0.5\n[model]\nrates = "4,2;16,5"\n')
    config = resolve_config(recipe, {"train": "t.jsonl", "output": str(tmp_path / "o"), "steps": 7})
    assert (config.steps, config.epochs, config.lr, config.rates) == (7, None, 0.5, [(4, 2), (16, 5)])
    recipe.write_text("lerning_rate = 1\n")
    with pytest.raises(ConfigError, match="unknown setting.*lerning_rate"):
        resolve_config(recipe, {"train": "t", "output": "o"})
    with pytest.raises(ConfigError, match="exactly one of steps and epochs"):
        TrainConfig(train="t", output="o")
    with pytest.raises(ConfigError, match="precision must be one of bf16, fp32, got 'fp8'"):
        TrainConfig(train="t", output="o", steps=1, precision="fp8")



def test_model_names_a_preset_even_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    """A run written to -o tiny made --model tiny in that folder name the run's folder (refused: no backbones)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    (tmp_path / "tiny" / "model.safetensors").write_bytes(b"")
    assert resolve_config(None, {"train": "t", "output": "o", "steps": 1, "model": "tiny"}).model == "tiny"
    backbones = tmp_path / "mine"
    backbones.mkdir()
    (backbones / "backbones.json").write_text("{}")
    assert resolve_config(None, {"train": "t", "output": "o", "steps": 1, "model": "mine"}).model == str(backbones)


def test_a_new_run_never_writes_over_a_folder_that_holds_something(tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a checkpoint: say, a finished model copied here
    (out / "model.safetensors").write_bytes(b"weights")
    flags = {"train": "t.jsonl", "output": str(out), "steps": 1}
    with pytest.raises(ConfigError, match=r"model is not empty \(config.json, model.safetensors\)"):
        resolve_config(None, flags)
    with pytest.raises(ConfigError, match="a file, not a folder"):
        resolve_config(None, {**flags, "output": str(out / "model.safetensors")})
    # below a file: refused alike (it failed only once the model was built, "Not a directory", exit 1)
    with pytest.raises(ConfigError, match=f"-o {out}/model.safetensors/sub: {out}/model.safetensors is a file"):
        resolve_config(None, {**flags, "output": str(out / "model.safetensors" / "sub")})
    left = tmp_path / "left"  # what a run that stopped before its first save leaves: started again, not refused
    left.mkdir()
    (left / "train_config.json").write_text("{}")
    (left / "log.jsonl").write_text("")
    (left / ".trainer_state.pt.k2j4.tmp").write_bytes(b"half")  # killed in its first save
    (left / "snapshots" / "step-000001").mkdir(parents=True)  # killed between the snapshot and the state
    (left / "snapshots" / "step-000001" / "model.safetensors").write_bytes(b"weights")
    (left / ".train.lock").write_bytes(b"")
    assert resolve_config(None, {**flags, "output": str(left)}).output == str(left)
    assert resolve_config(None, {**flags, "output": str(tmp_path / "new")}).output == str(tmp_path / "new")


@pytest.mark.parametrize("name, write", [
    ("snapshots/holiday.jpg", lambda path: path.write_bytes(b"a photo")),
    ("snapshots/step-000001/notes.txt", lambda path: path.write_text("notes")),
    ("log.jsonl", lambda path: path.write_text('{"my": 1}\n')),
    ("train_config.json", lambda path: path.write_text('{"owner": "me"}')),
])
def test_a_users_files_by_the_names_a_run_uses_are_not_taken_for_its_leftovers(tmp_path, name, write):
    """A new run clears what a run that never saved left (log.jsonl, snapshots/): it cleared a folder of the user's
    by those names too, photos in snapshots/ and all."""
    out = tmp_path / "proj"
    (out / name).parent.mkdir(parents=True)
    write(out / name)
    with pytest.raises(ConfigError, match=r"proj is not empty \(" + name.split("/")[0]):
        resolve_config(None, {"train": "t.jsonl", "output": str(out), "steps": 1})


def test_a_resume_that_cannot_start_leaves_the_runs_settings_as_they_were(trained, corpus, tmp_path):
    """--resume --steps 500 that failed while preparing the data (here: a clip gone) had saved the 500 steps already:
    the next --resume went on to 500 without being asked."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = (run / "train_config.json").read_text()
    moved = corpus.parent / f"{corpus.name}-moved"
    (corpus / "media").rename(moved)
    try:
        result = mome("train", "-o", run, "--resume", "--steps", 500, root=corpus)
    finally:
        moved.rename(corpus / "media")
    assert result.returncode != 0 and (run / "train_config.json").read_text() == before, result.explain


def test_a_second_run_on_the_same_folder_is_refused_while_the_first_trains(corpus, tmp_path):
    """Both started while -o was empty: the second cleared the first's log, and both wrote the same checkpoints."""
    out = tmp_path / "run"
    command = [str(BIN / "mome"), *map(str, ["train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--roi",
                                             "-o", out, "--steps", 100000, "--batch-frames", 100])]
    first = subprocess.Popen(command, cwd=corpus, env=environment(corpus), stderr=subprocess.PIPE, text=True)
    try:
        for line in first.stderr:  # the first holds the folder once it says what it trains
            if line.startswith("training "):
                break
        second = mome("train", "--config", RECIPE, "--train", corpus / "train.jsonl", "--roi", "-o", out, root=corpus)
        assert second.returncode == 1, second.explain
        assert second.stderr.splitlines()[-1] == f"mome train: cannot train in {out}: another mome train is writing " \
                                                 "to it", second.explain
    finally:
        first.send_signal(signal.SIGINT)
        first.communicate(timeout=120)
    assert first.returncode == 130


def test_a_bad_value_from_the_recipe_names_the_recipe_and_one_from_a_flag_does_not(tmp_path):
    """"steps must be a whole number, got 'x'" said nothing of where the value was: on no flag of the command line."""
    recipe = tmp_path / "r.toml"
    recipe.write_text('steps = "x"\nlr = -1.0\nlb_coef = -1.0\n')
    base = {"train": "t.jsonl", "output": str(tmp_path / "o")}
    with pytest.raises(ConfigError) as e:
        resolve_config(recipe, base)
    assert str(e.value) == f"{recipe}: steps must be a whole number, got 'x'"
    with pytest.raises(ConfigError) as e:
        resolve_config(recipe, {**base, "steps": 2})
    assert str(e.value) == f"{recipe}: lr must be > 0 and finite, got -1.0"
    with pytest.raises(ConfigError) as e:
        resolve_config(recipe, {**base, "steps": 2, "lr": 1e-3})
    assert str(e.value).startswith(f"{recipe}: MoME: lb_coef must be a finite number >= 0, got -1.0")
    with pytest.raises(ConfigError) as e:  # the flag's value: the command line shows it
        resolve_config(recipe, {**base, "steps": 2, "lr": -2.0})
    assert str(e.value) == "lr must be > 0 and finite, got -2.0"


@pytest.mark.parametrize("setting, value, message", [
    ("lr", "1e-3", "lr must be a number, got '1e-3'"),  # a crash (TypeError) before
    ("roi", "false", "roi must be true or false, got 'false'"),  # read as true before
    ("mask_audio", "false", "mask_audio must be true or false"),
    ("mode", ["av"], "mode must be text"),
    ("warmup_steps", 2.5, "warmup_steps must be a whole number"),
    ("seed", -1, r"seed must be in 0\.\.4294967295, got -1"),
    ("seed", 2**32, "seed must be in 0..4294967295, got 4294967296"),  # numpy's limit: a traceback before
    ("betas", ["a", 0.9], r"betas must be a list of numbers, got \['a', 0\.9\]"),  # float('a'): a traceback before
    ("betas", [[0.9], 0.9], r"betas must be a list of numbers, got \[\[0\.9\], 0\.9\]"),  # float([0.9]) too
    ("betas", [False, 0.9], r"betas must be a list of numbers, got \[False, 0\.9\]"),  # read as 0.0 before
    ("betas", [0.9], r"betas must be two numbers in \[0, 1\), got \[0\.9\]"),
    ("betas", [0.9, 1], r"betas must be two numbers in \[0, 1\), got \[0\.9, 1\.0\]"),
    ("babble_snr", ["x"], r"babble_snr must be a list of numbers, got \['x'\]"),  # float('x'): a traceback before
])
def test_a_recipe_value_of_the_wrong_kind_is_refused(tmp_path, setting, value, message):
    import json as js

    recipe = tmp_path / "r.toml"
    recipe.write_text(f"steps = 2\n{setting} = {js.dumps(value)}\n")
    with pytest.raises(ConfigError, match=message):
        resolve_config(recipe, {"train": "t.jsonl", "output": str(tmp_path / "o")})


@pytest.mark.parametrize("recipe, message", [
    ('betas = ["a", 0.9]', "betas must be a list of numbers, got ['a', 0.9]"),
    ("betas = [[0.9], 0.9]", "betas must be a list of numbers, got [[0.9], 0.9]"),
    ('babble_prob = 0.5\nbabble_snr = ["x"]', "babble_snr must be a list of numbers, got ['x']"),
    # a run that died at step 1 (exit 1) saying "non-finite gradients ... try a lower lr"
    ("babble_prob = 0.5\nbabble_snr = [nan]", "babble_snr must be finite numbers (dB), got [nan]"),
    ("rates = [[4.7, 2]]", 'rates must be audio,video pairs of whole numbers such as "4,2;4,5" or [[4, 2], [4, 5]], '
                           "got [[4.7, 2]]"),  # trained as 4,2 before
])
def test_a_bad_list_in_a_recipe_is_a_usage_error_on_one_line(corpus, tmp_path, recipe, message):
    """Exit 2 and the setting named, and the recipe, as for any value of the wrong kind; a traceback (exit 1) before."""
    (tmp_path / "r.toml").write_text(recipe + "\n")
    result = mome("train", "--config", tmp_path / "r.toml", "--train", corpus / "train.jsonl", "--roi", "-o",
                  tmp_path / "out", "--steps", 2, root=corpus)
    assert result.returncode == 2 and f"Error: {tmp_path / 'r.toml'}: {message}\n" in result.stderr, result.explain
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists(), result.explain


@pytest.mark.parametrize("line, message", [
    ("babble_snr = [nan]", r"babble_snr must be finite numbers \(dB\), got \[nan\]"),
    ("babble_snr = [-inf, 0]", r"babble_snr must be finite numbers \(dB\), got \[-inf, 0\.0\]"),
    ("rates = [[4.7, 2], [16, 5]]", r"rates must be .*pairs of whole numbers .*got \[\[4\.7, 2\], \[16, 5\]\]"),
    ("rates = [[4.0, 2]]", r"rates must be audio,video pairs of whole numbers .*got \[\[4\.0, 2\]\]"),
    ("rates = [[true, 2]]", r"rates must be audio,video pairs of whole numbers .*got \[\[True, 2\]\]"),  # 1,2 before
    ('rates = [["4", 2]]', r"rates must be audio,video pairs of whole numbers .*got \[\['4', 2\]\]"),
])
def test_a_recipe_snr_that_is_not_finite_or_a_rate_that_is_not_whole_is_refused(tmp_path, line, message):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f"steps = 2\n{line}\n")  # nan and inf: TOML's own words, which json.dumps does not write
    with pytest.raises(ConfigError, match=message):
        resolve_config(recipe, {"train": "t.jsonl", "output": str(tmp_path / "o")})
    recipe.write_text("steps = 2\nrates = [[4, 2], [16, 5]]\nbabble_snr = [-5, 0.5]\n")  # whole numbers, finite
    config = resolve_config(recipe, {"train": "t.jsonl", "output": str(tmp_path / "o")})
    assert (config.rates, config.babble_snr) == ([(4, 2), (16, 5)], [-5.0, 0.5])


@pytest.mark.parametrize("recipe", sorted((Path(__file__).parents[1] / "recipes").glob("*.toml")),
                         ids=lambda p: p.name)
def test_every_shipped_recipe_is_a_valid_config(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a recipe's relative backbones folder (demo: runs/backbones) would be
    (tmp_path / "runs" / "backbones").mkdir(parents=True)
    (tmp_path / "runs" / "backbones" / BACKBONES_NAME).write_text("{}")
    config = resolve_config(recipe, {"train": "t.jsonl", "output": str(tmp_path / "o")})
    assert config.rates and (config.steps or config.epochs)


def test_time_mask_zeroes_spans_and_babble_hits_the_snr():
    rng = np.random.default_rng(0)
    x = np.ones((250, 4, 4), dtype=np.uint8)  # 10 s of ROI frames
    config = TrainConfig(train="t", output="o", steps=1, mask_video=True)
    masked = time_mask(x, 25, config, rng)
    zero = masked.reshape(250, -1).max(axis=1) == 0
    assert x.min() == 1 and 0 < zero.sum() <= 10 * 10  # at most 10 spans of at most 0.4 s (10 frames)
    t = np.arange(32000) / 16000
    speech = np.sin(2 * np.pi * 220 * t).astype(np.float32)
    others = [np.sin(2 * np.pi * f * t[:9000]).astype(np.float32) for f in (310, 470, 650)]
    noisy = add_babble(speech, others, 5.0, np.random.default_rng(1))
    noise = noisy.astype(np.float64) - speech
    snr = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(noise**2))
    assert noisy.shape == speech.shape and snr == pytest.approx(5.0, abs=1e-3)


def test_random_crop_is_one_88_window_per_utterance_anywhere_in_the_roi():
    """The predecessors train on RandomCrop(88) of the 96 x 96 mouth crops (one offset a clip) and test on the
    centre: training only ever saw the centre crop."""
    rois = np.arange(5 * 96 * 96, dtype=np.int64).reshape(5, 96, 96)  # every pixel tells where it came from
    offsets = set()
    for seed in range(200):
        crop = random_crop(rois, np.random.default_rng(seed))
        assert crop.shape == (5, 88, 88)
        top, left = divmod(int(crop[0, 0, 0]), 96)
        assert torch.equal(torch.from_numpy(crop), torch.from_numpy(rois[:, top : top + 88, left : left + 88]))
        offsets.add((top, left))
    assert {t for t, _ in offsets} == set(range(9)) == {x for _, x in offsets}  # 0..8 each way, the centre is 4
    with pytest.raises(ConfigError, match="crop_video"):
        TrainConfig(train="t", output="o", steps=1, mode="a", crop_video=True)
    assert TrainConfig(train="t", output="o", steps=1, crop_video=True).augmenting


@pytest.mark.parametrize("augment, reused", [({"babble_prob": 0.5}, ("audio", "video")),
                                              ({"babble_prob": 0.5, "mask_video": True}, ("audio",)),
                                              ({"crop_video": True}, ("audio",)),
                                              ({"mask_audio": True, "mask_video": True}, ())])
def test_augmented_steps_encode_again_only_what_augmentation_changed(corpus, tmp_path, augment, reused):
    # Babble hits some utterances' audio; a time mask changes its modality in every utterance. The rest comes from
    # the stored features, and the batch must be what encoding every augmented clip afresh gives.
    from mome_cli.recognizer import build_recognizer
    from mome_cli.train_data import TrainingData, collate

    config = TrainConfig(train=str(corpus / "train.jsonl"), output=str(tmp_path / "o"), steps=1, roi=True,
                         batch_frames=200, **augment)
    recognizer = build_recognizer(config.model_config(), tmp_path / "home", "cpu", dtype=torch.float32, seed=0)
    data = TrainingData(config, tmp_path / "home")
    data.prepare(recognizer, torch.device("cpu"))
    assert data.reused == reused and len(data.kept) == 3
    (batch,) = data.epoch_batches(0)  # the three clips in one batch
    encoded = []  # (audio clips, video clips) of each encoder call during a step
    encode = recognizer.features

    def spy(audio, rois):
        encoded.append((len(audio or []), len(rois or [])))
        return encode(audio, rois)

    noised = set()
    for step in range(8):
        rng = np.random.default_rng([config.seed, step, 0])  # the step's augmentation, drawn as inputs() draws it
        augmented = [data._augment(data.kept[j], rng) for j in batch]
        afresh = data._features([clip for clip, _ in augmented])
        encoded.clear()
        recognizer.features = spy
        try:
            features, texts = data.inputs(batch, step)
        finally:
            recognizer.features = encode
        hit = [k for k, (_, names) in enumerate(augmented) if "audio" in names]
        noised.update(hit)
        if reused:
            assert sum(a for a, _ in encoded) == len(hit)  # each changed audio encoded once, nothing else
            assert sum(v for _, v in encoded) == (len(batch) if "video" not in reused else 0)
        for name in ("audio", "video"):  # equal within each utterance's length (padding is zeros from the store)
            lengths = getattr(features, f"{name}_lengths")
            assert torch.equal(lengths, getattr(afresh, f"{name}_lengths"))
            for k, length in enumerate(lengths.tolist()):
                torch.testing.assert_close(getattr(features, name)[k, :length], getattr(afresh, name)[k, :length],
                                           atol=1e-5, rtol=1e-4)
        if "audio" in reused:
            stored = collate([data.features.get(data.kept[j], data.utterances[data.kept[j]]) for j in batch], "cpu")
            for k in range(len(batch)):
                length = stored.audio_lengths[k]
                same = torch.equal(features.audio[k, :length], stored.audio[k, :length])
                assert same == (k not in hit)  # a clean utterance's audio is the stored one, a noisy one is not
    if "babble_prob" in augment:
        assert 0 < len(noised)  # babble hit some utterances over the steps


def test_clips_for_augmentation_stay_on_disk_with_the_disk_cache_and_give_the_same_inputs(corpus, tmp_path):
    """With feature_cache "disk" the raw clips that augmentation reads at every step are files read back
    memory-mapped, not arrays held by every process (LRS3: hundreds of GB); a step's inputs are the same."""
    from mome_cli.recognizer import build_recognizer
    from mome_cli.train_data import TrainingData

    inputs = {}
    for cache in ("memory", "disk"):
        config = TrainConfig(train=str(corpus / "train.jsonl"), output=str(tmp_path / "o"), steps=1, roi=True,
                             batch_frames=200, feature_cache=cache, mask_audio=True, mask_video=True, babble_prob=0.5)
        recognizer = build_recognizer(config.model_config(), tmp_path / cache, "cpu", dtype=torch.float32, seed=0)
        data = TrainingData(config, tmp_path / cache)
        data.prepare(recognizer, torch.device("cpu"))
        (batch,) = data.epoch_batches(0)
        inputs[cache] = data.inputs(batch, 3)
        if cache == "disk":
            assert data.clips.files.memory == {} and len(data.clips) == 3
            assert len(list((tmp_path / cache / "cache" / "train-clips").glob("*.pt"))) == 3
    (memory, texts), (disk, disk_texts) = inputs["memory"], inputs["disk"]
    assert texts == disk_texts
    for name in ("audio", "audio_lengths", "video", "video_lengths"):
        assert torch.equal(getattr(memory, name), getattr(disk, name)), name


def test_a_corpus_folder_is_read_through_its_train_and_valid_manifests(corpus, tmp_path):
    """--train data/synth --valid data/synth (a corpus folder, as evaluate --dataset takes one) was searched for media
    with transcripts beside them: "no media files with a same-named .txt transcript"."""
    from mome_cli.data import DatasetMissing
    from mome_cli.train_data import TrainingData

    folder = tmp_path / "synth"
    folder.mkdir()
    (folder / "media").symlink_to(corpus / "media")
    rows = (corpus / "train.jsonl").read_text().splitlines(keepends=True)
    (folder / "train.jsonl").write_text("".join(rows))
    (folder / "val.jsonl").write_text(rows[0])
    config = TrainConfig(train=str(folder), valid=str(folder), output=str(tmp_path / "o"), steps=1, roi=True)
    data = TrainingData(config, tmp_path)
    assert [u.id for u in data.utterances] == [json.loads(r)["id"] for r in rows]
    assert [u.id for u in data.valid_utterances] == [json.loads(rows[0])["id"]]
    (folder / "val.jsonl").unlink()
    with pytest.raises(DatasetMissing, match=r"synth: no valid, val or dev manifest \(\.jsonl or \.csv\) in it \(it "
                                             r"holds train\.jsonl\): give the manifest itself$"):
        TrainingData(config, tmp_path)


@pytest.mark.parametrize("folder", ["features", "train-clips"])
def test_damaged_files_in_the_disk_feature_cache_are_made_again(corpus, tmp_path, folder):
    """A file of cache/features or cache/train-clips cut short (a full disk, a copy interrupted) or emptied was taken
    as stored, then torch.load's RuntimeError ended the run with a traceback."""
    from mome_cli.recognizer import build_recognizer
    from mome_cli.train_data import TrainingData

    augment = dict(mask_audio=True, mask_video=True) if folder == "train-clips" else {}
    config = TrainConfig(train=str(corpus / "train.jsonl"), output=str(tmp_path / "o"), steps=1, roi=True,
                         batch_frames=200, feature_cache="disk", **augment)
    recognizer = build_recognizer(config.model_config(), tmp_path, "cpu", dtype=torch.float32, seed=0)
    inputs = []
    for run in range(2):
        data = TrainingData(config, tmp_path)
        data.prepare(recognizer, torch.device("cpu"))
        (batch,) = data.epoch_batches(0)
        inputs.append(data.inputs(batch, 3))
        cut, emptied, *_ = sorted((tmp_path / "cache" / folder).glob("*.pt"))
        cut.write_bytes(cut.read_bytes()[:1000])
        emptied.write_bytes(b"")
    assert inputs[0][1] == inputs[1][1] and len(data.kept) == 3
    for name in ("audio", "audio_lengths", "video", "video_lengths"):
        assert torch.equal(getattr(inputs[0][0], name), getattr(inputs[1][0], name)), name


def test_a_run_with_babble_and_masks_trains(corpus, tmp_path):
    recipe = tmp_path / "augmented.toml"
    recipe.write_text(RECIPE.read_text().replace("babble_prob = 0.0", "babble_prob = 0.5")
                      .replace("mask_video = false", "mask_video = true"))
    result = mome("train", "--config", recipe, "--train", corpus / "train.jsonl", "--roi", "-o", tmp_path / "run",
                  "--steps", 6, "--batch-frames", 100, "--log-every", 2, root=corpus)
    assert result.returncode == 0, result.explain
    assert "augmented ones encoded again" in result.stderr + result.stdout
    losses = [r["loss"] for r in records(tmp_path / "run", "train")]
    assert losses and all(np.isfinite(losses))


def test_auto_avsr_layout_joins_the_wav_to_its_mouth_crops(corpus, tmp_path):
    """LRS3 as auto_avsr prepares it: silent mouth-crop mp4s with a .wav beside each, listed in a .csv."""
    folder = tmp_path / "lrs3" / "trainval" / "spk"
    folder.mkdir(parents=True)
    source = corpus / "media" / "hello.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(source), "-an", "-c:v", "copy",
                    str(folder / "00001.mp4"), "-vn", "-ac", "1", "-ar", "16000", str(folder / "00001.wav")],
                   check=True)
    (tmp_path / "train.csv").write_text("lrs3,trainval/spk/00001.mp4,30,1 2,hello world\n")
    (utterance,) = load_manifest(tmp_path / "train.csv")
    assert TrainConfig(train=str(tmp_path / "train.csv"), output="o", steps=1).mouth_crops  # the layout implies it
    preprocessors = {m: Preprocessor(PreprocessOptions(mode=m, roi=True)) for m in ("av", "a", "v")}
    clip = load_clip(utterance, "av", preprocessors)
    whole = preprocessors["av"](source)
    assert clip.mode == "av" and np.array_equal(clip.rois, whole.rois)
    assert abs(len(clip.audio) - len(whole.audio)) <= 640 and clip.audio.std() > 0.01
    assert np.array_equal(load_clip(utterance, "a", preprocessors).audio, clip.audio)
