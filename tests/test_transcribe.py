"""`mome transcribe` end to end, through the installed executable, with a checkpoint trained in the test."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from conftest import wait_for
from mome_cli.checkpoint import save_checkpoint
from mome_cli.preprocess import Preprocessor, PreprocessOptions
from mome_cli.recognizer import load_recognizer

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

MOME = str(Path(sys.executable).parent / "mome")
TEXTS = {"hello.mp4": "hello world", "morning.mp4": "good morning"}


def make_clip(path: Path, pattern: str, sound: str, seconds: float) -> Path:
    """A 96x96 mouth-crop style video (LRS3 layout, hence --roi) with a sound (a lavfi audio source)."""
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y",
                    "-f", "lavfi", "-i", f"{pattern}=size=96x96:rate=25:duration={seconds}",
                    "-f", "lavfi", "-i", f"{sound}:duration={seconds}",
                    "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two clips and a tiny model trained until it transcribes each of them right, at every rate pair."""
    root = tmp_path_factory.mktemp("transcribe")
    media = root / "media"
    media.mkdir()
    # Random tiny encoders map similar inputs to near-identical features: the clips differ in length and content.
    make_clip(media / "hello.mp4", "testsrc2", "sine=frequency=300", 2.0)
    make_clip(media / "morning.mp4", "rgbtestsrc", "anoisesrc=color=pink:amplitude=0.3:seed=7", 3.2)
    clips = [Preprocessor(PreprocessOptions(roi=True))(media / name) for name in TEXTS]
    torch.manual_seed(0)
    recognizer = load_recognizer("tiny")
    model = recognizer.model
    features = recognizer.features([c.audio for c in clips], [c.rois for c in clips])
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(150):
        optimiser.zero_grad()
        model(features, list(TEXTS.values())).loss.backward()
        optimiser.step()
    model.eval()
    save_checkpoint(model, root / "ckpt")
    return root


def mome(*args, cwd, env=None):
    result = subprocess.run([MOME, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "MOME_HOME": str(cwd / "home"), **(env or {})})
    result.explain = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


class Recorder:
    """Stands in for sys.stdout, log and progress at once: what each wrote or did, in order, and from which thread."""

    def __init__(self):
        self.events, self.threads, self.line = [], set(), ""

    def __call__(self, kind, value):
        self.events.append((kind, value))
        self.threads.add(threading.current_thread())

    def write(self, text):  # print() writes a line's text and its end apart
        *lines, self.line = (self.line + text).split("\n")
        for line in lines:
            self("stdout", line)

    def flush(self):
        pass


def transcribe_here(inputs, trained, out, monkeypatch, batch_size=8):
    """transcribe.run in this process, as `mome transcribe INPUTS --model ckpt --roi --stdout -o out` runs it: its
    report, and a Recorder of its stdout, log lines and progress advances."""
    from mome_cli import transcribe
    from mome_cli.outputs import Input
    from mome_cli.recognizer import RecognizeOptions

    recorder = Recorder()
    monkeypatch.setenv("MOME_HOME", str(out.parent / "home"))
    monkeypatch.setattr(sys, "stdout", recorder)
    job = transcribe.TranscribeJob(inputs=[Input(Path(p), None) for p in inputs], output_dir=out, stdout=True,
                                   model=str(trained / "ckpt"))
    report = transcribe.run(job, PreprocessOptions(roi=True), RecognizeOptions(batch_size=batch_size),
                            lambda line: recorder("log", line), lambda n: recorder("progress", n))
    return report, recorder


def spy_on_reading(monkeypatch, before=lambda path: None):
    """Preprocessor calls are recorded (path and thread) and go through before(path) first; a before that takes a
    second argument gets the Preprocessor too."""
    import inspect

    from mome_cli import preprocess

    calls, real = [], preprocess.Preprocessor.__call__
    with_self = len(inspect.signature(before).parameters) == 2

    def call(self, path):
        calls.append((Path(path), threading.current_thread()))
        before(Path(path), self) if with_self else before(Path(path))
        return real(self, path)

    monkeypatch.setattr(preprocess.Preprocessor, "__call__", call)
    return calls


def test_the_first_input_is_read_while_the_model_loads(trained, tmp_path, monkeypatch):
    from mome_cli import recognizer

    reading, real_load = threading.Event(), recognizer.load_recognizer
    spy_on_reading(monkeypatch, lambda path: reading.set())

    def load(*args, **kwargs):
        assert reading.wait(5), "the first input was not being read while the model loaded"
        return real_load(*args, **kwargs)

    monkeypatch.setattr(recognizer, "load_recognizer", load)
    clip = trained / "media" / "hello.mp4"
    report, recorder = transcribe_here([clip], trained, tmp_path / "out", monkeypatch)
    assert (report.ok, report.failed) == (1, 0) and ("stdout", f"{clip}\thello world") in recorder.events
    assert (tmp_path / "out" / "hello.txt").read_text() == "hello world\n"


def test_inputs_read_in_the_background_come_back_in_their_order_with_a_bad_file_in_its_place(trained, tmp_path,
                                                                                              monkeypatch):
    """Two groups of two: the second is read while the first is transcribed; a bad file in the first is one error,
    said in its place; every line is written and every advance made by the main thread, in the inputs' order."""
    hello, morning, again, bad = (trained / "media" / "hello.mp4", trained / "media" / "morning.mp4",
                                  tmp_path / "again.mp4", tmp_path / "bad.mp4")
    shutil.copy(hello, again)
    bad.write_text("nope")
    calls = spy_on_reading(monkeypatch)
    report, recorder = transcribe_here([hello, bad, morning, again], trained, tmp_path / "out", monkeypatch,
                                       batch_size=2)
    assert (report.ok, report.failed) == (3, 1)
    events = recorder.events
    assert events[0][0] == "log" and events[0][1].startswith(f"error: {bad}: "), events
    assert events[1:] == [("progress", 1), ("stdout", f"{hello}\thello world"), ("progress", 1),
                          ("stdout", f"{morning}\tgood morning"), ("progress", 1),
                          ("stdout", f"{again}\thello world"), ("progress", 1)], events
    assert recorder.threads == {threading.main_thread()}
    assert [path for path, _ in calls] == [hello, bad, morning, again]
    (reader,) = {thread for _, thread in calls}  # one thread reads them all, and not the main one
    assert reader is not threading.main_thread() and not reader.is_alive()


