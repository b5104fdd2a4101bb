"""Inputs found, output paths that mirror them without collisions, and the output formats."""

import json
from pathlib import Path
import re

import pytest

from mome_cli.outputs import (FORMATS, Transcript, collect_inputs, output_path, output_stems, read_text, render,
                              timestamp, write_outputs)


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_folders_are_searched_for_media_recursively_or_not(tmp_path):
    for name in ["a/x.mp4", "a/notes.txt", "a/sub/y.wav", "b/x.mp4", "b/Z.MKV"]:
        touch(tmp_path / name)
    flat = collect_inputs([str(tmp_path / "a")])
    assert [i.path.name for i in flat] == ["x.mp4"] and flat[0].root == tmp_path / "a"
    deep = collect_inputs([str(tmp_path / "a"), str(tmp_path / "b")], recursive=True)
    assert [str(i.path.relative_to(tmp_path)) for i in deep] == ["a/sub/y.wav", "a/x.mp4", "b/Z.MKV", "b/x.mp4"]
    assert [i.path.name for i in collect_inputs([str(tmp_path / "b")], glob="*.mp4")] == ["x.mp4"]
    (tmp_path / "b" / "CAM.MP4").write_bytes(b"")  # camera folders: upper case, taken without --glob as with it
    assert [i.path.name for i in collect_inputs([str(tmp_path / "b")], glob="*.mp4")] == ["CAM.MP4", "x.mp4"]
    assert [i.path.name for i in collect_inputs([str(tmp_path / "b")], glob="[c]*")] == ["CAM.MP4"]
    twice = collect_inputs([str(tmp_path / "a" / "x.mp4"), str(tmp_path / "a")])
    assert len(twice) == 1


@pytest.mark.parametrize("layout, arguments, expected", [
    # a folder INPUT: paths below it are kept
    (["d/a/x.mp4", "d/b/x.mp4"], ["d"], ["a/x", "b/x"]),
    # files given directly land at the top
    (["talk.mp4", "other/film.mkv"], ["talk.mp4", "other/film.mkv"], ["talk", "film"]),
    # same name given directly from two folders: paths below their common folder
    (["p/x.mp4", "q/x.mp4"], ["p/x.mp4", "q/x.mp4"], ["p/x", "q/x"]),
    # same relative path in two INPUT folders: the same fallback
    (["d1/x.mp4", "d2/x.mp4"], ["d1", "d2"], ["d1/x", "d2/x"]),
    # same stem, different extensions: the extension stays in the name
    (["d/x.mp4", "d/x.wav", "d/y.mp4"], ["d"], ["x.mp4", "x.wav", "y"]),
    # and a name that is another's with its extension kept keeps its own: x.mp4.wav beside x.mp4 and x.wav
    (["d/x.mp4", "d/x.mp4.wav", "d/x.wav"], ["d"], ["x.mp4", "x.mp4.wav", "x.wav"]),
    (["d/x.mp4", "d/x.mp4.wav"], ["d"], ["x", "x.mp4"]),  # no clash: both named without their extension
])
def test_output_stems_mirror_inputs_and_never_collide(tmp_path, monkeypatch, layout, arguments, expected):
    monkeypatch.chdir(tmp_path)
    for name in layout:
        touch(tmp_path / name)
    stems = output_stems(collect_inputs(arguments, recursive=True))
    assert [str(s) for s in stems] == expected
    assert output_path(tmp_path / "out", stems[0], "srt") == tmp_path / "out" / f"{expected[0]}.srt"


@pytest.mark.parametrize("seconds, srt, vtt", [(0, "00:00:00,000", "00:00:00.000"),
                                               (3.4567, "00:00:03,457", "00:00:03.457"),
                                               (3725.1, "01:02:05,100", "01:02:05.100")])
def test_timestamps(seconds, srt, vtt):
    assert timestamp(seconds, ",") == srt and timestamp(seconds, ".") == vtt


TRANSCRIPT = Transcript(
    text="hello there general kenobi",
    segments=[{"start": 0.0, "end": 2.5, "text": "hello there"}, {"start": 2.5, "end": 3.0, "text": ""},
              {"start": 3.0, "end": 21.04, "text": "general kenobi"}],
    mode="av", rate=(4, 2), model="demo", duration=21.04,
)


