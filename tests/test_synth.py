"""The synthetic corpus: text cleaning, viseme tracks and drawing (numpy only), espeak-ng's events, and a small corpus
written end to end (skipped without espeak-ng or ffmpeg)."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mome_cli import synth
from mome_cli.data import load_manifest
from mome_cli.media import VIDEO_FPS, decode_audio, decode_video, probe


def _espeak_missing() -> str | None:
    try:
        synth.espeak()
    except synth.SynthError as e:
        return str(e)
    return None


ESPEAK_MISSING = _espeak_missing()
needs_espeak = pytest.mark.skipif(ESPEAK_MISSING is not None, reason=str(ESPEAK_MISSING))
needs_ffmpeg = pytest.mark.skipif(shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None,
                                  reason="ffmpeg and ffprobe are not installed")
needs_fortunes = pytest.mark.skipif(not (synth.FORTUNE_DIR / "fortunes").is_file(),
                                    reason="Debian's fortunes package is not installed")

REPO = Path(__file__).parents[1]


def run_synth(*args, **kwargs) -> subprocess.CompletedProcess:
    """`python -m mome_cli.synth ARGS` from this checkout, its stderr's lines as .lines."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    result = subprocess.run([sys.executable, "-m", "mome_cli.synth", *map(str, args)], capture_output=True, text=True,
                            env=env, **kwargs)
    result.lines = result.stderr.splitlines()
    return result


# Sentences for the corpus test: each has a bilabial closure (p, b, m) and an open vowel.
TEXT = """Bob bought a big map of the harbour. My father parked the car by the barn.
Pam had a bad habit of humming. A bat flapped past the lamp.
Mark passed the ball to Pat. The man made a plan to buy a boat.
Bart stopped at the market. Mum baked apple pie for the party."""


@pytest.mark.parametrize("raw, clean", [
    ("A day for firm decisions!!!!!", "a day for firm decisions"),
    ("It\u2019s a \"test\", isn't it?", "it's a test isn't it"),
    ("'Tis the season -- long-forgotten joys.", "tis the season long forgotten joys"),
    ("Bank error in your favor.  Collect $200.", None),  # a number: espeak would read it, the text would not
    ("Drain the moat.", "drain the moat"),  # 3 words: kept
    ("Too short!", None),
    (" ".join(["word"] * 13), None),
])
def test_clean_sentence(raw, clean):
    assert synth.clean_sentence(raw) == clean


def test_sentences_of_a_fortune_file():
    text = ("Avoid reality at all costs.  Try a single person for a change.\n%\n"
            "The best way to predict the future is to invent it.\n\t\t-- Alan Kay\n%\nOk.\n")
    assert synth.sentences_of(text) == ["avoid reality at all costs", "try a single person for a change",
                                        "the best way to predict the future is to invent it"]


@needs_fortunes
def test_fortunes_give_thousands_of_clean_sentences():
    sentences = synth.load_sentences()
    words = {w for s in sentences for w in s.split()}
    assert len(sentences) > 5000 and len(words) > 5000
    assert len(set(sentences)) == len(sentences)
    assert all(re.fullmatch(r"[a-z']+( [a-z']+){2,11}", s) for s in sentences)


@pytest.mark.parametrize("n, valid, test, counts", [
    (1, 0.05, 0.05, (1, 0, 0)), (3, 0.05, 0.05, (1, 1, 1)), (6, 0.05, 0.05, (4, 1, 1)), (100, 0.05, 0.05, (90, 5, 5)),
    (4000, 0.05, 0.05, (3600, 200, 200)),
    (10, 0.0, 0.0, (10, 0, 0)),  # was 8/1/1: none asked for, none given
    (10, 0.0, 0.1, (9, 0, 1)),
    (10, 0.5, 0.45, (1, 5, 4)), (10, 0.5, 0.49, (1, 4, 5)),  # the second was 8/1/1: 5 and 5 leave train none
    (3, 0.5, 0.45, (1, 1, 1)), (2, 0.5, 0.45, (1, 0, 1)),  # train keeps one
])
def test_split_counts(n, valid, test, counts):
    assert tuple(synth.split_counts(n, valid, test).values()) == counts


