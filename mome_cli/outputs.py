"""Inputs found and outputs written: which files a run covers, where each transcript goes, in which formats.

Outputs mirror the inputs: a file found under a folder given as INPUT keeps its path below that folder, a file given
directly lands at the top. When two inputs would still map to the same output (same name in two INPUT folders, or
x.mp4 beside x.wav), every input falls back to its path below the inputs' common folder, and same-stem files keep
their extension in the name, so no two outputs ever collide. Every file is written to a temporary name and renamed.

Torch-free: the CLI may import it at any time.
"""

from __future__ import annotations

import errno
import fnmatch
import html
import json
import os
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from .files import atomic_write_text

# What a folder is searched for: the contract's kinds, and phones', camcorders', voice recorders' and older ones (not
# .ts, an MPEG transport stream but also a TypeScript source). Any other file ffmpeg reads is taken when named itself.
# A dataset folder's x.mp4 and x.aac are one clip: its lips from the video, its sound from the audio file.
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v", ".3gp", ".mts", ".m2ts", ".mpg", ".mpeg", ".wmv",
                    ".flv", ".ogv")
AUDIO_EXTENSIONS = (".wav", ".flac", ".mp3", ".m4a", ".ogg", ".opus", ".oga", ".aac", ".amr", ".wma", ".aif", ".aiff")
MEDIA_EXTENSIONS = VIDEO_EXTENSIONS + AUDIO_EXTENSIONS
FORMATS = ("txt", "json", "srt", "vtt", "jsonl")
CUE_TIMES = re.compile(r"\d\d:\d\d:\d\d[,.]\d{3} --> ")  # the line before a cue's text in srt and vtt
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")  # embeddings, overrides, isolates
ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """"1 utterance", "2 utterances" ("1 batch", "2 batches" with plural="batches"): a number and its noun."""
    return f"{n} {noun if n == 1 else plural or noun + 's'}"


def one_line(text) -> str:
    """text (a file's name, a message naming one) as one line that a terminal shows as it is: control characters
    (a tab, a newline, ESC: a file may be named with them) escaped as \\t, \\n, \\r, \\xNN, and line separators,
    undecodable bytes (surrogates, which a strict UTF-8 stream refuses) and bidirectional overrides as \\uNNNN.
    A backslash stays as it is: Windows paths have them."""

    def shown(ch: str) -> str:
        if ch in ESCAPES:
            return ESCAPES[ch]
        category = unicodedata.category(ch)
        if category == "Cc":
            return f"\\x{ord(ch):02x}"
        return f"\\u{ord(ch):04x}" if category in ("Zl", "Zp", "Cs") or ch in BIDI_CONTROLS else ch

    return "".join(map(shown, str(text)))


def clean_text(text: str) -> str:
    """One line with single spaces, without control characters or bidirectional overrides: a model that emits bytes
    such as ESC (an untrained or byte-level one can) must not write terminal escape sequences to a user's terminal or
    transcripts, nor text that displays in another order than it reads."""
    text = "".join(" " if unicodedata.category(ch) == "Cc" or ch in BIDI_CONTROLS else ch for ch in text)
    return " ".join(text.split())


@dataclass
class Input:
    path: Path  # the media file
    root: Path | None  # the folder given as INPUT that it was found under, None for a file given directly


@dataclass
class Transcript:
    """What transcribing one input produced."""

    text: str  # the segments' texts joined by spaces
    segments: list = field(default_factory=list)  # [{"start": s, "end": s, "text": str}], seconds
    mode: str = "av"
    rate: tuple = ()
    model: str = ""
    duration: float = 0.0  # seconds of media
    warnings: list = field(default_factory=list)


def collect_inputs(arguments: list[str], recursive: bool = False, glob: str | None = None,
                   empty: list | None = None) -> list[Input]:
    """Media files named by INPUT arguments (files, or folders searched for media, with names matching glob if
    given: a file-name pattern, matched without regard to case as the media extensions are), in a stable order; the
    folders in which none was found are added to empty."""
    found = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            candidates = path.rglob("*") if recursive else path.glob("*")
            media = sorted(p for p in candidates if p.is_file() and p.suffix.lower() in MEDIA_EXTENSIONS
                           and (glob is None or fnmatch.fnmatch(p.name.lower(), glob.lower())))
            found += [Input(p, path) for p in media]
            if not media and empty is not None:
                empty.append(argument)
        else:
            found.append(Input(path, None))  # missing or bad files are reported per input, later
    unique, seen = [], set()
    for item in found:
        key = item.path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(item)
    return unique


def output_stems(inputs: list[Input]) -> list[Path]:
    """Relative output path (without extension) for each input; distinct for distinct inputs."""

    def stems(relative: list[Path]) -> list[Path]:
        keep = set()  # inputs named with their extension: x.mp4 beside x.wav, then x.mp4.wav beside that x.mp4
        while True:
            named = [r if i in keep else r.with_suffix("") for i, r in enumerate(relative)]
            clash = _clashing(named) - keep
            if not clash:
                return named
            keep |= clash

    preferred = [Path(i.path.name) if i.root is None else i.path.relative_to(i.root) for i in inputs]
    chosen = stems(preferred)
    if len(set(chosen)) < len(chosen):
        common = Path(os.path.commonpath([str(i.path.resolve().parent) for i in inputs]))
        chosen = stems([i.path.resolve().relative_to(common) for i in inputs])
    return chosen


