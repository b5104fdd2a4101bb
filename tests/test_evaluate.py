"""`mome evaluate`: the rate x SNR grid end to end through the installed executable, babble noise, exit codes."""

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from mome_cli.checkpoint import save_checkpoint
from mome_cli.cli import cli
from mome_cli.data import Utterance
from mome_cli.decoding import DecodingOptions, decode
from mome_cli.evaluate import CLEAN, babble, parse_snrs
from mome_cli.noise import LoopedNoise, mix_at_snr
from mome_cli.preprocess import Preprocessor, PreprocessOptions
from mome_cli.recognizer import load_recognizer
from mome_cli.scoring import normalise

needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="ffmpeg is not installed")

MOME = str(Path(sys.executable).parent / "mome")
# id -> (video source, audio source, seconds, transcript); distinct content so that tiny encoders tell them apart
CORPUS = {
    "hello": ("testsrc2", "sine=frequency=300", 1.2, "Hello, World!"),
    "morning": ("rgbtestsrc", "anoisesrc=color=pink:amplitude=0.3:seed=7", 2.0, "Good morning: it’s 5 o'clock."),
    "fox": ("smptebars", "sine=frequency=700", 1.6, "THE quick-brown fox"),
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """The corpus twice - a JSONL of mp4s with sound, and the auto_avsr CSV layout (silent mouth-crop mp4 with a
    .wav beside it) found as `lrs3` under a data root - and a tiny checkpoint trained to transcribe it."""
    root = tmp_path_factory.mktemp("evaluate")
    (root / "jsonl").mkdir()
    lrs3 = root / "data" / "lrs3"
    (lrs3 / "test" / "spk").mkdir(parents=True)
    rows = []
    with open(root / "jsonl" / "test.jsonl", "w", encoding="utf-8") as manifest:
        for n, (name, (video, audio, seconds, text)) in enumerate(CORPUS.items()):
            mp4 = root / "jsonl" / f"{name}.mp4"
            ffmpeg("-f", "lavfi", "-i", f"{video}=size=96x96:rate=25:duration={seconds}",
                   "-f", "lavfi", "-i", f"{audio}:duration={seconds}",
                   "-c:v", "libx264", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", mp4)
            manifest.write(json.dumps({"id": name, "video": mp4.name, "text": text}, ensure_ascii=False) + "\n")
            crop = lrs3 / "test" / "spk" / f"{n:05d}.mp4"
            ffmpeg("-i", mp4, "-an", "-c:v", "copy", crop)
            ffmpeg("-i", mp4, "-vn", "-ac", "1", "-ar", "16000", crop.with_suffix(".wav"))
            rows.append(["lrs3", f"test/spk/{n:05d}.mp4", int(seconds * 25), "1 2 3", text])
    with open(lrs3 / "test.csv", "w", encoding="utf-8", newline="") as f:
        csv.writer(f).writerows(rows)

    # Train on both layouts as evaluate reads them (the CSV's audio comes from its own .wav), until greedy decoding
    # gives every transcript exactly at the two pairs the tests decode: a converged model, however threads round.
    jsonl = [Preprocessor(PreprocessOptions(roi=True))(root / "jsonl" / f"{name}.mp4") for name in CORPUS]
    crops = [lrs3 / "test" / "spk" / f"{n:05d}.mp4" for n in range(len(CORPUS))]
    audio = [c.audio for c in jsonl] + [Preprocessor(PreprocessOptions(mode="a"))(p.with_suffix(".wav")).audio
                                        for p in crops]
    rois = [c.rois for c in jsonl] + [Preprocessor(PreprocessOptions(mode="v", roi=True))(p).rois for p in crops]
    texts = [text for *_, text in CORPUS.values()] * 2
    torch.manual_seed(0)
    recognizer = load_recognizer("tiny")
    model = recognizer.model
    features = recognizer.features(audio, rois)
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for step in range(1, 601):
        model.train()
        optimiser.zero_grad()
        model(features, texts, rates=[(4, 2), (16, 5)]).loss.backward()
        optimiser.step()
        if step % 40 == 0:
            model.eval()
            if all([r.text for r in decode(model, features, rate, "av", DecodingOptions(max_new_tokens=48))] == texts
                   for rate in [(4, 2), (16, 5)]):
                break
    else:
        raise AssertionError("the tiny model did not learn the corpus in 600 steps")
    model.eval()
    save_checkpoint(model, root / "ckpt")
    return root


def mome(*args, cwd: Path):
    """The installed executable in a fresh process."""
    result = subprocess.run([MOME, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                            env={**os.environ, "MOME_HOME": str(cwd / "home")})
    result.explain = f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result


def evaluate(*args, home: Path):
    """`mome evaluate ARGS` in this process (no interpreter start-up): for exit codes and messages."""
    result = CliRunner().invoke(cli, ["evaluate", *map(str, args)], prog_name="mome", env={"MOME_HOME": str(home)})
    result.returncode = result.exit_code
    extra = f"\nexception: {result.exception!r}" if result.exception and result.exit_code not in (0, 1, 2, 3, 4) else ""
    result.explain = f"exit {result.exit_code}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}{extra}"
    return result


def ref_words() -> int:
    return sum(len(normalise(text).split()) for *_, text in CORPUS.values())


# ---- end to end ------------------------------------------------------------------------------------------------------


@needs_ffmpeg
def test_tiny_model_fills_the_rate_by_snr_grid(corpus, tmp_path):
    out = tmp_path / "eval"
    result = mome("evaluate", "--dataset", corpus / "jsonl" / "test.jsonl", "--model", "tiny", "--roi",
                  "--rates", "4,2;16,5", "--snr", "clean,0,5", "--max-segment", "19.5", "-o", out, cwd=tmp_path)
    assert result.returncode == 0, result.explain
    lines = result.stdout.splitlines()
    assert lines[1].split() == ["rate", "A,V", "clean", "0", "dB", "5", "dB"], result.explain
    assert [line.split()[0] for line in lines[2:]] == ["4,2", "16,5"], result.explain
    assert all(len(line.split()) == 4 for line in lines[2:]), result.explain
    assert "random and untrained" in result.stderr, result.explain

    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert (report["model"], report["mode"], report["seed"], report["utterances"], report["failed"]) == \
        ("tiny", "av", 0, 3, [])
    assert report["split"] is None  # a manifest is read as it is: no split picked (it said "test")
    assert report["noise"]["source"] == "babble" and report["noise"]["talkers"] == 2  # a corpus of 3: the other 2
    assert "apostrophe" in report["normalisation"]
    assert report["max_segment_seconds"] == 19.5 and report["segments"] == "every pause"  # a JSONL: as transcribe
    assert report["max_new_tokens"] == "32 a second of the segment" and report["audio_only"] == []
    cells = {(tuple(c["rate"]), c["snr"]): c for c in report["results"]}
    assert all(c["segments"] >= 3 and 0 <= c["segments_cut_short"] <= c["segments"] for c in cells.values())
    if any(c["segments_cut_short"] for c in cells.values()):  # a random model rarely stops: it is said
        assert "reached their token limit (32 a second) without ending" in result.stderr, result.explain
    assert set(cells) == {(r, s) for r in [(4, 2), (16, 5)] for s in [CLEAN, 0, 5]}
    for cell in cells.values():
        assert cell["ref_words"] == ref_words() == 11 and cell["utterances"] == 3
        assert cell["hits"] + cell["substitutions"] + cell["deletions"] == cell["ref_words"]
        errors = cell["substitutions"] + cell["deletions"] + cell["insertions"]
        assert cell["wer"] == pytest.approx(errors / cell["ref_words"])
        assert cell["audio_seconds"] == pytest.approx(sum(s for _, _, s, _ in CORPUS.values()), abs=0.1)
        assert cell["wall_seconds"] > 0

    hypotheses = [json.loads(line) for line in (out / "hypotheses.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(hypotheses) == 3 * 2 * 3
    assert {(h["id"], tuple(h["rate"]), h["snr"]) for h in hypotheses} == \
        {(i, r, s) for i in CORPUS for r in [(4, 2), (16, 5)] for s in [CLEAN, 0, 5]}
    assert all(h["ref"] == CORPUS[h["id"]][3] and isinstance(h["hyp"], str) for h in hypotheses)

    png = out / "wer.png"
    assert png.read_bytes()[:8] == PNG_SIGNATURE
    import matplotlib.image

    height, width, _ = matplotlib.image.imread(png).shape
    assert width > 800 and height > 500


@needs_ffmpeg
def test_trained_model_on_the_auto_avsr_layout_is_word_perfect_when_clean(corpus, tmp_path):
    """Named dataset under --data-root, CSV with .wav beside silent mouth crops (so --roi is on by itself)."""
    out = tmp_path / "eval"
    result = mome("evaluate", "--dataset", "lrs3", "--data-root", corpus / "data", "--model", corpus / "ckpt",
                  "--rates", "4,2;16,5", "--snr", "clean,10", "-o", out, cwd=tmp_path)
    assert result.returncode == 0, result.explain
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    assert report["dataset"] == "lrs3" and report["manifest"].endswith("test.csv")
    assert report["segments"] == "packed"  # LRS2/LRS3 utterances are decoded whole, as the paper decodes them
    for cell in report["results"]:
        if cell["snr"] == CLEAN:
            assert cell["wer"] == 0 and cell["hits"] == ref_words(), result.explain
    hypotheses = [json.loads(line) for line in (out / "hypotheses.jsonl").read_text(encoding="utf-8").splitlines()]
    clean = [h for h in hypotheses if h["snr"] == CLEAN]
    assert len(clean) == 6 and all(h["hyp"] == h["ref"] for h in clean), result.explain  # each on its own id
    assert [ln.split()[:2] for ln in result.stdout.splitlines()[2:]] == [["4,2", "0.00"], ["16,5", "0.00"]]


LABELS = "lrs3_test_transcript_lengths_seg24s.csv"  # the name auto_avsr's preparation gives LRS3's test labels


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """LRS3 as auto_avsr's preparation leaves it under its root: labels/LABELS (dataset,rel_path,frames,token_ids,
    no text), silent mouth crops with a .wav beside each in lrs3/lrs3_video_seg24s/, transcripts in
    lrs3/lrs3_text_seg24s/. Short clips: these tests are about reading the dataset, scored by --model tiny."""
    root = tmp_path_factory.mktemp("prepared")
    (root / "labels").mkdir()
    rows = []
    for n, (video, audio, _, text) in enumerate(CORPUS.values()):
        crop = root / "lrs3" / "lrs3_video_seg24s" / "test" / "spk" / f"{n:05d}.mp4"
        transcript = root / "lrs3" / "lrs3_text_seg24s" / "test" / "spk" / f"{n:05d}.txt"
        for folder in (crop.parent, transcript.parent):
            folder.mkdir(parents=True, exist_ok=True)
        ffmpeg("-f", "lavfi", "-i", f"{video}=size=96x96:rate=25:duration=0.6", "-c:v", "libx264", "-pix_fmt",
               "yuv420p", crop)
        ffmpeg("-f", "lavfi", "-i", f"{audio}:duration=0.6", "-ac", "1", "-ar", "16000", crop.with_suffix(".wav"))
        transcript.write_text(text.upper() + "\n", encoding="utf-8")
        rows.append(f"lrs3,lrs3_video_seg24s/test/spk/{n:05d}.mp4,15,1 2 3\n")
    (root / "labels" / LABELS).write_text("".join(rows))
    return root


@needs_ffmpeg
def test_auto_avsr_labels_are_read_where_its_preparation_writes_them(prepared, tmp_path):
    """The CSV in <root>/labels/, the clips in <root>/lrs3/: it was refused for want of <root>/labels/lrs3/..."""
    result = mome("evaluate", "--dataset", Path("labels") / LABELS, "--model", "tiny", "--rates", "4,2", "-o",
                  tmp_path / "out", cwd=prepared)
    assert result.returncode == 0, result.explain
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert (report["utterances"], report["evaluated"], report["failed"]) == (3, 3, []), result.explain
    refs = {h["id"]: h["ref"] for h in map(json.loads, (tmp_path / "out" / "hypotheses.jsonl").open())}
    assert refs == {f"lrs3_video_seg24s/test/spk/{n:05d}": text.upper()
                    for n, (*_, text) in enumerate(CORPUS.values())}


@needs_ffmpeg
def test_a_named_dataset_s_data_root_may_be_auto_avsr_s_root(prepared, tmp_path):
    """--dataset lrs3 --data-root <auto_avsr's --root-dir>: its labels/ CSV, the clips in lrs3/ beside it."""
    result = evaluate("--dataset", "lrs3", "--data-root", prepared, "--model", "tiny", "--rates", "4,2", "-o",
                      tmp_path / "out", home=tmp_path / "home")
    assert result.returncode == 0, result.explain
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert (report["manifest"], report["split"]) == (str(prepared / "labels" / LABELS), "test"), result.explain
    assert (report["utterances"], report["evaluated"], report["segments"]) == (3, 3, "packed"), result.explain


@needs_ffmpeg
def test_a_folder_with_the_split_s_manifest_is_evaluated_through_it(prepared, tmp_path):
    """A folder holding test.jsonl (as a synth corpus does) given as --dataset: its manifest for --split test, not
    the clips with a transcript beside them found in it; another split: exit 4 naming the manifests it holds."""
    clips = prepared / "lrs3" / "lrs3_video_seg24s" / "test" / "spk"
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, n in (("listed", 0), ("loose", 1)):
        shutil.copy(clips / f"{n:05d}.wav", folder / f"{name}.wav")
    (folder / "loose.txt").write_text("a clip found by searching the folder")
    (folder / "test.jsonl").write_text('{"id": "listed", "audio": "listed.wav", "text": "the manifest\'s own"}\n')
    said = f"warning: --split valid is not used: it picks a split of lrs2 or lrs3, or a folder's valid.jsonl or " \
        f"valid.csv; {folder} is read as it is"
    for split, ids in (("test", ["listed"]), ("valid", None), ("valid", ["loose"])):
        if split == "valid" and ids:  # a folder with no split's manifest: the folder, searched, and --split said unused
            (folder / "test.jsonl").unlink()
        out = tmp_path / f"{split}-{bool(ids)}"
        result = evaluate("--dataset", folder, "--split", split, "--model", "tiny", "--mode", "a", "--rates", "4",
                          "-o", out, home=tmp_path / "home")
        if ids is None:  # a corpus folder without the split asked (a mistyped --split): said, not searched for media
            assert result.returncode == 4 and result.stderr == (
                f"mome evaluate: {folder}: no valid.jsonl or valid.csv in it (it holds test.jsonl): give --split one "
                "of those, or the manifest itself\n"), result.explain
            continue
        assert result.returncode == 0, result.explain
        report = json.loads((out / "report.json").read_text(encoding="utf-8"))
        hypotheses = [json.loads(line) for line in (out / "hypotheses.jsonl").read_text(encoding="utf-8").splitlines()]
        assert [h["id"] for h in hypotheses] == ids, result.explain
        assert (report["manifest"], report["split"]) == ((str(folder / "test.jsonl"), "test") if split == "test" else
                                                         (str(folder), None)), result.explain
        assert (said in result.stderr.splitlines()) == (split == "valid"), result.explain


@needs_ffmpeg
def test_a_noise_file_shorter_than_an_utterance_is_said_to_be_repeated(prepared, tmp_path):
    """A 0.1 s --noise is looped over each 0.6 s utterance, a hum more than a noise: it was used without a word."""
    for seconds in (0.1, 1):
        ffmpeg("-f", "lavfi", "-i", f"anoisesrc=seed=3:d={seconds}", "-ar", "16000", tmp_path / f"{seconds}.wav")
        result = evaluate("--dataset", prepared / "labels" / LABELS, "--model", "tiny", "--mode", "a", "--rates", "4",
                          "--snr", "0", "--noise", tmp_path / f"{seconds}.wav", "-o", tmp_path / f"out{seconds}",
                          home=tmp_path / "home")
        assert result.returncode == 0, result.explain
        said = [line for line in result.stderr.splitlines() if "--noise" in line]
        assert said == ([f"warning: --noise {tmp_path / '0.1.wav'} lasts 0.10 s, less than the 0.60 s of the longest "
                         "utterance: it is repeated end to end to cover each one"] if seconds < 1 else []), \
            result.explain


@needs_ffmpeg
def test_a_report_already_in_the_output_folder_is_replaced_and_said_to_be(prepared, tmp_path):
    """-o is ./mome-eval unless given: a second evaluation there replaced the first's report without a word."""
    out = tmp_path / "mome-eval"
    said = []
    for rate in ("4", "16"):
        result = evaluate("--dataset", prepared / "labels" / LABELS, "--model", "tiny", "--mode", "a", "--rates", rate,
                          "-o", out, home=tmp_path / "home")
        assert result.returncode == 0, result.explain
        assert json.loads((out / "report.json").read_text(encoding="utf-8"))["rates"] == [[int(rate)]]
        said.append(result.stderr.splitlines()[-1])
    assert said == [f"3 evaluated, 0 failed (report in {out})",
                    f"3 evaluated, 0 failed (report in {out}, replacing an earlier run)"]


@needs_ffmpeg
def test_a_transcript_that_is_not_utf8_is_named_with_its_line(prepared, tmp_path):
    """The .txt that is bad, not the CSV that led to it (it said "test.csv: not UTF-8 text (byte 3 of a line)"); its
    utterance's error, the rest scored."""
    shutil.copytree(prepared / "lrs3", tmp_path / "data" / "lrs3")
    shutil.copy(prepared / "labels" / LABELS, tmp_path / "data" / "lrs3" / "test.csv")  # where --data-root looks
    bad = tmp_path / "data" / "lrs3" / "lrs3_text_seg24s" / "test" / "spk" / "00001.txt"
    bad.write_bytes(b"CAF\xc9\n")  # Latin-1
    result = mome("evaluate", "--dataset", "lrs3", "--data-root", tmp_path / "data", "--model", "tiny", "--rates",
                  "4,2", "-o", tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 3, result.explain
    assert f"error: lrs3_video_seg24s/test/spk/00001: {bad}:1: not UTF-8 text (byte 4 of the line is 0xc9); save it " \
        "as UTF-8 (skipped)" in result.stderr.splitlines(), result.explain


@needs_ffmpeg
def test_a_missing_transcript_is_its_utterance_s_error_and_the_rest_are_scored(prepared, tmp_path):
    """As a missing video is: one error line, exit 3, the report. One missing .txt stopped the whole evaluation."""
    shutil.copytree(prepared, tmp_path / "root")
    gone = tmp_path / "root" / "lrs3" / "lrs3_text_seg24s" / "test" / "spk" / "00002.txt"
    gone.unlink()
    result = mome("evaluate", "--dataset", Path("root") / "labels" / LABELS, "--model", "tiny", "--rates", "4,2", "-o",
                  tmp_path / "out", cwd=tmp_path)
    assert result.returncode == 3, result.explain
    said = [line for line in result.stderr.splitlines() if "00002" in line]
    assert said == [f"error: lrs3_video_seg24s/test/spk/00002: {Path('root') / 'labels' / LABELS}:3: no text field and "
                    f"no transcript at {gone.relative_to(tmp_path)} or root/lrs3/lrs3_video_seg24s/test/spk/00002.txt "
                    "(skipped)"], result.explain
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert (report["utterances"], report["evaluated"], [f["id"] for f in report["failed"]]) == (
        3, 2, ["lrs3_video_seg24s/test/spk/00002"]), result.explain
    assert report["results"][0]["ref_words"] == sum(len(normalise(text).split()) for *_, text in
                                                    list(CORPUS.values())[:2])  # hello and morning, not fox


@needs_ffmpeg
def test_text_or_names_that_utf8_cannot_write_are_refused_before_anything_is_decoded(prepared, tmp_path):
    """A lone surrogate (a JSON \\ud800 escape, a Latin-1 file name) cannot be written to hypotheses.jsonl: the run
    decoded everything, printed its table, then failed writing its outputs (exit 1, an empty folder)."""
    crops = sorted((prepared / "lrs3" / "lrs3_video_seg24s" / "test" / "spk").glob("*.mp4"))
    rows = [{"id": c.stem, "video": str(c), "audio": str(c.with_suffix(".wav")), "text": "a tone"} for c in crops]
    rows[1]["text"] = "bad \ud800"
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = mome("evaluate", "--dataset", "m.jsonl", "--model", "tiny", "--roi", "--rates", "4,2", "-o", "out",
                  cwd=tmp_path)
    assert (result.returncode, result.stdout) == (1, ""), result.explain
    assert result.stderr.splitlines() == ['mome evaluate: m.jsonl:2: "text" holds \\ud800, a lone surrogate (half of a '
                                          'UTF-16 pair), which is no character'], result.explain
    assert not (tmp_path / "out").exists()

    (tmp_path / "clips").mkdir()
    for name in ("good", os.fsdecode(b"caf\xe9")):  # as Python reads a Latin-1 name: caf\udce9
        for suffix in (".mp4", ".wav"):
            shutil.copy(crops[0].with_suffix(suffix), tmp_path / "clips" / (name + suffix))
        (tmp_path / "clips" / (name + ".txt")).write_text("a tone")
    result = mome("evaluate", "--dataset", "clips", "--model", "tiny", "--roi", "--rates", "4,2", "-o", "out",
                  cwd=tmp_path)
    assert result.returncode == 3, result.explain
    assert "error: caf\\udce9: clips/caf\\udce9.mp4: the file name is not UTF-8 text; rename it (skipped)" in \
        result.stderr.splitlines(), result.explain
    report = json.loads((tmp_path / "out" / "report.json").read_text(encoding="utf-8"))
    assert (report["evaluated"], [f["id"] for f in report["failed"]]) == (1, ["caf\\udce9"]), result.explain


@needs_ffmpeg
def test_lips_cut_alike_at_every_snr_are_encoded_once(corpus, tmp_path, monkeypatch):
    """LRS3 utterances are decoded whole at every SNR: the noise changes the audio, not the lips, whose features are
    encoded once per batch; each SNR's audio is encoded afresh."""
    from mome_cli import evaluate as library
    from mome_cli.recognizer import Recognizer

    calls, encode = [], Recognizer.features

    def spy(self, audio, rois):
        calls.append(("audio" if audio is not None else "") + ("video" if rois is not None else ""))
        return encode(self, audio, rois)

    monkeypatch.setattr(Recognizer, "features", spy)
    job = library.EvaluateJob(dataset="lrs3", data_root=corpus / "data", output_dir=tmp_path,
                              model=str(corpus / "ckpt"), rates=((4, 2),), snrs=(CLEAN, 0, 10), batch_size=8)
    evaluation = library.run(job)
    assert evaluation.pack and calls.count("video") == 1 and calls.count("audio") == 3, calls
    assert evaluation.cell((4, 2), CLEAN).errors.wer == 0


@needs_ffmpeg
def test_verbose_names_the_model_and_scores_each_cell_as_the_table_does(corpus, tmp_path):
    result = mome("-v", "evaluate", "--dataset", "lrs3", "--data-root", corpus / "data", "--model", corpus / "ckpt",
                  "--rates", "4,2;16,5", "--snr", "clean,10", "-o", tmp_path / "eval", cwd=tmp_path)
    assert result.returncode == 0, result.explain
    assert f"model {corpus / 'ckpt'}: LLM " in result.stderr and "rates 4,2; 4,5; 16,2; 16,5" in result.stderr
    assert "3 of 3 utterances read" in result.stderr, result.explain
    report = json.loads((tmp_path / "eval" / "report.json").read_text(encoding="utf-8"))
    for cell in report["results"]:  # each cell's line carries the WER the report and table give
        snr = cell["snr"] if cell["snr"] == CLEAN else f"{cell['snr']:g} dB"
        line = f"rate {','.join(map(str, cell['rate']))}, {snr}: WER {100 * cell['wer']:.2f}% in "
        assert line in result.stderr, result.explain
    quiet = mome("evaluate", "--dataset", "lrs3", "--data-root", corpus / "data", "--model", corpus / "ckpt",
                 "--rates", "4,2", "-o", tmp_path / "eval2", cwd=tmp_path)
    assert "LLM " not in quiet.stderr and "WER" not in quiet.stderr, quiet.explain  # without -v: the table alone


@needs_ffmpeg
def test_pauses_are_found_in_the_audio_the_model_hears(tmp_path):
    """Cut at every pause: on clean audio each clip's two pauses make three segments; under babble at -10 dB the
    pauses are full of talk, and the cuts know no more than a user's run would (they were taken from the clean audio
    before, for every SNR)."""
    rows = []
    for k, pauses in enumerate([[(1.0, 1.4), (2.5, 2.9)], [(0.7, 1.1), (2.2, 2.6)], [(1.5, 1.9), (3.0, 3.4)]]):
        quiet = "+".join(f"between(t,{a},{b})" for a, b in pauses)
        ffmpeg("-f", "lavfi", "-i", "testsrc2=size=96x96:rate=25:duration=4", "-f", "lavfi", "-i",
               f"sine=frequency={300 + 200 * k}:duration=4,volume=enable='{quiet}':volume=0", "-c:v", "libx264",
               "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", tmp_path / f"p{k}.mp4")
        rows.append(json.dumps({"id": f"p{k}", "video": f"p{k}.mp4", "text": "a tone"}))
    (tmp_path / "paused.jsonl").write_text("\n".join(rows) + "\n")
    result = evaluate("--dataset", tmp_path / "paused.jsonl", "--model", "tiny", "--roi", "--rates", "4,2", "--snr",
                      "clean,-10", "-o", tmp_path / "out", home=tmp_path / "home")
    assert result.returncode == 0, result.explain
    cells = {c["snr"]: c for c in json.loads((tmp_path / "out" / "report.json").read_text())["results"]}
    assert cells[CLEAN]["segments"] == 9 and cells[-10]["segments"] < 9, cells


@needs_ffmpeg
def test_an_utterance_without_video_in_mode_av_is_scored_from_its_audio_and_said_so(corpus, tmp_path):
    sound = corpus / "data" / "lrs3" / "test" / "spk" / "00000.wav"  # hello's sound
    rows = [{"id": "hello", "video": str(corpus / "jsonl" / "hello.mp4"), "text": "Hello, World!"},
            {"id": "sound", "audio": str(sound), "text": "Hello, World!"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = evaluate("--dataset", tmp_path / "m.jsonl", "--model", corpus / "ckpt", "--roi", "--rates", "4,2;16,5",
                      "-o", tmp_path / "out", home=tmp_path / "home")
    assert result.returncode == 0 and "warning: sound: no video" in result.stderr, result.explain
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["audio_only"] == ["sound"] and report["evaluated"] == 2
    rates = {(h["id"], tuple(h["rate"]), h["mode"])
             for h in map(json.loads, (tmp_path / "out" / "hypotheses.jsonl").open())}
    assert rates == {("hello", (4, 2), "av"), ("hello", (16, 5), "av"), ("sound", (4, 2), "a"),
                     ("sound", (16, 5), "a")}  # the cell it counts in (4,2 and 4,5 gave two "4" rows before)


@needs_ffmpeg
def test_failed_utterances_are_skipped_reported_and_exit_3_or_1(corpus, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x01 not a video" * 64)
    good = json.dumps({"id": "hello", "video": str(corpus / "jsonl" / "hello.mp4"), "text": "Hello, World!"})
    bad = json.dumps({"id": "broken", "video": str(broken), "text": "never heard"})
    (tmp_path / "some.jsonl").write_text(f"{good}\n{bad}\n")
    result = evaluate("--dataset", tmp_path / "some.jsonl", "--model", corpus / "ckpt", "--roi", "--rates", "4,2",
                      "-o", tmp_path / "some", home=tmp_path / "home")
    assert result.returncode == 3, result.explain
    assert len([line for line in result.stderr.splitlines() if "broken" in line]) == 1, result.explain
    report = json.loads((tmp_path / "some" / "report.json").read_text())
    assert (report["utterances"], report["evaluated"], [f["id"] for f in report["failed"]]) == (2, 1, ["broken"])
    assert report["results"][0]["wer"] == 0 and report["results"][0]["ref_words"] == 2

    assert (tmp_path / "some" / "wer.png").is_file()

    (tmp_path / "none.jsonl").write_text(f"{bad}\n")
    result = evaluate("--dataset", tmp_path / "none.jsonl", "--model", corpus / "ckpt", "--roi", "-o",
                      tmp_path / "some", home=tmp_path / "home")  # over the run above
    assert result.returncode == 1 and result.stdout == "", result.explain
    assert f"nothing was scored: the report of an earlier run in {tmp_path / 'some'} is left as it was" in \
        result.stderr, result.explain
    assert json.loads((tmp_path / "some" / "report.json").read_text()) == report  # not lost to a run that failed
    assert (tmp_path / "some" / "wer.png").is_file()
    result = evaluate("--dataset", tmp_path / "none.jsonl", "--model", corpus / "ckpt", "--roi", "-o",
                      tmp_path / "fresh", home=tmp_path / "home")  # where there is none: what failed, and why
    assert result.returncode == 1 and result.stdout == "", result.explain
    fresh = json.loads((tmp_path / "fresh" / "report.json").read_text())
    assert fresh["results"] == [] and [f["id"] for f in fresh["failed"]] == ["broken"]
    assert not (tmp_path / "fresh" / "wer.png").exists()


@pytest.mark.parametrize("below", [(), ("out",)], ids=["FILE", "FILE/out"])
def test_an_output_folder_that_cannot_be_written_fails_before_the_evaluation(corpus, tmp_path, monkeypatch, below):
    """-o FILE was a usage error (exit 2, click's "Directory ... is a file") where -o FILE/out was exit 1: both are an
    output folder that cannot be written, exit 1, one line naming the file in the way."""
    from mome_cli import evaluate as library

    def run(*args, **kwargs):
        raise AssertionError("an evaluation whose results could not be written was run")

    monkeypatch.setattr(library, "run", run)
    (tmp_path / "a-file").write_text("")
    out = tmp_path.joinpath("a-file", *below)
    result = evaluate("--dataset", corpus / "jsonl" / "test.jsonl", "--model", corpus / "ckpt", "--roi", "-o", out,
                      home=tmp_path / "home")
    assert result.returncode == 1 and result.stdout == "", result.explain
    blocker = "it" if not below else tmp_path / "a-file"
    assert result.stderr.strip().splitlines() == [f"mome evaluate: cannot write to {out}: {blocker} is a file, not a "
                                                  "folder"], result.explain


def test_a_mode_the_model_was_not_trained_in_is_scored_with_a_warning(corpus, tmp_path):
    result = evaluate("--dataset", corpus / "jsonl" / "test.jsonl", "--model", corpus / "ckpt", "--roi", "--mode", "a",
                      "--limit", "1", "-o", tmp_path / "out", home=tmp_path / "home")
    assert result.returncode == 0, result.explain
    assert "warning: this model was trained for mode av, not a" in result.stderr, result.explain


def test_a_noise_file_is_read_before_the_utterances_and_one_it_cannot_use_is_refused(corpus, tmp_path, monkeypatch):
    from mome_cli import evaluate as library

    manifest, model = corpus / "jsonl" / "test.jsonl", corpus / "ckpt"
    (tmp_path / "text.wav").write_text("not a sound")
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono",
                    "-t", "1", str(tmp_path / "silent.wav")], check=True)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", "anoisesrc=seed=3:d=2",
                    "-ar", "16000", str(tmp_path / "hiss.wav")], check=True)
    real = library.ClipLoader
    refuse = lambda *a, **k: pytest.fail("utterances were read before the --noise file was checked")  # noqa: E731
    monkeypatch.setattr(library, "ClipLoader", refuse)
    for name, problem in (("text.wav", "not a readable media file"), ("silent.wav", "is silent")):
        result = evaluate("--dataset", manifest, "--model", model, "--roi", "--snr", "0", "--noise", tmp_path / name,
                          "-o", tmp_path / "out", home=tmp_path / "home")
        assert result.returncode == 2 and problem in result.stderr, result.explain
    monkeypatch.setattr(library, "ClipLoader", real)
    unused = evaluate("--dataset", manifest, "--model", model, "--roi", "--limit", "1", "--noise", tmp_path / "text.wav",
                      "--split", "valid", "-o", tmp_path / "clean", home=tmp_path / "home")
    assert unused.returncode == 0, unused.explain
    assert "warning: --noise is not used: no --snr level below clean" in unused.stderr, unused.explain
    assert f"warning: --split valid is not used: it picks a split of lrs2 or lrs3, or a folder's valid.jsonl or " \
        f"valid.csv; {manifest} is read as it is" in unused.stderr, unused.explain
    used = evaluate("--dataset", manifest, "--model", model, "--roi", "--limit", "1", "--rates", "4,2", "--snr", "5",
                    "--noise", tmp_path / "hiss.wav", "-o", tmp_path / "noisy", home=tmp_path / "home")
    assert used.returncode == 0 and "warning" not in used.stderr, used.explain
    report = json.loads((tmp_path / "noisy" / "report.json").read_text())
    assert report["noise"] == {"source": "file", "path": str(tmp_path / "hiss.wav"), "seconds": 2.0}


def test_missing_dataset_exits_4_and_says_how_to_get_it(tmp_path):
    (tmp_path / "empty").mkdir()
    result = evaluate("--dataset", "lrs3", "--data-root", tmp_path / "empty", "-o", tmp_path / "out",
                      home=tmp_path / "home")
    assert result.returncode == 4 and result.stdout == "" and not (tmp_path / "out").exists(), result.explain
    assert "lrs3" in result.stderr and "auto_avsr" in result.stderr and "test.csv" in result.stderr, result.explain
    result = evaluate("--dataset", tmp_path / "nowhere.jsonl", "-o", tmp_path / "out" / "run" / "1",
                      home=tmp_path / "home")
    assert result.returncode == 4 and not (tmp_path / "out").exists(), result.explain  # nor the parents it made
    assert result.stderr.strip() == f"mome evaluate: {tmp_path / 'nowhere.jsonl'}: no such manifest or folder (give " \
        "a .jsonl or auto_avsr .csv manifest, or a folder of media files with .txt transcripts beside them)"


def test_rates_all_is_taken_in_any_case_as_snr_clean_is(tmp_path):
    """--rates ALL was a usage error (exit 2) where --snr CLEAN is taken: here the dataset is what is missing."""
    result = evaluate("--dataset", tmp_path / "nowhere.jsonl", "--rates", "ALL", "--snr", "CLEAN", "-o",
                      tmp_path / "out", home=tmp_path / "home")
    assert result.returncode == 4, result.explain


def test_an_output_path_that_fails_part_way_or_goes_up_leaves_no_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = evaluate("--dataset", tmp_path / "x.jsonl", "-o", Path("new") / ("x" * 300) / "out", home=tmp_path / "home")
    assert result.returncode == 1 and "File name too long" in result.stderr, result.explain
    result = evaluate("--dataset", tmp_path / "x.jsonl", "-o", "up/../other", home=tmp_path / "home")
    assert result.returncode == 4, result.explain
    assert [p.name for p in tmp_path.iterdir()] == []


def test_ctrl_c_during_an_evaluation_exits_130_and_leaves_no_empty_output_folders(tmp_path, monkeypatch):
    from mome_cli import evaluate as library

    def run(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(library, "run", run)
    (tmp_path / "kept").mkdir()
    result = evaluate("--dataset", tmp_path / "x.jsonl", "-o", tmp_path / "kept" / "new" / "out",
                      home=tmp_path / "home")
    assert result.returncode == 130 and result.stderr.strip() == "interrupted", result.explain
    assert [p.name for p in tmp_path.iterdir()] == ["kept"] and not any((tmp_path / "kept").iterdir())


@pytest.mark.parametrize("args, complaint", [
    (["--snr", "5,x"], "--snr"),
    (["--rates", "4,x"], "'4,x': expected 'all', or A,V pairs separated by ';' such as \"4,2;4,5\" (in mode a or v, "
                         "one rate each will do: \"4;16\")"),
    (["--rates", "8,3"], "not trained"),
    (["--rates", "4,2;4"], "mode av needs an audio and a video rate, A,V (e.g. 4,2), got 4"),
    (["--max-segment", "21"], "at most 20 s"),
    (["--max-segment", "0.2"], "--max-segment"),
])
def test_bad_values_exit_2(tmp_path, args, complaint):
    (tmp_path / "a.wav").write_bytes(b"")
    (tmp_path / "m.jsonl").write_text('{"id": "a", "audio": "a.wav", "text": "a"}\n')
    result = evaluate("--dataset", tmp_path / "m.jsonl", "--model", "tiny", "-o", tmp_path / "out", *args,
                      home=tmp_path / "home")
    assert result.returncode == 2 and complaint in result.stderr, result.explain


# ---- noise -----------------------------------------------------------------------------------------------------------

RATE = 16_000


def tones(ids) -> dict:
    """One pure tone per id, 100 Hz apart; 0.1 s long with whole cycles, so looping keeps it pure."""
    t = np.arange(RATE // 10) / RATE
    return {i: (0.1 + k) * np.sin(2 * np.pi * 100 * (k + 1) * t) for k, i in enumerate(ids)}


def spectrum_at(signal: np.ndarray, hz: int) -> float:
    return float(np.abs(np.fft.rfft(signal))[hz * len(signal) // RATE])


@pytest.mark.parametrize("corpus_size, talkers", [(4, 30), (6, 2)])
def test_babble_never_holds_the_utterance_itself(corpus_size, talkers):
    ids = [f"spk{k}/{k:05d}" for k in range(corpus_size)]
    sources = tones(ids)
    noise = babble([Utterance(i, "x", audio=Path(f"{i}.wav")) for i in ids], lambda u: sources[u.id], seed=3,
                   log=lambda m: None, talkers=talkers)
    assert noise.count == min(talkers, corpus_size - 1)
    for k, i in enumerate(ids):
        window = noise.window(i, RATE)  # 1 s: a 1 Hz FFT grid
        heard = [j for j, other in enumerate(ids) if spectrum_at(window, 100 * (j + 1)) > 1.0]
        assert k not in heard and len(heard) == noise.count, (i, heard)
        assert set(heard) == {ids.index(noise.ids[t]) for t in noise.talkers_for(i)}


def test_a_babble_talker_that_cannot_be_read_is_said_unless_the_evaluation_says_it():
    """Talkers come from the whole manifest, beyond --limit: one that is not evaluated is said here, one that is
    evaluated (and failed there, with its own error line) is not said twice."""
    from mome_cli.media import MediaError

    ids = ["a", "b", "c", "bad", "gone"]
    sources = tones(ids[:3])

    def load(u):
        if u.id not in sources:
            raise MediaError(f"{u.id}.wav", "not a readable media file")
        return sources[u.id]

    said = []
    babble([Utterance(i, "x", audio=Path(f"{i}.wav")) for i in ids], load, seed=0, log=said.append,
           said=frozenset({"bad"}))
    assert [m for m in said if "skipping" in m] == ["warning: babble: skipping gone: gone.wav: not a readable media "
                                                    "file"]


@pytest.mark.parametrize("snr", [-5, 0, 5, 20])
def test_mixing_hits_the_target_snr(snr):
    ids = [f"u{k}" for k in range(9)]
    rng = np.random.default_rng(0)
    sources = {i: rng.standard_normal(RATE * (k + 1) // 4) * (k + 1) for k, i in enumerate(ids)}
    noise = LoopedNoise(list(sources.items()), count=8, seed=1)
    speech = (0.3 * np.sin(2 * np.pi * 220 * np.arange(RATE + 123) / RATE)).astype(np.float32)
    mixed = mix_at_snr(speech, noise.window("u4", len(speech)), snr)
    added = mixed.astype(np.float64) - speech
    measured = 10 * np.log10(np.mean(speech.astype(np.float64) ** 2) / np.mean(added**2))
    assert mixed.dtype == np.float32 and abs(measured - snr) < 0.1


def test_noise_windows_are_deterministic_given_the_seed():
    rng = np.random.default_rng(0)
    sources = [(f"u{k}", rng.standard_normal(RATE // 2 + 100 * k)) for k in range(5)]
    a, b = LoopedNoise(sources, 4, seed=7), LoopedNoise(sources, 4, seed=7)
    other = LoopedNoise(sources, 4, seed=8)
    assert np.array_equal(a.window("x", RATE), b.window("x", RATE))
    assert np.array_equal(a.window("x", 3 * RATE)[:RATE], a.window("x", RATE))  # a longer clip: the same start
    assert not np.array_equal(a.window("x", RATE), other.window("x", RATE))
    assert not np.array_equal(a.window("x", RATE), a.window("y", RATE))  # each utterance its own window


@pytest.mark.parametrize("text, snrs", [
    ("clean", (CLEAN,)),
    ("clean,-5,0,5", (CLEAN, -5, 0, 5)),
    (" 2.5 , CLEAN,2.5", (2.5, CLEAN)),
])
def test_parse_snrs(text, snrs):
    assert parse_snrs(text) == snrs


@pytest.mark.parametrize("text", ["5,x", "", "inf", "5,,0", "nan", "4000", "-4000", "150.5"])  # 4000: overflow
def test_parse_snrs_refuses(text):
    with pytest.raises(ValueError):
        parse_snrs(text)


def test_a_ctrl_c_while_the_outputs_are_written_waits_for_the_last_of_them(tmp_path, monkeypatch):
    """report.json and hypotheses.jsonl of a new run beside the wer.png of an earlier one: what a Ctrl-C between
    the three writes left."""
    import signal

    from mome_cli import evaluate as library
    from mome_cli.scoring import score

    job = library.EvaluateJob(dataset="m.jsonl", output_dir=tmp_path, snrs=(CLEAN,))
    evaluation = library.Evaluation(job, tmp_path / "m.jsonl", [(4, 2)], evaluated=1)
    evaluation.cells.append(library.Cell((4, 2), CLEAN, score(["a b"], ["a c"]), 1.0, 0.1))
    evaluation.hypotheses.append({"id": "u", "rate": [4, 2], "snr": CLEAN, "ref": "a b", "hyp": "a c"})
    (tmp_path / "wer.png").write_bytes(b"an earlier run's")
    (tmp_path / "report.json").write_text("an earlier run's")
    write_all = library.atomic_write_all

    def failing(writes):  # the figure cannot be drawn (a full disk, matplotlib): nothing replaced
        def plot(tmp):
            raise OSError(28, "No space left on device")
        return write_all([*writes[:-1], (writes[-1][0], plot)])

    monkeypatch.setattr(library, "atomic_write_all", failing)
    with pytest.raises(OSError):
        library.write_outputs(evaluation, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json", "wer.png"]
    assert (tmp_path / "report.json").read_text() == "an earlier run's"

    def interrupted(writes):  # Ctrl-C as the first file is written
        path, write = writes[0]
        return write_all([(path, lambda tmp: (os.kill(os.getpid(), signal.SIGINT), write(tmp))), *writes[1:]])

    monkeypatch.setattr(library, "atomic_write_all", interrupted)
    with pytest.raises(KeyboardInterrupt):
        library.write_outputs(evaluation, tmp_path)
    assert json.loads((tmp_path / "report.json").read_text())["results"][0]["wer"] == 0.5
    assert (tmp_path / "hypotheses.jsonl").read_text().count("\n") == 1
    assert (tmp_path / "wer.png").read_bytes().startswith(b"\x89PNG")  # this run's figure
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@needs_ffmpeg
def test_a_bad_file_is_one_error_line_with_noise_too_and_mode_v_names_the_audio_file(corpus, tmp_path):
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x01 not a video" * 64)
    sound = corpus / "data" / "lrs3" / "test" / "spk" / "00000.wav"
    rows = [json.loads(line) for line in (corpus / "jsonl" / "test.jsonl").read_text().splitlines()]
    rows = [{**r, "video": str(corpus / "jsonl" / r["video"])} for r in rows]
    rows += [{"id": "broken", "video": str(broken), "text": "never heard"},
             {"id": "sound", "audio": str(sound), "text": "Hello, World!"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    noisy = evaluate("--dataset", tmp_path / "m.jsonl", "--model", corpus / "ckpt", "--roi", "--rates", "4,2",
                     "--snr", "clean,5", "-o", tmp_path / "noisy", home=tmp_path / "home")
    assert noisy.returncode == 3, noisy.explain
    assert len([line for line in noisy.stderr.splitlines() if "broken" in line]) == 1, noisy.explain  # babble's too
    lips = evaluate("--dataset", tmp_path / "m.jsonl", "--model", corpus / "ckpt", "--roi", "--mode", "v",
                    "--rates", "4,2", "-o", tmp_path / "lips", home=tmp_path / "home")
    assert lips.returncode == 3, lips.explain
    assert f"error: sound: {sound}: no video (mode v needs the lips) (skipped)" in lips.stderr, lips.explain