@needs_espeak
@needs_ffmpeg
def test_split_counts_follow_the_fractions_given_or_a_warning_says_why_not(tmp_path):
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    result = run_synth(tmp_path / "none", "-n", 3, "--valid", 0, "--test", 0, "--text", tmp_path / "text.txt")
    assert result.returncode == 0 and "warning" not in result.stderr, result.stderr
    assert len(load_manifest(tmp_path / "none" / "train.jsonl")) == 3  # was 1/1/1
    assert [(tmp_path / "none" / f"{split}.jsonl").exists() for split in ("valid", "test")] == [False, False]  # empty
    result = run_synth(tmp_path / "few", "-n", 4, "--text", tmp_path / "text.txt")
    assert result.returncode == 0 and result.lines[0] == ("synth: warning: train/valid/test 2/1/1, not the 4/0/0 of "
                                                          "--valid 0.05 --test 0.05: a split given a fraction gets "
                                                          "a clip at least, and train keeps one"), result.stderr
    assert [len(load_manifest(tmp_path / "few" / f"{split}.jsonl")) for split in synth.SPLITS] == [2, 1, 1]


@pytest.mark.parametrize("phoneme, viseme", [("p", "closed"), ("m", "closed"), ("f", "labiodental"),
                                             ("u:", "oo"), ("w", "w"), ("A:", "open"), ("i:", "spread"),
                                             ("s", "sibilant"), ("T", "dental"), ("_:", "rest"), ("_!", "rest"),
                                             ("n-", "coronal"), ("Q~", "schwa")])
def test_viseme_of(phoneme, viseme):
    assert synth.viseme_of(phoneme) == viseme


@pytest.mark.parametrize("event, name", [(b"'aU", "aU"), (b",i:", "i:"), (b"@", "@"), (b"r-", "r-"),
                                         (b"'3:", "3:"), (b"t#", "t#"), (b"_:", "_:")])
def test_stress_marks_of_newer_espeak_ng_are_left_out_of_phoneme_names(event, name):
    assert synth.phoneme_name(event) == name  # espeak-ng 1.52 names the stressed vowel "'aU", 1.51 "aU"


def _opening_at(track, t):
    return track[int(t * VIDEO_FPS), 0]


def test_track_closes_for_bilabials_and_opens_for_vowels():
    # "pa ma": p 0.20-0.30, a 0.30-0.50, m 0.50-0.60, a 0.60-0.80, pause to 1.0
    phonemes = [(0.2, "p"), (0.3, "A:"), (0.5, "m"), (0.6, "A:"), (0.8, "_:")]
    track = synth.viseme_track(phonemes, 1.0, 25)  # (T, P)
    assert track.shape == (25, 4)
    assert _opening_at(track, 0.25) < 0.1 and _opening_at(track, 0.55) < 0.1
    assert _opening_at(track, 0.40) > 0.6 and _opening_at(track, 0.70) > 0.6
    assert _opening_at(track, 0.05) == pytest.approx(synth.VISEMES["rest"][0], abs=0.01)  # rest before speech


def _dark_pixels(frames):
    """(T,) how many pixels of each (T, R, R) frame are darker than half the frame's median (the mouth interior)."""
    frames = frames.astype(np.float32)
    return (frames < 0.5 * np.median(frames, axis=(1, 2), keepdims=True)).sum(axis=(1, 2))


def test_render_shows_the_mouth_interior_only_when_open():
    closed, wide = synth.VISEMES["closed"], synth.VISEMES["open"]
    track = np.array([closed, wide] * 3, np.float32)  # (T, P)
    faces = [synth.Face.random(np.random.default_rng(k)) for k in range(6)]
    for face in faces:
        frames = synth.render_mouth(track, face, np.random.default_rng(0))
        assert frames.shape == (6, synth.ROI, synth.ROI) and frames.dtype == np.uint8
        dark = _dark_pixels(frames)
        assert dark[1::2].min() > dark[0::2].max() + 100, (face, dark)


@needs_espeak
def test_espeak_reports_words_and_phonemes_in_time_order():
    speech = synth.espeak().speak("the big dog sat on a mat.", "en-gb", 170)
    assert speech.duration > 0.5
    assert [w for _, w in speech.words] == ["the", "big", "dog", "sat", "on", "a", "mat"]
    word_times = [t for t, _ in speech.words]
    assert word_times == sorted(word_times) and len(set(word_times)) == len(word_times)
    times = [t for t, _ in speech.phonemes]
    assert len(times) > 10 and times == sorted(times) and times[-1] <= speech.duration
    assert {"b", "m"} <= {name for _, name in speech.phonemes}


