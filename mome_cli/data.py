"""Datasets: manifests in, utterances out, and batches of utterances by frame budget.

Three layouts are read (CLI-CONTRACT.md, Manifests):
- JSON lines: {"id", "video", "audio"?, "text"}, paths relative to the manifest's folder; no "audio" means the video's
  own audio track, no "video" means audio only.
- The auto_avsr CSV of LRS2/LRS3 (dataset,rel_path,frames,token_ids as its preparation writes it, the transcripts in
  its <dataset>_text_seg<N>s/ .txt files; or with the text as a fifth field): mouth-crop mp4s with a .wav beside
  each, found at the first of <CSV folder>/<dataset>/<rel_path>, <CSV folder>/<rel_path> and
  <CSV folder>/../<dataset>/<rel_path> (the CSV where auto_avsr writes it, in <root>/labels/) that exists.
- A folder of media files, each with a same-named .txt transcript beside it (x.mp4 and x.wav: one utterance).

A CSV row whose transcript is missing or unreadable, or a folder's clip whose transcript is unreadable (or whose file
name is not UTF-8), is kept with its problem,
that utterance's error where its media are read (Utterance.check), as a missing video is; a manifest that cannot be
parsed, or a JSON line holding what UTF-8 cannot write (a lone surrogate), is a DataError.

Named datasets (lrs3, lrs2) are looked up as <data root>/<name>/<split>.jsonl | .csv | <split>/, then as auto_avsr's
label CSV, <data root>[/<name>]/labels/<name>_<split>_transcript_lengths_seg<N>s.csv (the data root is the
preparation's --root-dir); when none is there, DatasetMissing (exit 4) says where it looked and how to obtain and
place it. A folder given as a path is read through its <split>.jsonl or <split>.csv when it holds one. Torch-free.
"""

from __future__ import annotations

import csv
import io
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from .outputs import AUDIO_EXTENSIONS, MEDIA_EXTENSIONS
from .report import ExitCode


NAMED_DATASETS = {
    "lrs3": "LRS3-TED (https://www.robots.ox.ac.uk/~vgg/data/lip_reading/lrs3.html, licence agreement with the BBC / "
            "Oxford VGG)",
    "lrs2": "LRS2-BBC (https://www.robots.ox.ac.uk/~vgg/data/lip_reading/lrs2.html, licence agreement with the BBC)",
}


class DataError(Exception):
    """A manifest that cannot be read; str() names the file (and line) and the problem."""

    exit_code = ExitCode.FAILURE


class DatasetMissing(DataError):
    exit_code = ExitCode.MISSING


class UtteranceError(DataError):
    """One utterance that cannot be used (Utterance.problem) where the rest of the manifest can: that utterance's own
    error, as a missing video is (evaluate scores the rest and exits 3, train skips it with a warning); str() names
    the file."""


@dataclass
class Utterance:
    id: str
    text: str  # "" when there is a problem
    video: Path | None = None  # video file (mouth crops or full face); None: audio only
    audio: Path | None = None  # separate audio file; None: the video's own track
    problem: str | None = None  # why it cannot be used (transcript missing or unreadable, name not UTF-8), naming it

    @property
    def media(self) -> Path:
        """The file that holds the audio (or the video when there is no separate audio)."""
        return self.audio or self.video

    def check(self) -> None:
        """UtteranceError when it cannot be used: raised where its media are read, so that it is reported with
        theirs, one utterance at a time."""
        if self.problem is not None:
            raise UtteranceError(self.problem)


def _surrogate(text: str) -> str | None:
    """The first lone surrogate in text, as an escape (\\ud800), or None. A JSON \\ud800 escape (half of a UTF-16 pair)
    makes one, and so does a file name's byte that is not UTF-8 (Python reads it so): it is no character, UTF-8 cannot
    write it, and a report or transcript holding it could not be written at the end of a run."""
    found = re.search("[\ud800-\udfff]", text)
    return _printable(found.group()) if found else None