@pytest.mark.parametrize("failure", ["missing model", "usage problem", "ctrl-c"])
def test_a_model_that_fails_to_load_ends_the_run_and_the_reading_in_flight_at_once(trained, tmp_path, monkeypatch,
                                                                                   failure):
    """The read in flight (a long face detection, say) is told to stop, and the run ends as soon as it has, with no
    thread left behind, nothing more read and nothing written."""
    from mome_cli import recognizer
    from mome_cli.hub import MissingModelError
    from mome_cli.lips import Stopped

    error = {"missing model": MissingModelError("no such model"), "ctrl-c": KeyboardInterrupt(),
             "usage problem": recognizer.UsageProblem("--rate 8,2: not trained")}[failure]
    before = set(threading.enumerate())
    reading, ends = threading.Event(), []

    def in_flight(path, preprocess):  # ten seconds of work that looks at its stop event between steps
        reading.set()
        for _ in range(1000):
            if preprocess.stop.is_set():
                ends.append("stopped")
                raise Stopped
            time.sleep(0.01)
        ends.append("finished")

    calls = spy_on_reading(monkeypatch, in_flight)

    def load(*args, **kwargs):
        assert reading.wait(5), "the first input was not being read while the model loaded"
        raise error

    monkeypatch.setattr(recognizer, "load_recognizer", load)
    clips = [trained / "media" / "hello.mp4", trained / "media" / "morning.mp4", trained / "media" / "hello.mp4"]
    started = time.monotonic()
    with pytest.raises(type(error)):
        transcribe_here(clips, trained, tmp_path / "out", monkeypatch)
    assert time.monotonic() - started < 5  # the error comes at once, not after the read in flight (10 s)
    assert set(threading.enumerate()) == before and ends == ["stopped"]  # which was stopped, its thread ended
    assert [path for path, _ in calls] == clips[:1]  # nothing after it was read
    assert not (tmp_path / "out").exists()


def test_inputs_are_read_at_their_turn_when_face_detection_runs_on_the_gpu(trained, tmp_path, monkeypatch):
    """A reader running face-alignment on CUDA beside the model's work would break the CUDA graphs the model captures:
    then no input is read while another is transcribed."""
    from mome_cli import transcribe
    from mome_cli.recognizer import Recognizer

    events, lock = [], threading.Lock()

    def note(event):
        with lock:
            events.append(event)

    spy_on_reading(monkeypatch, lambda path: note(("read", path.name)))
    real = Recognizer.transcribe_many

    def transcribe_many(self, clips, options):
        note("transcribing")
        time.sleep(0.3)  # time for a reader running ahead to start the next input
        note("transcribed")
        return real(self, clips, options)

    monkeypatch.setattr(Recognizer, "transcribe_many", transcribe_many)
    monkeypatch.setattr(transcribe, "face_detection_on_gpu", lambda options: True)
    clips = [trained / "media" / "hello.mp4", trained / "media" / "morning.mp4"]
    report, _ = transcribe_here(clips, trained, tmp_path / "out", monkeypatch, batch_size=1)
    assert report.ok == 2
    assert events == [("read", "hello.mp4"), "transcribing", "transcribed", ("read", "morning.mp4"), "transcribing",
                      "transcribed"]


def test_face_detection_counts_as_on_the_gpu_only_for_video_that_is_not_crops_on_a_gpu(monkeypatch):
    from mome_cli import lips
    from mome_cli.transcribe import face_detection_on_gpu

    monkeypatch.setattr(lips, "resolve_device", lambda device: "cuda" if device == "auto" else device)  # a GPU here
    assert face_detection_on_gpu(PreprocessOptions())
    assert face_detection_on_gpu(PreprocessOptions(mode="v", device="cuda"))
    assert not face_detection_on_gpu(PreprocessOptions(roi=True))
    assert not face_detection_on_gpu(PreprocessOptions(mode="a"))
    assert not face_detection_on_gpu(PreprocessOptions(device="cpu"))


def test_an_error_other_than_a_media_error_is_raised_at_its_inputs_turn(trained, tmp_path, monkeypatch):
    hello, morning = trained / "media" / "hello.mp4", trained / "media" / "morning.mp4"
    before = set(threading.enumerate())

    def fail(path):
        if path == morning:
            raise RuntimeError("a bug while reading")

    spy_on_reading(monkeypatch, fail)
    with pytest.raises(RuntimeError, match="a bug while reading"):
        transcribe_here([hello, morning], trained, tmp_path / "out", monkeypatch, batch_size=1)
    assert (tmp_path / "out" / "hello.txt").read_text() == "hello world\n"  # the input before it was transcribed
    wait_for(lambda: set(threading.enumerate()) == before)  # the reader, told to stop, ends by itself


def test_transcripts_match_what_the_model_learned_in_every_format(trained):
    out = trained / "out-all"
    result = mome("transcribe", trained / "media", "--model", trained / "ckpt", "--roi", "-o", out, "-f", "all",
                  "--stdout", cwd=trained)
    assert result.returncode == 0, result.explain
    lines = dict(line.split("\t") for line in result.stdout.splitlines())
    assert {Path(k).name: v for k, v in lines.items()} == TEXTS, result.explain
    for name, text in TEXTS.items():
        stem = out / Path(name).stem
        assert (stem.with_suffix(".txt")).read_text() == text + "\n"
        document = json.loads(stem.with_suffix(".json").read_text())
        assert document["text"] == text and document["mode"] == "av" and document["rate"] == [4, 2]
        assert document["model"] == str(trained / "ckpt") and document["duration"] > 1.9
        assert [s["text"] for s in document["segments"]] == [text]
        assert [json.loads(line)["text"] for line in stem.with_suffix(".jsonl").read_text().splitlines()] == [text]
        srt = stem.with_suffix(".srt").read_text()
        assert re.fullmatch(r"1\n00:00:00,000 --> 00:00:0\d,\d{3}\n" + text + "\n", srt), srt
        vtt = stem.with_suffix(".vtt").read_text()
        assert re.fullmatch(r"WEBVTT\n\n00:00:00\.000 --> 00:00:0\d\.\d{3}\n" + text + "\n", vtt), vtt