@needs_espeak
def test_espeak_gives_the_same_samples_whatever_came_before():
    engine = synth.espeak()
    first = engine.speak("a penny saved is a penny earned.", "en-us+f3", 160, 60, 40)
    engine.speak("something else entirely, in another voice.", "en-029", 190, 30, 70)
    again = engine.speak("a penny saved is a penny earned.", "en-us+f3", 160, 60, 40)
    assert np.array_equal(first.samples, again.samples) and first.phonemes == again.phonemes


@needs_espeak
def test_an_unknown_voice_is_a_synth_error():
    with pytest.raises(synth.SynthError, match="no voice"):
        synth.espeak().speak("hello there.", "xx-nowhere")


@needs_espeak
def test_the_variants_are_those_espeak_ng_lists():
    variants = synth.espeak().variants
    assert set(synth.VARIANTS) - {""} <= variants and "zz" not in variants
    if shutil.which("espeak-ng"):  # the library's list against the program's (its "File" column: !v/NAME)
        listed = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True, check=True).stdout
        assert variants == set(re.findall(r"!v/(\S+(?: \S+)*)", listed))


@needs_espeak
@pytest.mark.parametrize("voice", ["en-us+zz", "en-gb+F3", "en-us+10"])  # +10 would be f0: there is none
def test_an_unknown_variant_is_refused_not_spoken_as_no_variant(voice):
    """espeak-ng speaks an unknown variant as the plain voice and says nothing: en-us+zz gave en-us's samples."""
    with pytest.raises(synth.UnknownVoice, match=r"no voice variant .*\(espeak-ng --voices=variant"):
        synth.espeak().speak("hello there.", voice)


@needs_espeak
def test_numbered_variants_are_espeak_ngs_own():
    engine = synth.espeak()
    assert np.array_equal(engine.speak("hello.", "en-us+3").samples, engine.speak("hello.", "en-us+m3").samples)
    assert np.array_equal(engine.speak("hello.", "en-us+12").samples, engine.speak("hello.", "en-us+f2").samples)


@needs_espeak
@needs_fortunes
def test_a_misspelt_variant_is_a_usage_error_that_names_it(tmp_path):
    result = run_synth(tmp_path / "out", "-n", 3, "--voices", "en-us", "en-us+zz")
    assert result.returncode == 2 and len(result.lines) == 1, result.stderr
    assert "no voice variant 'zz' (in 'en-us+zz')" in result.stderr and "m1, m2" in result.stderr, result.stderr
    assert not (tmp_path / "out").exists()
    result = run_synth(tmp_path / "out", "-n", 3, "--voices", "xx-nowhere")  # an unknown voice too
    assert result.returncode == 2 and result.lines == ["error: espeak-ng has no voice for 'xx-nowhere' "
                                                       "(see espeak-ng --voices=en)"], result.stderr