def _printable(text: str) -> str:
    """text with its lone surrogates written as escapes, to be named in a message or a report."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _resolve(base: Path, value: str) -> Path:
    p = Path(value)
    return p if p.is_absolute() else base / p


def _read_text(path: Path) -> str:
    """A UTF-8 text file's text, less the byte-order mark that Windows' editors put first; DataError naming the file,
    the line and the byte when it is not UTF-8 (a manifest or transcript saved as Latin-1, say)."""
    data = path.read_bytes()
    try:
        return data.removeprefix(b"\xef\xbb\xbf").decode("utf-8")
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        column = e.start - e.object.rfind(b"\n", 0, e.start)  # 1 for the line's first byte
        raise DataError(f"{path}:{line}: not UTF-8 text (byte {column} of the line is 0x{e.object[e.start]:02x}); "
                        "save it as UTF-8") from e


def read_jsonl(path: Path) -> list[Utterance]:
    utterances = []
    with io.StringIO(_read_text(path), newline=None) as f:  # lines end as in a file opened as text
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not JSON ({e.msg})") from e
            if not isinstance(row, dict) or "text" not in row or not (row.get("video") or row.get("audio")):
                raise DataError(f"{path}:{n}: needs \"text\" and at least one of \"video\", \"audio\"")
            wrong = [key for key in ("text", "video", "audio") if key in row and not isinstance(row[key], str)
                     and not (key != "text" and row[key] is None)]
            if wrong:
                raise DataError(f"{path}:{n}: \"{wrong[0]}\" must be a string, not {json.dumps(row[wrong[0]])}")
            for key in ("id", "text", "video", "audio"):
                if isinstance(row.get(key), str) and (surrogate := _surrogate(row[key])):
                    raise DataError(f"{path}:{n}: \"{key}\" holds {surrogate}, a lone surrogate (half of a UTF-16 "
                                    "pair), which is no character")
            video = _resolve(path.parent, row["video"]) if row.get("video") else None
            audio = _resolve(path.parent, row["audio"]) if row.get("audio") else None
            utterances.append(Utterance(str(row.get("id") or (video or audio).stem), str(row["text"]), video, audio))
    return utterances


def read_auto_avsr_csv(path: Path) -> list[Utterance]:
    """auto_avsr's label CSV: dataset,rel_path,frames,token_ids as its preparation writes it, the transcript in the
    .txt that it writes under <dataset>_text_seg<N>s/ (or beside the video); or with the text as a fifth field."""
    utterances = []
    with io.StringIO(_read_text(path), newline="") as f:  # newline="": the csv module reads line ends itself
        for n, row in enumerate(csv.reader(f), 1):
            if not row or (n == 1 and row[0] == "dataset"):  # an optional header line
                continue
            if len(row) < 4:
                raise DataError(f"{path}:{n}: expected dataset,rel_path,frames,token_ids[,text]; got {len(row)} "
                                "fields")
            dataset, rel_path = row[0], row[1]
            places = _auto_avsr_places(path, dataset, rel_path)
            video = next((p for p in places if p.exists()), None)
            # A missing video, or transcript, is that utterance's error, later: the rest of the manifest is used.
            if len(row) > 4:
                video, text, problem = video or places[0], ",".join(row[4:]), None
            else:  # with the video missing, its transcript is looked for in every place
                video, text, problem = _auto_avsr_text([video] if video else places, f"{path}:{n}")
            wav = video.with_suffix(".wav")
            utterances.append(Utterance(rel_path.rsplit(".", 1)[0], text, video, wav if wav.exists() else None,
                                        problem))
    return utterances


def _auto_avsr_places(csv_path: Path, dataset: str, rel_path: str) -> list[Path]:
    """Where a row's video may be, in the order looked: auto_avsr resolves rel_path against <root>/<dataset>/ and
    writes its label CSVs to <root>/labels/, so the root is the CSV's own folder or the one above it. Places inside
    the CSV's folder come first (<dataset>/<rel_path>, then <rel_path> beside the CSV, as in <data root>/lrs3/test.csv),
    then <dataset>/<rel_path> beside the CSV's folder: a tree outside that folder is used only when none inside it
    has the video."""
    here = csv_path.parent
    above = here.parent if here.name not in ("", "..") else here / ".."  # "." and ".." have no name to step out of
    return list(dict.fromkeys([here / dataset / rel_path, here / rel_path, above / dataset / rel_path]))  # once each


def _auto_avsr_text(videos: list[Path], where: str) -> tuple[Path, str, str | None]:
    """(video, text, problem) of the first of videos with a transcript, as auto_avsr saved it: <dataset>_text_seg<N>s/
    ... in place of <dataset>_video_seg<N>s/..., or a .txt beside the video. None has one: the first video, no text,
    and the problem naming the row (where) and every file looked for."""
    looked = []
    for video in videos:
        parts = list(video.with_suffix(".txt").parts)
        texts = [Path(*[re.sub(r"_video_seg(\d+s)$", r"_text_seg\1", p) for p in parts]), video.with_suffix(".txt")]
        for candidate in texts:
            if candidate.is_file():
                return video, *_try_transcript(candidate)
        looked += texts
    return videos[0], "", (f"{where}: no text field and no transcript at {', '.join(map(str, looked[:-1]))} or "
                           f"{looked[-1]}")


def _try_transcript(path: Path) -> tuple[str, str | None]:
    """(text, None), or ("", the problem naming the file) when it cannot be read: one utterance's error."""
    try:
        return read_transcript(path), None
    except DataError as e:
        return "", str(e)
    except OSError as e:
        return "", f"{path}: cannot be read ({e.strerror or e})"