@pytest.mark.parametrize("rate", ["4,5", "16,2", "16,5"])
def test_every_trained_rate_from_one_checkpoint(trained, rate):
    result = mome("transcribe", trained / "media" / "morning.mp4", "--model", trained / "ckpt", "--roi",
                  "--rate", rate, "--stdout", "-o", trained / f"out-{rate}", cwd=trained)
    assert result.returncode == 0 and result.stdout.split("\t")[1].strip() == "good morning", result.explain


def on_a_terminal(*args, cwd, **run):
    """mome with stderr on a pseudo-terminal (so the progress bar shows): the result, and what the terminal got."""
    import pty

    master, terminal = pty.openpty()
    seen = []

    def drain():
        try:
            while chunk := os.read(master, 4096):
                seen.append(chunk)
        except OSError:  # the terminal's last end is closed
            pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        result = subprocess.run([MOME, *map(str, args)], cwd=cwd, stderr=terminal, timeout=300,
                                env={**os.environ, "MOME_HOME": str(cwd / "home"), "TERM": "xterm"}, **run)
    finally:
        os.close(terminal)
        reader.join(timeout=10)
        os.close(master)
    return result, b"".join(seen).decode(errors="replace")


def test_stdout_lines_reach_a_pipe_while_the_progress_bar_is_on_a_terminal(trained, tmp_path):
    """With stderr a terminal (the bar shows), rich's progress sent what was printed to stdout to its console on
    stderr: `mome transcribe x --stdout > file` wrote nothing into the file."""
    args = ["transcribe", trained / "media" / "hello.mp4", "--model", trained / "ckpt", "--roi", "--no-cache"]
    result, shown = on_a_terminal(*args, "--stdout", cwd=trained, stdout=subprocess.PIPE, text=True)
    assert result.returncode == 0, shown
    assert "transcribing" in shown  # the bar was on
    assert result.stdout == f"{trained / 'media' / 'hello.mp4'}\thello world\n", shown
    # `mome transcribe x -o out >&-`: with stdout closed, Python's sys.stdout is None
    closed, shown = on_a_terminal(*args, "-o", tmp_path / "out", cwd=trained, preexec_fn=lambda: os.close(1))
    assert closed.returncode == 0 and (tmp_path / "out" / "hello.txt").is_file(), shown


def test_same_names_in_two_folders_skip_overwrite_and_a_bad_file(trained, tmp_path):
    tree = tmp_path / "in"
    for sub in ("a", "b"):
        (tree / sub).mkdir(parents=True)
        shutil.copy(trained / "media" / "hello.mp4", tree / sub / "x.mp4")
    (tree / "b" / "broken.mp4").write_bytes(b"\x00\x01 not a video" * 64)
    args = ["transcribe", tree, "-r", "--model", trained / "ckpt", "--roi", "-o", tmp_path / "out"]
    first = mome(*args, cwd=trained)
    assert first.returncode == 3, first.explain  # partial failure
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")
                  if p.is_file()) == ["a/x.txt", "b/x.txt"]
    assert "broken.mp4" in first.stderr and "2 ok, 0 skipped, 1 failed" in first.stderr, first.explain
    assert len([ln for ln in first.stderr.splitlines() if "broken.mp4" in ln]) == 1, first.explain
    (tmp_path / "out" / "a" / "x.txt").write_text("kept\n")
    again = mome(*args, cwd=trained)
    assert "0 ok, 2 skipped, 1 failed" in again.stderr and again.returncode == 3, again.explain
    assert (tmp_path / "out" / "a" / "x.txt").read_text() == "kept\n"
    listed = mome(*args, "--stdout", cwd=trained)  # skipped inputs still print their text, read back from txt
    assert listed.returncode == 3 and "0 ok, 2 skipped, 1 failed" in listed.stderr, listed.explain
    assert sorted(listed.stdout.splitlines()) == [f"{tree / 'a' / 'x.mp4'}\tkept", f"{tree / 'b' / 'x.mp4'}\thello world"]
    more = mome(*args, "-f", "txt", "-f", "json", cwd=trained)  # a format added: only it is written
    assert "2 ok, 0 skipped, 1 failed" in more.stderr, more.explain
    assert (tmp_path / "out" / "a" / "x.txt").read_text() == "kept\n"
    assert json.loads((tmp_path / "out" / "a" / "x.json").read_text())["text"] == "hello world"
    (tree / "b" / "broken.mp4").unlink()
    forced = mome(*args, "--overwrite", cwd=trained)
    assert forced.returncode == 0 and "2 ok, 0 skipped, 0 failed" in forced.stderr, forced.explain
    assert (tmp_path / "out" / "a" / "x.txt").read_text() == "hello world\n"


@pytest.mark.parametrize("below", [(), ("sub",), ("sub", "deeper")], ids=["FILE", "FILE/sub", "FILE/sub/deeper"])
def test_an_output_folder_that_cannot_be_written_is_said_before_any_input_is_read(trained, tmp_path, below):
    """Each input was read and transcribed, then failed at its write ("cannot write ...: Not a directory"), and the
    transcripts were lost with --stdout too. -o FILE was a usage error (exit 2, click's "Directory ... is a file")
    where -o FILE/sub was exit 1: both are an output folder that cannot be written, exit 1, one line naming the file."""
    (tmp_path / "afile").write_text("")
    out = tmp_path.joinpath("afile", *below)
    result = mome("transcribe", trained / "media", "--model", trained / "ckpt", "--roi", "-o", out, "--stdout", "-v",
                  cwd=trained)
    assert result.returncode == 1 and result.stdout == "", result.explain
    blocker = "it" if not below else tmp_path / "afile"
    assert result.stderr.splitlines()[-1] == (f"mome transcribe: {out}: cannot write outputs there: {blocker} is a "
                                              "file, not a folder"), result.explain
    assert "read in" not in result.stderr, result.explain  # no input was read
    assert (tmp_path / "afile").read_text() == "" and len(list(tmp_path.iterdir())) == 1