def _clashing(names: list[Path]) -> set[int]:
    """Indices of the names that are not unique."""
    by_name = {}
    for i, name in enumerate(names):
        by_name.setdefault(name, []).append(i)
    return {i for group in by_name.values() if len(group) > 1 for i in group}


def output_path(out_dir: Path, stem: Path, fmt: str) -> Path:
    return out_dir / stem.parent / f"{stem.name}.{fmt}"


def timestamp(seconds: float, separator: str) -> str:
    """HH:MM:SS<sep>mmm, as SRT (',') and WebVTT ('.') write it."""
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{separator}{ms:03d}"


def render(transcript: Transcript, fmt: str) -> str:
    """The text of one output format."""
    segments = [s for s in transcript.segments if s["text"].strip()]
    if fmt == "txt":  # nothing said (a silent input): no line, as srt and jsonl have no cue and vtt its header alone
        return transcript.text + "\n" if transcript.text else ""
    if fmt == "json":
        document = {
            "text": transcript.text,
            "segments": transcript.segments,
            "mode": transcript.mode,
            "rate": list(transcript.rate),
            "model": transcript.model,
            "duration": round(transcript.duration, 3),
            "warnings": transcript.warnings,
        }
        return json.dumps(document, ensure_ascii=False, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in transcript.segments)
    if fmt == "srt":  # a cue's text holds no "-->", which readers take for a cue's times
        cues = [f"{n}\n{timestamp(s['start'], ',')} --> {timestamp(s['end'], ',')}\n"
                f"{re.sub('-+>', '->', s['text'].strip())}\n" for n, s in enumerate(segments, 1)]
        return "\n".join(cues)
    if fmt == "vtt":  # WebVTT cue text is markup: &, < and > as character references (so "-->" is not there either)
        cues = [f"{timestamp(s['start'], '.')} --> {timestamp(s['end'], '.')}\n{vtt_text(s['text'].strip())}\n"
                for s in segments]
        return "WEBVTT\n\n" + "\n".join(cues)
    raise ValueError(f"unknown format {fmt!r}; choose from {', '.join(FORMATS)}")


def vtt_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def read_text(out_dir: Path, stem: Path, formats: list[str]) -> str:
    """The transcript's text as written earlier in one of formats (the first of them that reads back); OSError or
    ValueError if none does. txt and json hold the text itself; jsonl, srt and vtt their segments' texts."""
    problem: Exception = FileNotFoundError(f"no output of {stem} in {out_dir}")
    for fmt in formats:
        try:
            written = output_path(out_dir, stem, fmt).read_text(encoding="utf-8")
            if fmt == "txt":
                return written.removesuffix("\n")
            if fmt == "json":
                texts = [json.loads(written)["text"]]
            elif fmt == "jsonl":
                texts = [json.loads(line)["text"] for line in written.splitlines() if line.strip()]
            else:  # srt, vtt: a cue's text is the line after its "start --> end" line
                lines = written.splitlines()
                texts = [lines[i + 1] for i, line in enumerate(lines[:-1]) if CUE_TIMES.match(line)]
                texts = [html.unescape(t) for t in texts] if fmt == "vtt" else texts
            if not all(isinstance(t, str) for t in texts):  # an edited file: {"text": null}
                raise ValueError(f"{output_path(out_dir, stem, fmt)}: a text that is not text")
            return " ".join(t for t in texts if t)
        except (OSError, ValueError, KeyError, TypeError) as e:
            problem = e
    raise problem if isinstance(problem, OSError) else ValueError(f"{stem}: {problem}")


def write_outputs(transcript: Transcript, out_dir: Path, stem: Path, formats: list[str]) -> list[Path]:
    """Write every format, each atomically; returns the paths written. OSError names the file that could not be
    written; an output name that a folder holds is found before any format is written."""
    paths = [output_path(out_dir, stem, fmt) for fmt in formats]
    for path in paths:
        if path.is_dir():
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
        taken = next((folder for folder in path.parents if folder.exists()), None)
        if taken is not None and not taken.is_dir():  # mkdir would say "File exists"
            raise NotADirectoryError(errno.ENOTDIR, f"{taken} is a file, not a folder", str(path))
    for fmt, path in zip(formats, paths):
        try:
            atomic_write_text(path, render(transcript, fmt))
        except OSError as e:
            raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    return paths


__all__ = ["VIDEO_EXTENSIONS", "AUDIO_EXTENSIONS", "MEDIA_EXTENSIONS", "FORMATS", "counted", "one_line", "clean_text",
           "Input", "Transcript", "collect_inputs", "output_stems", "output_path", "timestamp", "render", "read_text",
           "write_outputs"]