def read_transcript(path: Path) -> str:
    """A transcript file's text on one line: the whole file, or the line after "Text:" in LRS2/LRS3's own layout
    ("Text:  WORDS" then "Conf:" and a table of word timings, which are not what was said)."""
    text = _read_text(path)
    lines = text.strip().splitlines()
    if len(lines) > 1 and lines[0].startswith("Text:") and lines[1].startswith("Conf:"):
        text = lines[0][len("Text:"):]
    return " ".join(text.split())


def read_folder(folder: Path) -> list[Utterance]:
    """Media files with a same-named .txt transcript; a video and an audio file of the same name (x.mp4 and x.wav, as
    auto_avsr writes mouth crops) are one utterance, its lips from the one and its sound from the other. Media without
    a transcript are not part of the set (a noise file kept beside the clips, say); a clip whose transcript cannot be
    read is that clip's error; a folder where no clip has one is no dataset."""
    by_stem: dict[Path, dict[str, Path]] = {}
    for media in sorted(p for p in folder.rglob("*") if p.suffix.lower() in MEDIA_EXTENSIONS and p.is_file()):
        kind = "audio" if media.suffix.lower() in AUDIO_EXTENSIONS else "video"
        by_stem.setdefault(media.with_suffix(""), {}).setdefault(kind, media)
    utterances = []
    for stem, files in by_stem.items():
        transcript = stem.with_name(stem.name + ".txt")
        if not transcript.is_file():
            continue
        rel = stem.relative_to(folder).as_posix()
        if _surrogate(rel):  # its id, and any message naming it, could not be written as UTF-8
            media = _printable(str(files.get("video") or files["audio"]))
            text, problem, rel = "", f"{media}: the file name is not UTF-8 text; rename it", _printable(rel)
        else:
            text, problem = _try_transcript(transcript)
        utterances.append(Utterance(rel, text, files.get("video"), files.get("audio"), problem))
    if not utterances:  # not a folder of transcribed clips at all (auto_avsr's video folder, say)
        raise DataError(f"{folder}: no media files with a same-named .txt transcript")
    return utterances


def load_manifest(path) -> list[Utterance]:
    """Utterances of a .jsonl / .csv manifest or of a folder; DataError when it cannot be read (DatasetMissing, exit 4,
    when it is not there)."""
    path = Path(path)
    if _surrogate(str(path)):
        raise DataError(f"{_printable(str(path))}: the path is not UTF-8 text; rename it (reports, written as UTF-8, "
                        "could not name what is in it)")
    if not path.exists():
        raise DatasetMissing(f"{path}: no such manifest or folder (give a .jsonl or auto_avsr .csv manifest, or a "
                             "folder of media files with .txt transcripts beside them)")
    if not path.is_dir() and path.suffix not in (".jsonl", ".csv"):
        raise DataError(f"{path}: a manifest is a .jsonl or .csv file, or a folder")
    read = read_folder if path.is_dir() else read_jsonl if path.suffix == ".jsonl" else read_auto_avsr_csv
    try:
        utterances = read(path)
    except OSError as e:
        raise DataError(f"{e.filename or path}: cannot be read ({e.strerror or e})") from e
    if not utterances:
        raise DataError(f"{path}: no utterances")
    ids = [u.id for u in utterances]
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: utterance id {duplicate!r} appears more than once")
    return utterances