def test_a_rate_pair_in_mode_a_or_v_takes_its_half_as_evaluate_does(trained, tmp_path):
    clip = trained / "media" / "hello.mp4"
    for mode, pair, half in (("a", "16,5", "16"), ("v", "4,5", "5")):
        result = mome("transcribe", clip, "--model", trained / "ckpt", "--roi", "--mode", mode, "--rate", pair,
                      "-f", "json", "-o", tmp_path / mode, cwd=trained)
        assert result.returncode == 0, result.explain
        assert json.loads((tmp_path / mode / "hello.json").read_text())["rate"] == [int(half)]


def test_a_muted_sound_track_is_said_not_passed_over(trained, tmp_path):
    """In mode av a video whose sound is silence throughout came out empty, exit 0, with no word of why."""
    make_clip(tmp_path / "muted.mp4", "testsrc2", "anullsrc=r=16000:cl=mono", 2.0)
    result = mome("transcribe", tmp_path / "muted.mp4", "--model", trained / "ckpt", "--roi", "-f", "json", "-o",
                  tmp_path / "out", cwd=trained)
    said = "the sound is silence throughout: nothing was transcribed; --mode v reads the lips alone"
    assert result.returncode == 0 and f"warning: {tmp_path / 'muted.mp4'}: {said}" in result.stderr, result.explain
    assert json.loads((tmp_path / "out" / "muted.json").read_text())["warnings"] == [said]


def test_a_name_with_colons_is_shown_as_it_is_not_as_an_emoji(trained, tmp_path):
    """rich turned ':smile:' in a message (a file's name) into an emoji."""
    wav = tmp_path / "take:smile:1.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", trained / "media" / "hello.mp4", "-vn", wav],
                   check=True)
    result = mome("transcribe", wav, "--model", trained / "ckpt", "-o", tmp_path / "out", cwd=trained)
    assert result.returncode == 0, result.explain
    assert f"warning: {wav}: no video stream: transcribed from audio alone" in result.stderr, result.explain


def test_a_run_that_ends_before_decoding_says_nothing_of_what_it_did_not_transcribe(trained, tmp_path):
    """Face-alignment's weights missing for a video ends the run (exit 4); an audio file read before it was said to
    be "transcribed from audio alone", and never was."""
    wav = tmp_path / "voice.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", trained / "media" / "hello.mp4", "-vn", wav],
                   check=True)
    result = mome("transcribe", wav, trained / "media" / "hello.mp4", "--model", trained / "ckpt", "-o",
                  tmp_path / "out", cwd=trained, env={"TORCH_HOME": str(tmp_path / "torch")})
    assert result.returncode == 4 and "face-alignment weights" in result.stderr, result.explain
    assert "transcribed from audio alone" not in result.stderr, result.explain


def test_a_video_too_small_for_face_detection_is_one_line_and_the_batch_goes_on(trained, torch_home, tmp_path):
    """A 16 x 16 video (or a 2 x 2000 one) without --roi ended the whole batch with a traceback from face-alignment
    (or a ZeroDivisionError), exit 1, nothing written for the good files: it is read as one with no face (in mode v,
    an error: see test_preprocess)."""
    tiny, thin = tmp_path / "tiny.mp4", tmp_path / "thin.mkv"
    for path, size, codec in ((tiny, "16x16", "libx264"), (thin, "2x2000", "ffv1")):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        f"testsrc2=size={size}:rate=25:duration=0.4", "-f", "lavfi", "-i", "sine=frequency=300:d=0.4",
                        "-c:v", codec, "-shortest", path], check=True)
    silent = tmp_path / "silent.mp4"  # a video without sound: mode av fails on it
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", trained / "media" / "hello.mp4", "-an", silent],
                   check=True)
    env = {"TORCH_HOME": str(torch_home)}
    result = mome("transcribe", tiny, silent, thin, "--model", trained / "ckpt", "--device", "cpu", "-o",
                  tmp_path / "av", cwd=trained, env=env)
    assert result.returncode == 3 and "Traceback" not in result.stderr, result.explain
    lines = result.stderr.splitlines()
    assert (f"warning: {tiny}: frames of 16 x 16 pixels are too small to find a face in (face detection needs 32 "
            "pixels a side): transcribed from audio alone") in lines, result.explain
    assert (f"warning: {thin}: frames of 2 x 2000 pixels are too small to find a face in (face detection needs 32 "
            "pixels a side once the longer is scaled to 640): transcribed from audio alone") in lines, result.explain
    assert f"error: {silent}: no audio stream (mode av needs one; --mode v reads the lips alone)" in lines, \
        result.explain
    assert sorted(p.name for p in (tmp_path / "av").iterdir()) == ["thin.txt", "tiny.txt"]


def test_mode_v_reads_a_video_to_its_end_past_its_sound(trained, tmp_path):
    """A 3 s video with 1 s of sound came out of --mode v as 1 s (json duration 1.0, 2 s of lips dropped, no word);
    with 0.001 s of sound it was "too short: 0.00 s, not one video frame" (mode av: see test_preprocess)."""
    short, empty = tmp_path / "short.mp4", tmp_path / "empty.mp4"
    for path, seconds in ((short, 1), (empty, 0.001)):
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                        "testsrc2=size=96x96:rate=25:duration=3", "-f", "lavfi", "-i",
                        f"sine=frequency=300:sample_rate=16000:duration={seconds}", "-c:v", "libx264", "-pix_fmt",
                        "yuv420p", "-c:a", "aac", path], check=True)
    result = mome("transcribe", short, empty, "--model", trained / "ckpt", "--roi", "--mode", "v", "-f", "json", "-o",
                  tmp_path / "v", cwd=trained)
    assert result.returncode == 0, result.explain
    for name in ("short", "empty"):
        said = json.loads((tmp_path / "v" / f"{name}.json").read_text())
        assert said["duration"] == pytest.approx(3.0, abs=0.05) and said["segments"][-1]["end"] > 2.9, said
    assert not [ln for ln in result.stderr.splitlines() if "short.mp4" in ln or "empty.mp4" in ln], result.explain