def test_a_text_file_that_cannot_be_read_is_a_synth_error(tmp_path):
    """It was Python's own "[Errno 2] No such file or directory: '...'"."""
    with pytest.raises(synth.SynthError, match=f"{tmp_path / 'gone.txt'}: cannot read it: No such file or directory"):
        synth.load_sentences(tmp_path / "gone.txt")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Six clips written by the command line, and the same corpus again by two worker processes."""
    base = tmp_path_factory.mktemp("synth")
    (base / "text.txt").write_text(TEXT, encoding="utf-8")
    first, second = base / "a", base / "b"
    common = ["--utterances", "6", "--seed", "7", "--text", str(base / "text.txt"), "--speakers", "4"]
    assert synth.main([str(first), *common]) == 0
    assert synth.main([str(second), *common, "--jobs", "2"]) == 0
    return first, second


@needs_espeak
@needs_ffmpeg
def test_corpus_manifests_load_and_splits_share_no_sentence(corpus):
    out, _ = corpus
    texts = {}
    for split in synth.SPLITS:
        utterances = load_manifest(out / f"{split}.jsonl")
        assert all(u.video.is_file() and u.video.parent == out / split and u.audio is None for u in utterances)
        texts[split] = {u.text for u in utterances}
    assert [len(texts[s]) for s in synth.SPLITS] == [4, 1, 1]
    assert not (texts["train"] & texts["valid"] or texts["train"] & texts["test"] or texts["valid"] & texts["test"])
    for line in (out / "train.jsonl").read_text().splitlines():
        row = json.loads(line)
        assert set(row) == {"id", "video", "text"} and not row["video"].startswith("/")
    version = json.loads((out / "corpus.json").read_text())["espeak_ng"]  # the library that spoke it
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", version) and version == synth.espeak().version


@needs_espeak
@needs_ffmpeg
def test_corpus_clips_match_their_phoneme_timings(corpus):
    out, _ = corpus
    closed_dark, open_dark = [], []
    for line in (out / "alignments.jsonl").read_text().splitlines():
        clip = json.loads(line)
        path = out / clip["split"] / f"{clip['id']}.mp4"
        info = probe(path)
        assert info.has_audio and info.has_video and (info.width, info.height) == (synth.ROI, synth.ROI)
        assert abs(info.duration - clip["duration"]) <= 1 / VIDEO_FPS, (path, info.duration, clip["duration"])
        frames = decode_video(path, info=info)[..., 0]  # (T, R, R)
        assert len(frames) == round(VIDEO_FPS * clip["duration"]) == clip["frames"]
        starts = [t for t, _ in clip["phonemes"]]
        assert starts == sorted(starts) and clip["speech"][1] <= clip["duration"]
        # The mouth interior at the middle of each closure (p b m) and each open vowel.
        dark = _dark_pixels(frames)
        ends = starts[1:] + [clip["duration"]]
        for (start, name), end in zip(clip["phonemes"], ends):
            frame = min(int((start + end) / 2 * VIDEO_FPS), len(frames) - 1)
            if synth.viseme_of(name) == "closed":
                closed_dark.append(dark[frame])
            elif synth.viseme_of(name) == "open" and name not in synth.DIPHTHONGS and end - start > 0.06:
                open_dark.append(dark[frame])
    assert closed_dark and open_dark
    assert np.median(open_dark) > np.median(closed_dark) + 50, (closed_dark, open_dark)
    assert np.median(closed_dark) < 20, closed_dark


@needs_espeak
@needs_ffmpeg
def test_same_seed_same_corpus(corpus):
    first, second = corpus
    for name in ("train.jsonl", "valid.jsonl", "test.jsonl", "alignments.jsonl"):
        assert (first / name).read_text() == (second / name).read_text(), name
    clip = next(iter(load_manifest(first / "test.jsonl")))
    assert np.array_equal(decode_video(clip.video), decode_video(second / "test" / clip.video.name))


@needs_espeak
@needs_ffmpeg
def test_a_reading_set_adds_sentences_without_touching_the_clips_and_other_options_are_refused(corpus, tmp_path):
    out = tmp_path / "corpus"
    shutil.copytree(corpus[0], out)
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*") if p.is_file()}
    common = ["--utterances", "6", "--seed", "7", "--text", str(corpus[0].parent / "text.txt"), "--speakers", "4"]
    assert synth.main([str(out), *common, "--reading", "2"]) == 0
    for path, (mtime, data) in before.items():  # the clips are kept, not redrawn; the manifests come out the same
        if path.suffix == ".mp4":
            assert path.stat().st_mtime_ns == mtime, path
        if path.name != "corpus.json":
            assert path.read_bytes() == data, path
    clip_texts = {u.text for split in synth.SPLITS for u in load_manifest(out / f"{split}.jsonl")}
    records = [json.loads(line) for line in (out / "reading.jsonl").read_text().splitlines()]
    assert len(records) == 2 and len({r["text"] for r in records} | clip_texts) == 8  # the two sentences left
    aligned = json.loads((out / "alignments.jsonl").read_text().splitlines()[0])
    for r in records:
        assert set(r) == set(aligned) | {"text"} and r["split"] == "reading"
        assert r["frames"] == round(r["duration"] * VIDEO_FPS) and 0 < r["speech"][0] < r["speech"][1] <= r["duration"]
        assert r["phonemes"][0][0] >= r["speech"][0] and r["words"]
    assert not list(out.rglob("reading/*")) and json.loads((out / "corpus.json").read_text())["reading"] == 2

    written = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert synth.main([str(out), *common[:2], "--seed", "8", *common[4:]]) == 1  # another corpus: refused, untouched
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == written
    # the same options and text file, its sentences changed (as another fortunes package would): the kept clips
    # would get other transcripts
    text = corpus[0].parent / "text.txt"
    try:
        text.write_text(TEXT.replace("a", "o"), encoding="utf-8")
        assert synth.main([str(out), *common]) == 1
    finally:
        text.write_text(TEXT, encoding="utf-8")
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == written


@needs_espeak
@needs_ffmpeg
def test_long_form_clips_join_each_speakers_clips_with_their_pauses(corpus, tmp_path):
    from mome_cli.media import split_at_pauses

    out = tmp_path / "corpus"
    shutil.copytree(corpus[0], out)
    rows = synth.join_clips(out, "train", 100.0, out / "long")  # every speaker's train clips, all joined
    train = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    speakers = list(dict.fromkeys(r["id"].rsplit("_", 1)[0] for r in train))
    assert [r["id"] for r in rows] == [f"{s}_long000" for s in speakers]
    assert sorted(p for r in rows for p in r["parts"]) == sorted(r["id"] for r in train)
    texts = {r["id"]: r["text"] for r in train}
    for row in rows:
        assert row["text"] == " ".join(texts[p] for p in row["parts"])
        path = out / "long" / row["video"]
        # each part contributes its frames and 640 samples a frame: the joined clip is as long as its parts
        parts = [probe(out / "train" / f"{p}.mp4").duration for p in row["parts"]]
        assert probe(path).duration == pytest.approx(sum(parts), abs=0.5 / 25)
        assert len(decode_video(path)) == sum(round(d * 25) for d in parts)
        audio = decode_audio(path)
        speech = [s for s in split_at_pauses(audio) if s.speech]
        assert len(speech) == len(row["parts"]), (row, speech)  # one segment per utterance
        # and the sound stays with the lips: each part's sound starts where that part starts, join after join
        # (ffmpeg's concat put it 16-40 ms later at each join)
        frames = np.cumsum([0, *[round(d * 25) for d in parts[:-1]]])
        for first, part in zip(frames, row["parts"]):
            own = decode_audio(out / "train" / f"{part}.mp4").astype(np.float64)
            at = first * 640  # where the part's first frame is, in samples
            lags = range(-800, 801, 8)  # +-50 ms
            match = [np.dot(own[800:-800], audio[at + 800 + lag : at + len(own) - 800 + lag]) for lag in lags]
            assert abs(lags[int(np.argmax(match))]) <= 80, (row["id"], part)  # within 5 ms
    assert load_manifest(out / "long" / "train.jsonl")[0].text == rows[0]["text"]

    assert [len(r["parts"]) for r in synth.join_clips(out, "train", 0.1, tmp_path / "single")] == [1] * len(train)
    assert synth.main([str(out), "--long-form", "9"]) == 0
    assert (out / "long" / "valid.jsonl").is_file() and (out / "long" / "test.jsonl").is_file()
    with pytest.raises(SystemExit) as refused:  # joining and generating are two different runs
        synth.main([str(out), "--long-form", "9", "--utterances", "6"])
    assert refused.value.code == 2


@pytest.mark.parametrize("options, named", [
    (["--seed", "3"], "--seed"), (["--jobs", "2"], "--jobs"), (["--voices", "en-gb"], "--voices"),
    (["--seed", "0", "-j", "1"], "--seed, --jobs"),  # the defaults, given: still not what --long-form reads
    (["--text", "x.txt", "--reading", "0"], "--text, --reading"),
])
def test_long_form_refuses_the_options_of_a_new_corpus_it_would_ignore(tmp_path, options, named):
    result = run_synth(tmp_path, "--long-form", 9, *options)
    assert result.returncode == 2, result.stderr
    assert result.lines[-1] == ("python -m mome_cli.synth: error: --long-form joins the clips already in OUT_DIR as "
                                f"they were made: it takes no {named}"), result.stderr
    assert list(tmp_path.iterdir()) == []


@needs_espeak
@needs_ffmpeg
@needs_fortunes
@pytest.mark.parametrize("jobs", [1, 2])
def test_ctrl_c_is_one_line_and_exit_130_and_the_same_command_goes_on(tmp_path, jobs):
    """Ctrl-C ended with a KeyboardInterrupt traceback from the process and one from each worker (--jobs 2)."""
    out = tmp_path / "out"
    command = [out, "-n", 16, "--speakers", 2, "--jobs", jobs]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])}
    # a session of its own, so that SIGINT reaches the process and its workers and children as a terminal's would
    run = subprocess.Popen([sys.executable, "-m", "mome_cli.synth", *map(str, command)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.rglob("*.mp4")) and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.killpg(run.pid, signal.SIGINT)  # with the first clips written, others being made
    stderr = run.communicate(timeout=60)[1]
    assert run.returncode == 130, stderr
    assert stderr.splitlines() == ["synth: interrupted; the same command again goes on from where it stopped"]
    made = {p: p.stat().st_mtime_ns for p in out.rglob("*.mp4")}
    assert 0 < len(made) < 16
    assert sorted(p.name for p in out.rglob("*") if p.is_file() and p.suffix != ".mp4") == ["corpus.json"]  # no part
    resumed = run_synth(*command, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert {p: p.stat().st_mtime_ns for p in made} == made and len(list(out.rglob("*.mp4"))) == 16  # kept, and the rest


@needs_espeak
@needs_ffmpeg
def test_a_folder_of_other_files_is_not_written_into(tmp_path):
    """It was: its train.jsonl written over, clips and manifests added among the user's files."""
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "train.jsonl").write_text("mine\n")
    result = run_synth(mine, "-n", 3, "--text", tmp_path / "text.txt")
    assert result.returncode == 2 and result.lines == [f"error: {mine} holds files and no synth corpus (corpus.json): "
                                                       "write to a new or empty folder"], result.stderr
    assert [p.name for p in mine.iterdir()] == ["train.jsonl"] and (mine / "train.jsonl").read_text() == "mine\n"
    (mine / "train.jsonl").unlink()  # an empty folder is written into
    assert run_synth(mine, "-n", 3, "--text", tmp_path / "text.txt").returncode == 0


