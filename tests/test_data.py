"""Manifests in all three layouts, dataset lookup, frame-budget batching."""

import json
import os
import re

import pytest

from mome_cli.data import DataError, DatasetMissing, UtteranceError, find_dataset, frame_batches, load_manifest
from mome_cli.report import ExitCode


def touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_jsonl_paths_are_relative_to_the_manifest(tmp_path):
    rows = [{"id": "u1", "video": "v/a.mp4", "text": "hello"},
            {"id": "u2", "video": "v/b.mp4", "audio": "/abs/b.wav", "text": "there"},
            {"audio": "w/c.wav", "text": "speech only"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    u = load_manifest(tmp_path / "m.jsonl")
    assert [x.id for x in u] == ["u1", "u2", "c"]
    assert u[0].video == tmp_path / "v/a.mp4" and u[0].audio is None and u[0].media == u[0].video
    assert str(u[1].audio) == "/abs/b.wav" and u[1].media == u[1].audio
    assert u[2].video is None and u[2].audio == tmp_path / "w/c.wav" and u[2].text == "speech only"


@pytest.mark.parametrize("line, problem", [("{not json", "m.jsonl:1: not JSON"),
                                           ('{"video": "a.mp4"}', 'm.jsonl:1: needs "text"'),
                                           ('{"text": "hi"}', "at least one of"),
                                           ('{"video": "a.mp4", "text": null}', 'm.jsonl:1: "text" must be a string, '
                                                                                'not null'),
                                           ('{"video": 123, "text": "hi"}', '"video" must be a string, not 123'),
                                           ('{"video": "a.mp4", "audio": ["a.wav"], "text": "hi"}',
                                            re.escape('"audio" must be a string, not ["a.wav"]')),
                                           ('{"video": "a.mp4", "text": "bad \\ud800"}',
                                            re.escape('m.jsonl:1: "text" holds \\ud800, a lone surrogate (half of a '
                                                      'UTF-16 pair), which is no character')),
                                           ('{"id": "\\udce9", "video": "a.mp4", "text": "hi"}',
                                            re.escape('"id" holds \\udce9')),
                                           ('{"video": "caf\\udce9.mp4", "text": "hi"}', re.escape('"video" holds')),
                                           ('{"audio": "\\ude00.wav", "text": "hi"}', re.escape('"audio" holds'))])
def test_bad_jsonl_names_file_and_line(tmp_path, line, problem):
    (tmp_path / "m.jsonl").write_text(line + "\n")
    with pytest.raises(DataError, match=problem):
        load_manifest(tmp_path / "m.jsonl")


def test_names_that_are_not_utf8_are_refused_where_they_are(tmp_path):
    """A lone surrogate could not be written to a report or transcript at the end of a run, after hours of decoding;
    a character written as a surrogate pair is a character."""
    (tmp_path / "m.jsonl").write_text('{"id": "\\ud83d\\ude00", "audio": "a.wav", "text": "smile \\ud83d\\ude00"}\n')
    assert [(u.id, u.text) for u in load_manifest(tmp_path / "m.jsonl")] == [("\U0001f600", "smile \U0001f600")]
    for name in ("caf\xe9", "good"):  # a Latin-1 file name (as Python reads it: caf\udce9): a clip's error
        for extension in (".mp4", ".txt"):
            touch(tmp_path / "clips" / os.fsdecode(name.encode("latin-1") + extension.encode()))
    bad, good = load_manifest(tmp_path / "clips")
    assert (bad.id, bad.problem) == ("caf\\udce9", f"{tmp_path / 'clips'}/caf\\udce9.mp4: the file name is not UTF-8 "
                                                   "text; rename it")
    assert (good.id, good.text, good.problem) == ("good", "x", None)  # the rest are read
    latin1 = tmp_path / os.fsdecode(b"d\xe9")
    latin1.mkdir()
    with pytest.raises(DataError, match=re.escape(f"{tmp_path}/d\\udce9: the path is not UTF-8 text; rename it")):
        load_manifest(latin1)


def test_auto_avsr_csv_with_wav_beside_each_video(tmp_path):
    touch(tmp_path / "lrs3/test/abc/00001.mp4")
    touch(tmp_path / "lrs3/test/abc/00001.wav")
    touch(tmp_path / "lrs3/test/abc/00002.mp4")
    (tmp_path / "test.csv").write_text("lrs3,test/abc/00001.mp4,94,12 34,HELLO THERE\n"
                                       "lrs3,test/abc/00002.mp4,50,56,A, COMMA\n")
    u = load_manifest(tmp_path / "test.csv")
    assert u[0].video == tmp_path / "lrs3/test/abc/00001.mp4" and u[0].audio == tmp_path / "lrs3/test/abc/00001.wav"
    assert u[0].text == "HELLO THERE" and u[0].id == "test/abc/00001"
    assert u[1].audio is None and u[1].text == "A, COMMA"


def test_auto_avsr_csv_as_its_preparation_writes_it_reads_the_text_files(tmp_path):
    """auto_avsr writes dataset,rel_path,frames,token_ids (no text) and each transcript in <dataset>_text_seg24s."""
    root = tmp_path / "lrs3"
    touch(root / "lrs3_video_seg24s/test/abc/00001.mp4")
    touch(root / "lrs3_video_seg24s/test/abc/00001.wav")
    (root / "lrs3_text_seg24s/test/abc").mkdir(parents=True)
    (root / "lrs3_text_seg24s/test/abc/00001.txt").write_text("HELLO  THERE\n")
    touch(root / "lrs3_video_seg24s/test/abc/00002.mp4")
    (root / "test.csv").write_text("lrs3,lrs3_video_seg24s/test/abc/00001.mp4,94,12 34\n")
    u = load_manifest(root / "test.csv")
    assert [(x.id, x.text, x.video, x.audio) for x in u] == [
        ("lrs3_video_seg24s/test/abc/00001", "HELLO THERE", root / "lrs3_video_seg24s/test/abc/00001.mp4",
         root / "lrs3_video_seg24s/test/abc/00001.wav")]
    (root / "test.csv").write_text("lrs3,lrs3_video_seg24s/test/abc/00002.mp4,50,56\n")  # no transcript
    (u,) = load_manifest(root / "test.csv")  # that utterance's error, said when its media are read
    assert re.fullmatch(r"\S*test\.csv:1: no text field and no transcript at \S*/lrs3_text_seg24s/test/abc/00002\.txt "
                        r"or \S*/lrs3_video_seg24s/test/abc/00002\.txt", u.problem), u.problem
    with pytest.raises(UtteranceError, match=re.escape(u.problem)) as e:
        u.check()
    assert e.value.exit_code == ExitCode.FAILURE


def test_a_transcript_missing_or_unreadable_is_its_utterance_s_error_and_a_broken_csv_the_manifest_s(tmp_path):
    """One row's transcript stopped the whole CSV, where one row's missing video is that utterance's error."""
    root = tmp_path / "lrs3"
    texts = root / "lrs3_text_seg24s/test/a"
    texts.mkdir(parents=True)
    for name in ("1", "2", "3"):
        touch(root / f"lrs3_video_seg24s/test/a/{name}.mp4")
    (texts / "1.txt").write_text("ONE")
    (texts / "3.txt").write_text("THREE")
    (texts / "3.txt").chmod(0)
    rows = "".join(f"lrs3,lrs3_video_seg24s/test/a/{name}.mp4,9,1\n" for name in ("1", "2", "3"))
    (root / "test.csv").write_text(rows)
    u = load_manifest(root / "test.csv")
    locked = not os.access(texts / "3.txt", os.R_OK)  # root reads anything
    assert [(x.id, x.text, x.problem is None) for x in u] == [
        ("lrs3_video_seg24s/test/a/1", "ONE", True), ("lrs3_video_seg24s/test/a/2", "", False),
        ("lrs3_video_seg24s/test/a/3", "" if locked else "THREE", not locked)]
    assert u[1].problem.startswith(f"{root / 'test.csv'}:2: no text field and no transcript at {texts / '2.txt'}")
    if locked:
        assert u[2].problem == f"{texts / '3.txt'}: cannot be read (Permission denied)"
    (root / "test.csv").write_text(rows + "lrs3,lrs3_video_seg24s/test/a/4.mp4\n")  # a row that is no row
    with pytest.raises(DataError, match=r"test\.csv:4: expected dataset,rel_path,frames,token_ids\[,text\]; got 2"):
        load_manifest(root / "test.csv")


def test_auto_avsr_labels_folder_beside_the_dataset_and_the_order_of_places(tmp_path, monkeypatch):
    """auto_avsr writes <root>/labels/<dataset>_<split>_transcript_lengths_seg<N>s.csv, rel_path relative to
    <root>/<dataset>/. Inside the CSV's folder is looked at before the folder beside it, whichever way the CSV is
    named (from its own folder, the path has no folder to step out of)."""
    name = "lrs3_test_transcript_lengths_seg24s.csv"
    for n in ("1", "2"):
        touch(tmp_path / f"lrs3/lrs3_video_seg24s/test/a/{n}.mp4")
        (tmp_path / "lrs3/lrs3_text_seg24s/test/a").mkdir(parents=True, exist_ok=True)
        (tmp_path / f"lrs3/lrs3_text_seg24s/test/a/{n}.txt").write_text(f"TEXT {n}")
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / name).write_text("lrs3,lrs3_video_seg24s/test/a/1.mp4,9,1\n"
                                            "lrs3,lrs3_video_seg24s/test/a/2.mp4,9,1\n")
    expected = [("TEXT 1", tmp_path / "lrs3/lrs3_video_seg24s/test/a/1.mp4"),
                ("TEXT 2", tmp_path / "lrs3/lrs3_video_seg24s/test/a/2.mp4")]
    assert [(u.text, u.video) for u in load_manifest(tmp_path / "labels" / name)] == expected
    monkeypatch.chdir(tmp_path / "labels")
    assert [(u.text, u.video.resolve()) for u in load_manifest(name)] == expected
    monkeypatch.chdir(tmp_path)
    assert [(u.text, u.video) for u in load_manifest(f"labels/{name}")] == [
        (text, video.relative_to(tmp_path)) for text, video in expected]  # "labels/..": no "labels/../" either

    touch(tmp_path / "labels/lrs3_video_seg24s/test/a/1.mp4")  # a copy inside the CSV's folder, with its transcript
    (tmp_path / "labels/lrs3_video_seg24s/test/a/1.txt").write_text("INSIDE")
    assert [u.text for u in load_manifest(tmp_path / "labels" / name)] == ["INSIDE", "TEXT 2"]


def test_folder_of_media_with_transcripts(tmp_path):
    touch(tmp_path / "a/one.mp4")
    (tmp_path / "a/one.txt").write_text("first  one\n")
    touch(tmp_path / "two.wav")
    (tmp_path / "two.txt").write_text("second")
    touch(tmp_path / "untranscribed.mp4")  # not part of the set: a noise file kept beside the clips, say
    touch(tmp_path / "four.mp4")  # its sound in an .aac beside it: one utterance, not an .aac taken for its video
    touch(tmp_path / "four.aac")
    (tmp_path / "four.txt").write_text("fourth")
    touch(tmp_path / "crops/three.mp4")  # auto_avsr's mouth crops: the sound in a .wav beside the video
    touch(tmp_path / "crops/three.wav")
    (tmp_path / "crops/three.txt").write_text("third")
    u = load_manifest(tmp_path)
    assert [(x.id, x.text, x.video is None, x.problem) for x in u] == [
        ("a/one", "first one", False, None), ("crops/three", "third", False, None), ("four", "fourth", False, None),
        ("two", "second", True, None)]
    assert (u[1].video.name, u[1].audio.name, u[3].audio.name) == ("three.mp4", "three.wav", "two.wav")
    assert (u[2].video.name, u[2].audio.name) == ("four.mp4", "four.aac")
    with pytest.raises(DataError, match="no media files with a same-named .txt"):  # no clip has one: no dataset
        load_manifest(touch(tmp_path / "empty" / "x.mp4").parent)


def test_a_raw_lrs3_folder_is_scored_against_its_text_line_not_its_word_timings(tmp_path):
    """LRS2/LRS3 as downloaded: each .txt holds "Text:", "Conf:" and a table of word timings."""
    touch(tmp_path / "0Fi83BHQsMA/00002.mp4")
    (tmp_path / "0Fi83BHQsMA/00002.txt").write_text("Text:  AS OF NEXT WEEK\nConf:  4\n\nWORD START END ASDSCORE\n"
                                                    "AS 0.10 0.20 5.1\nOF 0.20 0.30 5.2\n")
    touch(tmp_path / "plain/x.mp4")
    (tmp_path / "plain/x.txt").write_text("Text: a word\nand more\n")  # no Conf: line, so not that layout
    assert [(u.id, u.text) for u in load_manifest(tmp_path)] == [("0Fi83BHQsMA/00002", "AS OF NEXT WEEK"),
                                                                 ("plain/x", "Text: a word and more")]


def test_a_byte_order_mark_is_not_part_of_a_manifest(tmp_path):
    touch(tmp_path / "lrs3/test/a/1.mp4")
    (tmp_path / "m.csv").write_text("dataset,rel_path,frames,token_ids,text\nlrs3,test/a/1.mp4,9,1,HI\n",
                                    encoding="utf-8-sig")
    (tmp_path / "m.jsonl").write_text('{"id": "1", "video": "lrs3/test/a/1.mp4", "text": "hi"}\n',
                                      encoding="utf-8-sig")
    (tmp_path / "lrs3/test/a/1.txt").write_text("HI THERE", encoding="utf-8-sig")
    assert [(u.id, u.video, u.text) for u in load_manifest(tmp_path / "m.csv")] == [
        ("test/a/1", tmp_path / "lrs3/test/a/1.mp4", "HI")]
    assert [u.id for u in load_manifest(tmp_path / "m.jsonl")] == ["1"]
    assert [u.text for u in load_manifest(tmp_path / "lrs3")] == ["HI THERE"]


def test_a_csv_row_whose_video_is_missing_is_kept_for_its_own_error_in_either_layout(tmp_path):
    """rel_path relative to the CSV's folder (not below <dataset>/): a missing video is that utterance's error
    later, when it is read, not the whole manifest's now (it was, for want of a transcript at the wrong place)."""
    root = tmp_path / "lrs3"
    touch(root / "lrs3_video_seg16s/test/a/1.mp4")
    for name in ("1", "2"):
        (root / "lrs3_text_seg16s/test/a").mkdir(parents=True, exist_ok=True)
        (root / f"lrs3_text_seg16s/test/a/{name}.txt").write_text(f"TEXT {name}")
    (root / "t.csv").write_text("lrs3,lrs3_video_seg16s/test/a/1.mp4,9,1\nlrs3,lrs3_video_seg16s/test/a/2.mp4,9,1\n")
    u = load_manifest(root / "t.csv")
    assert [(x.text, x.video) for x in u] == [("TEXT 1", root / "lrs3_video_seg16s/test/a/1.mp4"),
                                              ("TEXT 2", root / "lrs3_video_seg16s/test/a/2.mp4")]
    (root / "t.csv").write_text("lrs3,lrs3_video_seg16s/test/a/3.mp4,9,1,WITH ITS TEXT\n")  # a fifth field
    (u,) = load_manifest(root / "t.csv")
    assert (u.text, u.video, u.audio) == ("WITH ITS TEXT", root / "lrs3/lrs3_video_seg16s/test/a/3.mp4", None)


def test_duplicate_ids_and_unknown_files_are_refused(tmp_path):
    (tmp_path / "m.jsonl").write_text('{"id": "x", "audio": "a.wav", "text": "a"}\n'
                                      '{"id": "x", "audio": "b.wav", "text": "b"}\n')
    with pytest.raises(DataError, match="'x' appears more than once"):
        load_manifest(tmp_path / "m.jsonl")
    with pytest.raises(DatasetMissing, match="no such manifest") as e:
        load_manifest(tmp_path / "nope.jsonl")
    assert e.value.exit_code == ExitCode.MISSING


def test_a_manifest_that_cannot_be_read_is_a_data_error(tmp_path):
    (tmp_path / "m.csv").mkdir()  # a folder named like a manifest: a folder of no media
    with pytest.raises(DataError, match="no media files"):
        load_manifest(tmp_path / "m.csv")


def test_text_that_is_not_utf8_is_refused_naming_the_file_and_line_it_is_in(tmp_path):
    """The file that is bad, not the manifest that led to it, and the line: it named the manifest (or the folder),
    and a line of none of them. A bad manifest is refused; a bad transcript is its utterance's error."""
    good = b'{"audio": "a.wav", "text": "cafe"}\n'
    (tmp_path / "latin1.jsonl").write_bytes(b"\xef\xbb\xbf" + good + good.replace(b"cafe", b"caf\xe9"))  # a BOM first
    with pytest.raises(DataError, match=r"^\S*latin1\.jsonl:2: not UTF-8 text \(byte 32 of the line is 0xe9\)"):
        load_manifest(tmp_path / "latin1.jsonl")
    (tmp_path / "latin1.csv").write_bytes(b"\xef\xbb\xbfdataset,rel_path,frames,token_ids,text\r\n"
                                          b"lrs3,a.mp4,9,1,CAF\xc9\r\n")
    with pytest.raises(DataError, match=r"^\S*latin1\.csv:2: not UTF-8 text \(byte 19 of the line is 0xc9\)"):
        load_manifest(tmp_path / "latin1.csv")

    touch(tmp_path / "lrs3/lrs3_video_seg24s/test/a/1.mp4")
    text = tmp_path / "lrs3/lrs3_text_seg24s/test/a/1.txt"
    text.parent.mkdir(parents=True)
    text.write_bytes(b"CAF\xc9\n")
    (tmp_path / "lrs3/test.csv").write_text("lrs3,lrs3_video_seg24s/test/a/1.mp4,9,1\n")
    assert [u.problem for u in load_manifest(tmp_path / "lrs3/test.csv")] == [
        f"{text}:1: not UTF-8 text (byte 4 of the line is 0xc9); save it as UTF-8"]
    touch(tmp_path / "folder/x.mp4")
    (tmp_path / "folder/x.txt").write_bytes(b"Text:  CAFE\nConf:  4\n\nCAF\xc9 0.1 0.2 5.1\n")
    assert [u.problem for u in load_manifest(tmp_path / "folder")] == [
        f"{tmp_path / 'folder/x.txt'}:4: not UTF-8 text (byte 4 of the line is 0xc9); save it as UTF-8"]


def test_a_manifest_without_read_permission_is_a_data_error(tmp_path):
    (tmp_path / "locked.jsonl").write_text('{"audio": "a.wav", "text": "a"}\n')
    (tmp_path / "locked.jsonl").chmod(0)
    if os.access(tmp_path / "locked.jsonl", os.R_OK):
        pytest.skip("root reads anything")
    with pytest.raises(DataError, match=r"locked\.jsonl: cannot be read \(Permission denied\)"):
        load_manifest(tmp_path / "locked.jsonl")


def test_named_dataset_lookup_and_missing_dataset_exit_4(tmp_path):
    with pytest.raises(DatasetMissing, match="set MOME_DATA or pass --data-root") as e:
        find_dataset("lrs3", None)
    assert e.value.exit_code == ExitCode.MISSING
    with pytest.raises(DatasetMissing, match="robots.ox.ac.uk.*auto_avsr"):
        find_dataset("lrs3", tmp_path)
    touch(tmp_path / "lrs3" / "test.csv")
    assert find_dataset("lrs3", tmp_path) == tmp_path / "lrs3" / "test.csv"
    assert find_dataset(str(tmp_path / "my.jsonl"), None) == tmp_path / "my.jsonl"


def test_a_named_dataset_is_found_where_auto_avsr_s_preparation_writes_its_labels(tmp_path):
    """--data-root auto_avsr's --root-dir: <root>/labels/<name>_<split>_transcript_lengths_seg<N>s.csv (or the same
    under <root>/<name>/), the shortest N when several were prepared, never a parallel run's unmerged piece; it was
    refused, exit 4, for want of <root>/lrs3/test.csv. The message names every place looked at."""
    labels = tmp_path / "labels"
    touch(labels / "lrs3_test_transcript_lengths_seg16s.4.0.csv")  # a piece of a parallel preparation
    touch(labels / "lrs3_train_transcript_lengths_seg16s.csv")  # another split
    with pytest.raises(DatasetMissing) as e:
        find_dataset("lrs3", tmp_path)
    assert str(e.value).startswith(f"lrs3: no test.jsonl, test.csv or test/ under {tmp_path / 'lrs3'}, and no "
                                   f"lrs3_test_transcript_lengths_seg<N>s.csv in {labels} or "
                                   f"{tmp_path / 'lrs3' / 'labels'}; "), e.value
    assert e.value.exit_code == ExitCode.MISSING and "--root-dir" in str(e.value)
    touch(labels / "lrs3_test_transcript_lengths_seg24s.csv")
    assert find_dataset("lrs3", tmp_path) == labels / "lrs3_test_transcript_lengths_seg24s.csv"
    touch(labels / "lrs3_test_transcript_lengths_seg16s.csv")
    assert find_dataset("lrs3", tmp_path) == labels / "lrs3_test_transcript_lengths_seg16s.csv"
    assert find_dataset("lrs3", tmp_path, "train") == labels / "lrs3_train_transcript_lengths_seg16s.csv"
    touch(tmp_path / "lrs3" / "test.csv")  # a manifest placed by hand comes first
    assert find_dataset("lrs3", tmp_path) == tmp_path / "lrs3" / "test.csv"
    with pytest.raises(DatasetMissing, match="lrs2: no val.jsonl"):
        find_dataset("lrs2", tmp_path, "val")
    touch(tmp_path / "lrs2" / "labels" / "lrs2_val_transcript_lengths_seg24s.csv")  # MOME_DATA/lrs2 is the root
    assert find_dataset("lrs2", tmp_path, "val") == tmp_path / "lrs2/labels/lrs2_val_transcript_lengths_seg24s.csv"


def test_a_folder_holding_the_split_s_manifest_is_read_through_it(tmp_path):
    """--dataset FOLDER --split test with FOLDER/test.jsonl (a synth corpus): that manifest, not the folder searched
    for media with transcripts (which mixed every split, or found none)."""
    touch(tmp_path / "test.csv")
    assert find_dataset(str(tmp_path), None) == tmp_path / "test.csv"
    touch(tmp_path / "test.jsonl")  # .jsonl first, as for a named dataset
    assert find_dataset(str(tmp_path), None) == tmp_path / "test.jsonl"
    for _ in range(2):  # a corpus folder without the split asked (a typo): said, not searched for media
        with pytest.raises(DatasetMissing, match=r"no valid\.jsonl or valid\.csv in it \(it holds test\.csv, "
                                                 r"test\.jsonl\): give --split one of those") as e:
            find_dataset(str(tmp_path), None, "valid")
        assert e.value.exit_code == ExitCode.MISSING
        (tmp_path / "valid.jsonl").mkdir(exist_ok=True)  # not a file
    media = tmp_path / "media"
    touch(media / "hypotheses.jsonl")  # no split's manifest: a folder of media with transcripts, searched
    assert find_dataset(str(media), None, "valid") == media


def test_frame_batches_respect_the_budget_and_cover_everything():
    lengths = [10, 200, 30, 30, 500, 80, 75, 20, 1000, 60]
    for shuffle in (False, True):
        batches = frame_batches(lengths, max_frames=300, shuffle=shuffle, seed=1, bucket=4)
        assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
        for b in batches:
            assert len(b) == 1 or max(lengths[i] for i in b) * len(b) <= 300
    assert frame_batches(lengths, 300) == frame_batches(lengths, 300)  # deterministic
    assert frame_batches(lengths, 300, shuffle=True, seed=1) == frame_batches(lengths, 300, shuffle=True, seed=1)
    assert frame_batches(lengths, 300, shuffle=True, seed=1) != frame_batches(lengths, 300, shuffle=True, seed=2)