def find_dataset(name: str, data_root: str | Path | None, split: str = "test") -> Path:
    """The manifest (or folder) of a dataset given by name (lrs3, lrs2) or path.

    A name is looked up under the data root: <root>/<name>/<split>.jsonl | .csv | <split>/, then the label CSV that
    auto_avsr's preparation writes when the root is its --root-dir (or <root>/<name> is):
    labels/<name>_<split>_transcript_lengths_seg<N>s.csv, the shortest N when several were prepared. A folder given
    as a path that holds <split>.jsonl or <split>.csv (as a corpus of `python -m mome_cli.synth` does) is that
    manifest, not a folder to search for media; any other path is read as it is."""
    if name not in NAMED_DATASETS:
        return split_manifest(Path(name), (split,), "give --split one of those, or the manifest itself")
    if data_root is None:
        raise DatasetMissing(f"{name}: no data root: set MOME_DATA or pass --data-root; " + _how_to(name))
    root = Path(data_root)
    base = root / name
    for candidate in (*_split_manifests(base, split), base / split):
        if candidate.exists():
            return candidate
    labels = [root / "labels", base / "labels"]
    for folder in labels:
        if found := _auto_avsr_labels(folder, name, split):
            return found
    raise DatasetMissing(f"{name}: no {split}.jsonl, {split}.csv or {split}/ under {base}, and no "
                         f"{name}_{split}{AUTO_AVSR_LABELS} in {labels[0]} or {labels[1]}; " + _how_to(name))


SPLIT_NAMES = ("train", "valid", "val", "dev", "test")  # a folder's manifests of these names make it a corpus folder
AUTO_AVSR_LABELS = "_transcript_lengths_seg<N>s.csv"  # after <dataset>_<split>: auto_avsr's label CSV


def split_manifest(folder: Path, splits: tuple[str, ...], fix: str) -> Path:
    """A folder's manifest of the first of splits it holds (<split>.jsonl, else <split>.csv), as a corpus of
    `python -m mome_cli.synth` has them; the folder itself when it holds no split's manifest (a folder of media with
    transcripts), and a path that is no folder as it is. A folder with other splits' manifests only is
    DatasetMissing, naming them and fix: a mistyped split, not a folder to search for media."""
    if not folder.is_dir():
        return folder
    for split in splits:
        if found := next((c for c in _split_manifests(folder, split) if c.is_file()), None):
            return found
    others = sorted(p.name for s in SPLIT_NAMES for p in _split_manifests(folder, s) if p.is_file())
    if others:
        wanted = (f"{splits[0]}.jsonl or {splits[0]}.csv" if len(splits) == 1 else
                  f"{', '.join(splits[:-1])} or {splits[-1]} manifest (.jsonl or .csv)")
        raise DatasetMissing(f"{folder}: no {wanted} in it (it holds {', '.join(others)}): {fix}")
    return folder


def _split_manifests(folder: Path, split: str) -> tuple[Path, Path]:
    return folder / f"{split}.jsonl", folder / f"{split}.csv"


def _auto_avsr_labels(folder: Path, name: str, split: str) -> Path | None:
    """folder/<name>_<split>_transcript_lengths_seg<N>s.csv with the smallest N, or None. (The pieces a parallel
    preparation writes before merging them, ...seg<N>s.<groups>.<job>.csv, are not a split.)"""
    pattern = re.compile(re.escape(f"{name}_{split}_transcript_lengths_seg") + r"(\d+)s\.csv")
    try:
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.fullmatch(p.name)) and p.is_file()]
    except OSError:  # no such folder (or not one)
        return None
    return min(found)[1] if found else None


def _how_to(name: str) -> str:
    return (f"{name} is not downloadable here: request it from {NAMED_DATASETS[name]}, prepare mouth crops with "
            f"auto_avsr's preparation and pass its --root-dir as the data root (its {name} CSV labels work as they "
            f"are), or place them under <data root>/{name}/ with <split>.csv (or a <split>.jsonl manifest) there")


def frame_batches(lengths: list[int], max_frames: int, shuffle: bool = False, seed: int = 0,
                  bucket: int = 100) -> list[list[int]]:
    """Indices grouped into batches whose padded size (count x longest) stays within max_frames.

    Utterances are sorted by length (within random buckets of `bucket` when shuffling), so a batch holds similar
    lengths and little padding; batch order is shuffled too. An utterance longer than max_frames is a batch alone.
    """
    order = list(range(len(lengths)))
    rng = random.Random(seed)
    if shuffle:
        rng.shuffle(order)
        order = [i for at in range(0, len(order), bucket)
                 for i in sorted(order[at : at + bucket], key=lambda j: lengths[j])]
    else:
        order.sort(key=lambda j: lengths[j])
    batches, current, longest = [], [], 0
    for i in order:
        if current and max(longest, lengths[i]) * (len(current) + 1) > max_frames:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, lengths[i])
    if current:
        batches.append(current)
    if shuffle:
        rng.shuffle(batches)
    return batches


__all__ = ["DataError", "DatasetMissing", "UtteranceError", "Utterance", "load_manifest", "find_dataset",
           "split_manifest",
           "frame_batches", "read_jsonl", "read_auto_avsr_csv", "read_folder"]