@needs_espeak
@needs_ffmpeg
def test_a_split_of_no_utterances_has_no_manifest(tmp_path, capsys):
    """--valid 0 wrote an empty valid.jsonl, which `mome train --valid` refuses ("no utterances"); the paths printed
    are the manifests written, and --long-form joins the splits the corpus has."""
    (tmp_path / "text.txt").write_text(TEXT, encoding="utf-8")
    out = tmp_path / "corpus"
    assert synth.main([str(out), "-n", "3", "--valid", "0", "--test", "0.3", "--speakers", "1", "--text",
                       str(tmp_path / "text.txt")]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out / "train.jsonl"), str(out / "test.jsonl")]
    assert not (out / "valid.jsonl").exists() and not (out / "valid").exists()
    assert [len(load_manifest(out / f"{split}.jsonl")) for split in ("train", "test")] == [2, 1]
    assert json.loads((out / "corpus.json").read_text())["splits"] == {"train": 2, "valid": 0, "test": 1}
    assert synth.main([str(out), "--long-form", "9"]) == 0
    assert capsys.readouterr().out.splitlines() == [str(out / "long" / "test.jsonl")]
    assert not (out / "long" / "valid.jsonl").exists()


def test_a_negative_seed_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # a traceback from numpy before
        synth.main([str(tmp_path / "out"), "--utterances", "3", "--seed", "-1"])
    assert e.value.code == 2 and "--seed must be 0 or more, got -1" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@needs_espeak
@needs_fortunes
def test_a_clip_that_fails_in_a_worker_process_is_an_error_not_a_hang(tmp_path):
    """With --jobs 2 the worker's MediaError could not be rebuilt in the parent (its two arguments were not pickled):
    the pool's result thread died and the corpus waited for ever at full CPU. Here ffmpeg is not found."""
    import os
    import subprocess
    import sys

    no_programs = tmp_path / "bin"
    no_programs.mkdir()
    result = subprocess.run([sys.executable, "-m", "mome_cli.synth", str(tmp_path / "out"), "--utterances", "6",
                             "--jobs", "2"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PATH": str(no_programs)})
    assert result.returncode == 1 and "ffmpeg" in result.stderr.splitlines()[-1], result.stderr