def test_every_format_is_well_formed(tmp_path):
    paths = write_outputs(TRANSCRIPT, tmp_path, Path("talk"),
                          ["txt", "json", "srt", "vtt", "jsonl"])
    text = {p.suffix[1:]: p.read_text() for p in paths}
    assert text["txt"] == "hello there general kenobi\n"
    document = json.loads(text["json"])
    assert document["rate"] == [4, 2] and document["mode"] == "av" and document["model"] == "demo"
    assert [s["text"] for s in document["segments"]] == ["hello there", "", "general kenobi"]
    assert [json.loads(line)["start"] for line in text["jsonl"].splitlines()] == [0.0, 2.5, 3.0]
    srt = re.findall(r"^(\d+)\n(\S+) --> (\S+)\n(.+)$", text["srt"], re.M)
    assert srt == [("1", "00:00:00,000", "00:00:02,500", "hello there"),
                   ("2", "00:00:03,000", "00:00:21,040", "general kenobi")]
    assert text["vtt"].startswith("WEBVTT\n\n")
    assert re.findall(r"^(\S+) --> (\S+)$", text["vtt"], re.M) == [("00:00:00.000", "00:00:02.500"),
                                                                     ("00:00:03.000", "00:00:21.040")]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"talk.{f}" for f in text)  # no temporary left


def test_nothing_said_is_no_line_in_any_format(tmp_path):
    """A silent input (no segment): txt held one empty line where srt and jsonl held none; each now holds no line of
    text (srt and jsonl empty, as whisper writes them; vtt its header, which players read as no cues; json an empty
    text and no segments), and each reads back as no text."""
    silent = Transcript(text="", segments=[], mode="a", rate=(4,), model="demo", duration=5.0,
                        warnings=["the sound is silence throughout: nothing was transcribed"])
    write_outputs(silent, tmp_path, Path("quiet"), list(FORMATS))
    written = {fmt: (tmp_path / f"quiet.{fmt}").read_text() for fmt in FORMATS}
    assert {fmt: written[fmt] for fmt in ("txt", "srt", "jsonl", "vtt")} == {"txt": "", "srt": "", "jsonl": "",
                                                                              "vtt": "WEBVTT\n\n"}
    document = json.loads(written["json"])
    assert (document["text"], document["segments"], document["duration"]) == ("", [], 5.0)
    assert all(read_text(tmp_path, Path("quiet"), [fmt]) == "" for fmt in FORMATS)


def test_unknown_format_is_refused():
    with pytest.raises(ValueError, match="unknown format"):
        render(TRANSCRIPT, "docx")


@pytest.mark.parametrize("fmt", FORMATS)
def test_the_text_reads_back_from_every_format(tmp_path, fmt):
    """What `--stdout` prints for an input whose outputs exist (skipped): the text, from whichever format is there."""
    segments = [{"start": 0.0, "end": 1.2, "text": "it's 42"}, {"start": 1.2, "end": 2.0, "text": ""},
                {"start": 2.0, "end": 3.5, "text": "a --> b"}, {"start": 3.5, "end": 4.0, "text": "1"}]
    transcript = Transcript(text="it's 42 a --> b 1", segments=segments)
    write_outputs(transcript, tmp_path, Path("sub/clip"), [fmt])
    expected = transcript.text.replace("-->", "->") if fmt == "srt" else transcript.text  # srt cannot hold "-->"
    assert read_text(tmp_path, Path("sub/clip"), ["json", fmt]) == expected  # no json: the next one
    with pytest.raises(OSError):
        read_text(tmp_path, Path("sub/other"), [fmt])


def test_cue_text_cannot_break_a_subtitle_file(tmp_path):
    """WebVTT cue text is markup: a model's "<", "&" or "-->" went into it as they were (a "<b" opens a tag, "-->"
    reads as a cue's times), as "-->" did into srt."""
    said = "x <b & c ---> d"
    transcript = Transcript(text=said, segments=[{"start": 0.0, "end": 1.0, "text": said}])
    write_outputs(transcript, tmp_path, Path("t"), ["srt", "vtt"])
    vtt, srt = (tmp_path / "t.vtt").read_text(), (tmp_path / "t.srt").read_text()
    assert vtt.splitlines()[3] == "x &lt;b &amp; c ---&gt; d" and vtt.count("-->") == 1
    assert srt.splitlines()[2] == "x <b & c -> d" and srt.count("-->") == 1
    assert read_text(tmp_path, Path("t"), ["vtt"]) == said


def test_an_edited_output_whose_text_is_not_text_is_a_value_error(tmp_path):
    """--stdout reads a skipped input's text back: {"text": null} in its json crashed the run with a TypeError."""
    (tmp_path / "t.json").write_text('{"text": null}')
    (tmp_path / "u.jsonl").write_text('{"text": 3}\n')
    for stem, fmt in (("t", "json"), ("u", "jsonl")):
        with pytest.raises(ValueError, match="not text"):
            read_text(tmp_path, Path(stem), [fmt])


def test_an_output_folder_name_taken_by_a_file_is_said_so(tmp_path):
    """It said "File exists" (mkdir's error) for the output file, which did not exist."""
    (tmp_path / "sub").write_text("a file")
    with pytest.raises(NotADirectoryError) as e:
        write_outputs(TRANSCRIPT, tmp_path, Path("sub/deeper/talk"), ["txt"])
    assert (e.value.filename, e.value.strerror) == (str(tmp_path / "sub" / "deeper" / "talk.txt"),
                                                   f"{tmp_path / 'sub'} is a file, not a folder")