@pytest.mark.parametrize("name", ["/dev/stdin", "-"])
def test_a_video_piped_to_dev_stdin_is_transcribed(trained, tmp_path, name):
    """`cat hello.mp4 | mome transcribe /dev/stdin` was "error: /dev/stdin: empty file (0 bytes)", exit 1; and
    `mome transcribe -` was "-: no such file", where ffmpeg's users read standard input."""
    result = subprocess.run([MOME, "transcribe", name, "--model", trained / "ckpt", "--roi", "--stdout", "-o",
                             tmp_path], input=(trained / "media" / "hello.mp4").read_bytes(), capture_output=True,
                            env={**os.environ, "MOME_HOME": str(tmp_path / "home")})
    explain = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0 and result.stdout.decode() == "/dev/stdin\thello world\n", explain
    assert (tmp_path / "stdin.txt").read_text() == "hello world\n"


def test_a_missing_input_is_one_error_and_the_others_are_transcribed(trained, tmp_path):
    missing = tmp_path / "gone.mp4"
    result = mome("transcribe", missing, trained / "media" / "hello.mp4", "--model", trained / "ckpt", "--roi",
                  "-o", tmp_path / "out", cwd=trained)  # the clip cache is on: the file is checked before hashing
    assert result.returncode == 3, result.explain
    assert [ln for ln in result.stderr.splitlines() if "gone.mp4" in ln] == [f"error: {missing}: no such file"]
    assert (tmp_path / "out" / "hello.txt").read_text() == "hello world\n"
    assert "Traceback" not in result.stderr, result.explain


def test_a_folder_without_media_beside_other_inputs_is_a_warning(trained, tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    clip = trained / "media" / "hello.mp4"
    shutil.copy(clip, tmp_path / "empty" / "sub" / "deeper.mp4")
    result = mome("transcribe", tmp_path / "empty", clip, "--model", trained / "ckpt", "--roi", "--stdout",
                  cwd=tmp_path)
    assert result.returncode == 0 and result.stdout == f"{clip}\thello world\n", result.explain
    assert f"warning: {tmp_path / 'empty'}: no media files found (use -r to search sub-folders)" in result.stderr, \
        result.explain


def test_stdout_keeps_one_line_per_input_whatever_its_name(trained, tmp_path):
    """A file may be named with a tab, a newline or an escape sequence: --stdout shows them escaped, on one line."""
    odd = tmp_path / "a\tb\nc\x1b[31m\u202ed.mp4"
    shutil.copy(trained / "media" / "hello.mp4", odd)
    result = mome("transcribe", odd, "--model", trained / "ckpt", "--roi", "--stdout", cwd=tmp_path)
    assert result.returncode == 0, result.explain
    assert result.stdout == f"{tmp_path}/a\\tb\\nc\\x1b[31m\\u202ed.mp4\thello world\n", result.explain


def test_stdout_lines_escape_what_would_split_or_refuse_them():
    from mome_cli.transcribe import stdout_line

    name = os.fsdecode(b"a\xffb\xe2\x80\xa8c\\d.mp4")  # an undecodable byte, U+2028, a backslash
    line = stdout_line(name, "one\ntwo  three\x1b")
    assert line == "a\\udcffb\\u2028c\\d.mp4\tone two three"
    assert len(line.splitlines()) == 1 and line.encode("utf-8")  # one line, and UTF-8 takes it


def test_an_output_name_taken_by_a_folder_is_an_error_not_a_skip(trained, tmp_path):
    (tmp_path / "out" / "hello.txt").mkdir(parents=True)
    clip = trained / "media" / "hello.mp4"
    result = mome("transcribe", clip, "--model", trained / "ckpt", "--roi", "-o", tmp_path / "out", cwd=trained)
    assert result.returncode == 1 and "0 ok, 0 skipped, 1 failed\n" in result.stderr, result.explain  # no "outputs in"
    assert [ln for ln in result.stderr.splitlines() if ln.startswith("error:")] == [
        f"error: {clip}: cannot write {tmp_path / 'out' / 'hello.txt'}: Is a directory"], result.explain
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["hello.txt"]  # no temporary file left
    result = mome("transcribe", clip, "--model", trained / "ckpt", "--roi", "-o", tmp_path / "out", "-f", "all",
                  "--overwrite", cwd=trained)  # the other formats are not written beside a failed input either
    assert result.returncode == 1 and f"cannot write {tmp_path / 'out' / 'hello.txt'}" in result.stderr, \
        result.explain
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["hello.txt"]


def test_an_error_naming_a_file_stays_on_one_line(trained, tmp_path):
    odd = tmp_path / "bad\nname\x1b[31m.mp4"
    odd.write_text("not a video")
    result = mome("transcribe", odd, "--model", trained / "ckpt", "--roi", "-o", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 1, result.explain
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "\x1b" not in result.stderr, result.explain
    assert errors[0].startswith(f"error: {tmp_path}/bad\\nname\\x1b[31m.mp4: not a readable media file"), \
        result.explain


def test_all_inputs_failing_exits_1_and_a_missing_model_exits_4(trained, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_text("nope")
    result = mome("transcribe", bad, "--model", trained / "ckpt", "-o", tmp_path, cwd=trained)
    assert result.returncode == 1 and f"{bad}: not a readable media file" in result.stderr, result.explain
    missing = mome("transcribe", trained / "media", "--model", "mome-1b", cwd=trained)
    assert missing.returncode == 4 and "--adapter" in missing.stderr, missing.explain
    untrained = mome("transcribe", trained / "media", "--model", trained / "ckpt", "--rate", "8,2", cwd=trained)
    assert untrained.returncode == 2 and "trained: 4,2; 4,5; 16,2; 16,5" in untrained.stderr, untrained.explain


def test_options_a_run_would_refuse_are_refused_when_every_output_exists_too(trained, tmp_path):
    """A re-run with nothing to transcribe loads no model, but used to pass mistyped options silently (exit 0)."""
    clip, out = trained / "media" / "hello.mp4", tmp_path / "out"
    first = mome("transcribe", clip, "--model", trained / "ckpt", "--roi", "-o", out, cwd=trained)
    assert first.returncode == 0, first.explain
    for flags, code, message in ((["--rate", "9,9"], 2, "rate 9,9 was not trained for mode av"),
                                 (["--model", "nosuchmodel"], 2, "neither a preset"),
                                 (["--max-segment", "50"], 2, "--max-segment 50"),
                                 (["--max-segment", "nan"], 2, "--max-segment nan: the limit must be a positive"),
                                 (["--device", "cuda"] if not torch.cuda.is_available() else ["--rate", "x"], 2,
                                  "--device cuda: no CUDA device" if not torch.cuda.is_available() else "--rate"),
                                 (["--adapter", tmp_path / "nowhere"], 2, "no such checkpoint directory"),
                                 (["--model", "mome-1b"], 4, "--adapter DIR")):
        result = mome("transcribe", clip, "--model", trained / "ckpt", "--roi", "-o", out, *flags, "--stdout",
                      cwd=trained)
        assert result.returncode == code and message in result.stderr, result.explain
        assert result.stdout == "", result.explain  # refused before the skipped input's line was printed
    other = tmp_path / "other.mp4"  # and in a run with work, before it too
    shutil.copy(clip, other)
    refused = mome("transcribe", clip, other, "--model", trained / "ckpt", "--roi", "-o", out, "--rate", "9,9",
                   "--stdout", cwd=trained)
    assert refused.returncode == 2 and refused.stdout == "" and not (out / "other.txt").exists(), refused.explain
    again = mome("transcribe", clip, "--model", trained / "ckpt", "--roi", "-o", out, "--rate", "16,5", cwd=trained)
    assert again.returncode == 0 and "0 ok, 1 skipped, 0 failed" in again.stderr, again.explain


@pytest.mark.parametrize("preset", [False, True])
def test_a_run_with_every_output_there_checks_its_options_without_importing_torch(trained, tmp_path, preset):
    """Nothing to transcribe: the options are checked against the model's config alone, which needs no torch (its
    import was most of such a run's 2 to 3 s). The tiny preset's config too (it asked the encoders their widths)."""
    clip, out, model = trained / "media" / "hello.mp4", tmp_path / "out", "tiny" if preset else str(trained / "ckpt")
    assert mome("transcribe", clip, "--model", model, "--roi", "-o", out, cwd=trained).returncode == 0
    code = (
        "import sys\n"
        "from mome_cli.cli import main\n"
        f"sys.argv = ['mome', 'transcribe', {str(clip)!r}, '--model', {model!r}, '--roi', '-o', "
        f"{str(out)!r}, '--rate', RATE, '--stdout']\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    print('EXIT', e.code, 'TORCH', 'torch' in sys.modules, file=sys.stderr)\n"
    )
    for rate, code_expected in (("16,5", 0), ("9,9", 2)):
        result = subprocess.run([sys.executable, "-c", code.replace("RATE", repr(rate))], capture_output=True,
                                text=True, cwd=trained, env={**os.environ, "MOME_HOME": str(trained / "home")},
                                timeout=120)
        assert f"EXIT {code_expected} TORCH False" in result.stderr, (result.stdout, result.stderr)
    assert result.stdout == "" and "rate 9,9 was not trained" in result.stderr, result.stderr


def test_a_model_folder_that_cannot_be_used_is_one_line_and_exit_1(trained, tmp_path):
    (tmp_path / "empty").mkdir()
    shutil.copytree(trained / "ckpt", tmp_path / "damaged")
    (tmp_path / "damaged" / "model.safetensors").write_bytes(b"\x00" * 64)
    for model, problem in ((tmp_path / "empty", "not a mome checkpoint (no config.json)"),
                           (tmp_path / "damaged", "model.safetensors: unreadable")):
        for flags in (["--model", model], ["--model", "tiny", "--adapter", model]):
            result = mome("transcribe", trained / "media" / "hello.mp4", *flags, "--roi", "-o", tmp_path / "out",
                          cwd=trained)
            lines = result.stderr.splitlines()
            assert result.returncode == 1 and len(lines) == 1, result.explain
            assert lines[0].startswith(f"mome transcribe: {model}") and problem in lines[0], result.explain
    assert not (tmp_path / "out").exists()


def test_a_clip_cache_that_cannot_be_written_is_a_warning(trained, tmp_path):
    (tmp_path / "file").write_text("a file where the cache folder would be")
    result = mome("transcribe", trained / "media" / "hello.mp4", "--model", trained / "ckpt", "--roi", "--stdout",
                  "-o", tmp_path / "out", cwd=trained, env={"MOME_HOME": str(tmp_path / "file" / "home")})
    assert result.returncode == 0 and result.stdout.strip().endswith("\thello world"), result.explain
    assert re.search(r"^warning: .*hello\.mp4: cannot write the clip cache in .*: going on without it", result.stderr,
                     re.M), result.explain


def test_audio_alone_in_mode_av_takes_the_audio_half_of_the_rate(trained, tmp_path):
    wav = tmp_path / "hello.wav"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", trained / "media" / "hello.mp4", "-vn", wav],
                   check=True)
    result = mome("transcribe", wav, "--model", trained / "ckpt", "--rate", "16,5", "-f", "json", "-o", tmp_path,
                  cwd=trained)
    assert result.returncode == 0 and "no video stream" in result.stderr, result.explain
    document = json.loads((tmp_path / "hello.json").read_text())
    assert document["mode"] == "a" and document["rate"] == [16], document


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="no /dev/full")
def test_stdout_that_cannot_be_written_is_one_line_and_exit_1(trained, tmp_path):
    """--stdout onto a full disk: a traceback before."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([MOME, "transcribe", trained / "media" / "hello.mp4", "--model", trained / "ckpt",
                                 "--roi", "--stdout"], cwd=tmp_path, stdout=full, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "MOME_HOME": str(trained / "home")})
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == ["mome transcribe: cannot write to stdout: No space left on device"]


def test_stdout_alone_prints_instead_of_writing_files(trained, tmp_path):
    shutil.copy(trained / "media" / "hello.mp4", tmp_path)
    alone = mome("transcribe", "hello.mp4", "--model", trained / "ckpt", "--roi", "--stdout", cwd=tmp_path)
    assert alone.returncode == 0 and alone.stdout == "hello.mp4\thello world\n", alone.explain
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hello.mp4", "home"], alone.explain  # no hello.txt
    assert alone.stderr.strip().endswith("1 ok, 0 skipped, 0 failed"), alone.explain
    again = mome("transcribe", "hello.mp4", "--model", trained / "ckpt", "--roi", "--stdout", cwd=tmp_path)
    assert again.stdout == alone.stdout and "1 ok" in again.stderr, again.explain  # nothing to skip: done again
    both = mome("transcribe", "hello.mp4", "--model", trained / "ckpt", "--roi", "--stdout", "-f", "json",
                cwd=tmp_path)
    assert both.stdout == alone.stdout and json.loads((tmp_path / "hello.json").read_text())["text"] == "hello world"


def test_quiet_prints_only_results_and_errors(trained, tmp_path):
    result = mome("-q", "transcribe", trained / "media" / "hello.mp4", "--model", trained / "ckpt", "--roi",
                  "--stdout", "-o", tmp_path, cwd=trained)
    assert result.returncode == 0 and result.stderr == "", result.explain
    assert result.stdout.strip().endswith("\thello world")


def test_verbose_tells_the_model_each_files_times_and_with_vv_its_segments(trained, tmp_path):
    args = ["transcribe", trained / "media" / "hello.mp4", "--model", trained / "ckpt", "--roi", "--overwrite",
            "-o", tmp_path]
    once = mome("-v", *args, cwd=trained)
    assert once.returncode == 0, once.explain
    assert f"model {trained / 'ckpt'}: LLM " in once.stderr and "on cpu, float32" in once.stderr, once.explain
    assert "hello.mp4: mode av, rate 4,2, 1 segment" in once.stderr and "1 file transcribed in" in once.stderr
    assert "hello world" not in once.stderr, once.explain  # the text only with -vv
    twice = mome("-vv", *args, cwd=trained)
    assert re.search(r"^  \[0\.00 -> \d\.\d\d\] hello world$", twice.stderr, re.M), twice.explain
    plain = mome(*args, cwd=trained)
    assert "LLM " not in plain.stderr and "transcribed" not in plain.stderr, plain.explain
    after = mome(*args, "-v", "-v", cwd=trained)  # after the subcommand, as whisper users type them
    timeless = lambda text: re.sub(r"\d+\.\d+ s\b", "T s", text)  # noqa: E731 (times differ from run to run)
    assert timeless(after.stderr) == timeless(twice.stderr), after.explain
    split = mome("-v", *args, "-v", cwd=trained)  # counted together
    assert re.search(r"^  \[0\.00 -> \d\.\d\d\] hello world$", split.stderr, re.M), split.explain
    quiet = mome(*args, "--stdout", "-q", cwd=trained)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.explain


def make_paused_clip(path: Path, seconds: float, pauses: list[tuple[float, float]]) -> Path:
    """A tone of `seconds` silenced during each (start, end) pause, with a test pattern as video."""
    quiet = "+".join(f"between(t,{a},{b})" for a, b in pauses)
    burst = f"sine=frequency=400:duration={seconds},volume=enable='{quiet}':volume=0"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-f", "lavfi", "-i",
                    f"testsrc2=size=96x96:rate=25:duration={seconds}", "-f", "lavfi", "-i", burst, "-c:v", "libx264",
                    "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)], check=True)
    return path


def make_long_clip(path: Path) -> Path:
    """45 s of tone with pauses at 14-14.8 s and 31-31.8 s."""
    return make_paused_clip(path, 45, [(14, 14.8), (31, 31.8)])


def test_every_pause_ends_a_segment_unless_packed(tmp_path):
    """8 s of tone with two short pauses: three segments cut inside them, or one with --pack (it fits 20 s)."""
    path = make_paused_clip(tmp_path / "paused.mp4", 8, [(2, 2.4), (5, 5.3)])
    result = mome("transcribe", path, "--model", "tiny", "--roi", "-f", "json", "-o", tmp_path / "a", cwd=tmp_path)
    assert result.returncode == 0, result.explain
    segments = json.loads((tmp_path / "a" / "paused.json").read_text())["segments"]
    assert len(segments) == 3 and 2 < segments[1]["start"] < 2.4 and 5 < segments[2]["start"] < 5.3, segments
    packed = mome("transcribe", path, "--model", "tiny", "--roi", "-f", "json", "-o", tmp_path / "b", "--pack",
                  cwd=tmp_path)
    assert packed.returncode == 0, packed.explain
    segments = json.loads((tmp_path / "b" / "paused.json").read_text())["segments"]
    assert [(s["start"], s["end"]) for s in segments] == [(0, pytest.approx(8, abs=0.05))], segments


def test_long_input_comes_out_as_timestamped_segments(tmp_path):
    """45 s of tone bursts with pauses: segments of at most 20 s, cut in pauses, timestamps increasing."""
    path = make_long_clip(tmp_path / "long.mp4")
    result = mome("transcribe", path, "--model", "tiny", "--roi", "-f", "json", "-f", "srt", "-o", tmp_path,
                  cwd=tmp_path)
    assert result.returncode == 0, result.explain
    segments = json.loads((tmp_path / "long.json").read_text())["segments"]
    starts = [s["start"] for s in segments]
    assert starts[0] == 0 and all(a["end"] <= b["start"] for a, b in zip(segments, segments[1:]))
    assert len(segments) == 3 and all(s["end"] - s["start"] <= 20 for s in segments), segments
    assert 14 < starts[1] < 14.8 and 31 < starts[2] < 31.8  # cut inside the pauses
    assert 14 < segments[0]["end"] < 14.8 and 31 < segments[1]["end"] < 31.8  # what is left of them is no segment
    assert segments[-1]["end"] == pytest.approx(45, abs=0.05)
    cues = re.findall(r"(\d\d):(\d\d):(\d\d),(\d{3}) --> ", (tmp_path / "long.srt").read_text())
    seconds = [int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1000 for h, m, s, ms in cues]
    assert seconds == sorted(seconds) and len(seconds) >= 1


def test_max_segment_cuts_shorter_segments_and_refuses_more_than_the_model_takes(tmp_path):
    path = make_long_clip(tmp_path / "long.mp4")
    result = mome("transcribe", path, "--model", "tiny", "--roi", "-f", "json", "-o", tmp_path, "--max-segment", "16",
                  cwd=tmp_path)
    assert result.returncode == 0, result.explain
    segments = json.loads((tmp_path / "long.json").read_text())["segments"]
    assert all(s["end"] - s["start"] <= 16 for s in segments), segments
    assert 14 < segments[1]["start"] < 14.8  # the first cut still in the pause
    assert segments[2]["start"] <= 14.8 + 16 < 31  # the second pause is out of reach: cut before it (20 s: in it)
    assert segments[-1]["end"] == pytest.approx(45, abs=0.05)
    too_long = mome("transcribe", path, "--model", "tiny", "--roi", "-o", tmp_path / "x", "--max-segment", "25",
                    cwd=tmp_path)
    assert too_long.returncode == 2 and "at most 20 s" in too_long.stderr, too_long.explain
    assert not (tmp_path / "x").exists()


def test_a_folder_named_like_a_preset_loads_and_says_so(trained, tmp_path):
    shutil.copytree(trained / "ckpt", tmp_path / "tiny")
    result = mome("transcribe", trained / "media" / "hello.mp4", "--model", "tiny", "--roi", "--stdout", "-o",
                  tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.strip().endswith("\thello world"), result.explain  # the folder
    assert "loading the checkpoint folder ./tiny, not the tiny preset" in result.stderr, result.explain
    clear = mome("transcribe", trained / "media" / "hello.mp4", "--model", "./tiny", "--roi", "--stdout", "-o",
                 tmp_path / "out2", cwd=tmp_path)
    assert clear.returncode == 0 and "not the tiny preset" not in clear.stderr, clear.explain


def test_a_mode_the_model_was_not_trained_in_is_read_with_a_warning(trained, tmp_path):
    warning = ("warning: this model was trained for mode av, not a: expect worse transcripts in mode a than in "
               "mode av")
    asked = mome("transcribe", trained / "media", "--model", trained / "ckpt", "--roi", "--mode", "a", "--stdout",
                 cwd=tmp_path)
    assert asked.returncode == 0 and len(asked.stdout.splitlines()) == 2, asked.explain
    assert asked.stderr.count(warning) == 1, asked.explain  # once for the run, not per file
    trained_mode = mome("transcribe", trained / "media", "--model", trained / "ckpt", "--roi", "--stdout",
                        cwd=tmp_path)
    assert trained_mode.returncode == 0 and "warning" not in trained_mode.stderr, trained_mode.explain


def test_a_model_trained_for_audio_alone_refuses_mode_av_and_names_the_mode(trained, tmp_path):
    """transcribe's default mode is av: a checkpoint trained with mode = "a" has no video encoder (a traceback
    before); it says which --mode to pass, and with it transcribes."""
    import dataclasses

    from mome_cli.recognizer import build_recognizer, tiny_config

    recognizer = build_recognizer(dataclasses.replace(tiny_config(), modes=["a"]), tmp_path / "home", "cpu")
    save_checkpoint(recognizer.model, tmp_path / "audio-only")
    clip = trained / "media" / "hello.mp4"
    refused = mome("transcribe", clip, "--model", tmp_path / "audio-only", "--roi", "-o", tmp_path / "a", cwd=tmp_path)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, refused.explain
    assert "trained for mode a and has no video encoder; pass --mode a" in refused.stderr, refused.explain
    assert mome("transcribe", clip, "--model", tmp_path / "audio-only", "--mode", "a", "--roi", "-o", tmp_path / "b",
                cwd=tmp_path).returncode == 0
    (tmp_path / "m.jsonl").write_text(json.dumps({"id": "hello", "video": str(clip), "text": "hello world"}) + "\n")
    scored = mome("evaluate", "--dataset", tmp_path / "m.jsonl", "--model", tmp_path / "audio-only", "--roi", "-o",
                  tmp_path / "e", cwd=tmp_path)
    assert scored.returncode == 2 and "pass --mode a" in scored.stderr, scored.explain


def test_ctrl_c_while_faces_are_detected_exits_130_soon_and_leaves_no_cache_file(trained, torch_home, tmp_path):
    """Ctrl-C while the reading thread runs face detection on a long video (face-alignment on the CPU, minutes of
    it): the read stops at its next batch, the process exits 130 with `interrupted` (not an abort from a thread left
    inside torch) within seconds, and the clip cache holds nothing, not even a hidden temporary file."""
    video = tmp_path / "long.mp4"
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i",
                    "testsrc2=size=320x240:rate=25:duration=120", "-f", "lavfi", "-i", "sine=frequency=300:duration=120",
                    "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest",
                    str(video)], check=True)
    home = tmp_path / "home"
    shutil.copytree(torch_home, home / "torch")  # face-alignment's networks, random, where `mome download` puts them
    process = subprocess.Popen([MOME, "-v", "transcribe", str(video), "--model", str(trained / "ckpt"),
                                "--device", "cpu", "-o", str(tmp_path / "out")], stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "MOME_HOME": str(home)})
    said = []
    for line in process.stderr:  # the model loads while the video is read
        said.append(line)
        if "loaded in" in line:
            break
    time.sleep(3)  # well into face detection: 3000 frames, 20 to 100 ms each
    assert process.poll() is None, "".join(said)
    process.send_signal(signal.SIGINT)
    started = time.monotonic()
    said.append(process.stderr.read())
    process.wait(timeout=60)
    waited = time.monotonic() - started
    assert process.returncode == 130 and said[-1].strip().endswith("interrupted"), "".join(said)
    print(f"exited {waited:.2f} s after SIGINT")
    assert waited < 10, waited  # a batch of detection (about a second), not the rest of the video
    assert [p for p in home.rglob("*") if p.is_file() and home / "torch" not in p.parents] == []
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
