"""`mome transcribe` as a library call: many inputs in, one transcript per input and format out, and a Report.

The model is loaded once, only if some input has work to do. Inputs are prepared one by one (a bad file is reported
on one line and the batch goes on) and decoded in groups of `batch_size` clips, whose segments are batched together;
a background thread prepares them up to one group ahead, from before the model loads (preprocess.ReadAhead), or each
at its turn when that means face detection on the GPU beside the model's CUDA graphs. Reading ahead starts no clip
while more than READ_AHEAD_SECONDS of media read waits to be taken (so it holds at most that plus one clip); when the
run ends early (Ctrl-C, a model that does not load), the read in flight stops at its next chunk of video or batch of
face detection and is waited for, writing nothing.
An input whose every output exists already is skipped unless `overwrite` (with `stdout`, its text is read back from
them and printed); otherwise only the formats it lacks are written, each atomically.
"""

from __future__ import annotations

import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .outputs import FORMATS, Input, clean_text, counted, one_line, output_path, output_stems, read_text, write_outputs
from .report import Report


@dataclass
class TranscribeJob:
    inputs: list[Input]
    output_dir: Path
    formats: list[str] = field(default_factory=lambda: ["txt"])  # none: no files (--stdout alone)
    overwrite: bool = False
    stdout: bool = False  # print "<input>\t<text>" lines
    model: str = "demo"
    adapter: str | None = None
    device: str = "auto"
    cache_dir: Path | None = None  # preprocessed clips; None: no cache
    verbose: int = 0  # -v: the model, and each file's length, mode, rate and times; -vv: its segments too


READ_AHEAD_SECONDS = 600.0  # media read ahead and not yet taken, in seconds of clip: ~180 MB of ROIs and audio

def stdout_line(path, text: str) -> str:
    """One `<input>\\t<text>` line of --stdout: the name as one_line() shows it, so that a line is always one input
    and a terminal shows it as it is; a text read back from an edited file is put on one line."""
    return f"{one_line(path)}\t{clean_text(text)}"


class StdoutError(Exception):
    """--stdout's lines cannot be written (a full disk, a device that refuses them): the run ends, exit 1."""


class OutputFolderError(Exception):
    """The output folder cannot be made or written in: said before any input is read, exit 1."""


def print_line(path, text: str) -> None:
    """A --stdout line; StdoutError if it cannot be written (a closed pipe, `| head`, is left to end the run as
    click ends it: at once, quietly)."""
    try:
        print(stdout_line(path, text), file=sys.stdout, flush=True)
    except BrokenPipeError:
        raise
    except OSError as e:
        raise StdoutError(f"cannot write to stdout: {e.strerror or e}") from e


def expand_formats(formats) -> list[str]:
    chosen = []
    for f in formats:
        for g in FORMATS if f == "all" else [f]:
            if g not in chosen:
                chosen.append(g)
    return chosen


def face_detection_on_gpu(options) -> bool:
    """Whether preparing inputs may run face-alignment on CUDA (video that is not mouth crops, on a GPU)."""
    if options.roi or options.mode == "a":
        return False
    from .lips import resolve_device

    return resolve_device(options.device) != "cpu"


def run(job: TranscribeJob, preprocess_options, recognize_options, log, progress=None) -> Report:
    """Transcribe job.inputs; log(message) prints a line on stderr; progress(advance) moves a bar."""
    from .files import removed_if_empty, writable_folder
    from .media import MediaError
    from .preprocess import Preprocessor, ReadAhead
    from .presets import check_options

    report = Report()
    todo, done = [], []  # (input, stem, the formats to write); (input, stem) of those whose outputs all exist
    for item, stem in zip(job.inputs, output_stems(job.inputs)):
        formats = [f for f in job.formats if job.overwrite or not output_path(job.output_dir, stem, f).is_file()]
        if formats or not job.formats:
            todo.append((item, stem, formats))
        else:
            done.append((item, stem))

    # Options that the model refuses are refused before anything is printed or read, from its config (no torch: the
    # device is checked here only when no model will be loaded); then the skipped inputs are counted and printed.
    check_options(job.model, job.adapter, None if todo else job.device, recognize_options)
    for item, stem in done:
        report.skipped += 1
        if job.stdout:
            try:
                text = read_text(job.output_dir, stem, job.formats)
            except (OSError, ValueError) as e:
                log(f"warning: {item.path}: its outputs exist (skipped) but its text cannot be read back from them: "
                    f"{e}")
            else:
                print_line(item.path, text)
        progress and progress(1)
    if not todo:
        return report
    try:
        made = writable_folder(job.output_dir) if job.formats else []
    except OSError as e:
        raise OutputFolderError(f"{one_line(job.output_dir)}: cannot write outputs there: {e.strerror or e}") from e

    def detail(level: int, message: str) -> None:  # -v and more
        if job.verbose >= level:
            log(message)

    stop = threading.Event()  # set when the run ends early: the read in flight then stops at its next chunk
    preprocess = Preprocessor(preprocess_options, cache_dir=job.cache_dir, stop=stop)

    def prepare(path):  # in ReadAhead's thread, the only one that calls preprocess
        started = time.perf_counter()
        clip = preprocess(path)
        return clip, time.perf_counter() - started

    batch_clips = max(1, recognize_options.batch_size)
    # The first batch is read while torch is imported and the model loads, each next one while the one before is
    # transcribed; but not when reading runs face detection on the GPU: a CUDA graph being captured in this thread
    # (decoding, Whisper) fails if another thread calls CUDA meanwhile. Each input is then read at its turn.
    ahead = 0 if face_detection_on_gpu(preprocess_options) else batch_clips
    with removed_if_empty(made), ReadAhead(prepare, [item.path for item, *_ in todo], ahead=ahead, stop=stop,
                                           cost=lambda prepared: prepared[0].duration,
                                           budget=READ_AHEAD_SECONDS) as prepared:
        from .recognizer import load_recognizer, shadowed_preset

        if warning := shadowed_preset(job.model):
            log(warning)
        started = time.perf_counter()
        recognizer = load_recognizer(job.model, job.adapter, job.device)  # MissingModelError etc. end the whole run
        detail(1, f"model {job.model}: {recognizer.describe()}; loaded in {time.perf_counter() - started:.2f} s")
        o = recognize_options
        recognizer.rate_for(o.mode, o.rate, o.any_rate)  # a bad --rate is refused before any work (UsageProblem)
        if warning := recognizer.untrained_mode(o.mode):
            log(warning)
        recognizer.segment_limit(o.max_segment)  # and so is a --max-segment the model cannot take
        if job.model == "tiny" and job.adapter is None:
            log("warning: --model tiny is random and untrained: its transcripts are meaningless")
        for at in range(0, len(todo), batch_clips):
            ready = []
            for item, stem, formats in todo[at : at + batch_clips]:
                try:
                    clip, seconds = prepared.take()
                except MediaError as e:
                    log(f"error: {e}")
                    report.failed += 1
                    progress and progress(1)
                    continue
                detail(1, f"{item.path}: {clip.duration:.2f} s, read in {seconds:.2f} s")
                ready.append((item, stem, formats, clip))
            if not ready:
                continue
            started = time.perf_counter()
            transcripts = recognizer.transcribe_many([clip for *_, clip in ready], recognize_options)
            detail(1, f"{counted(len(ready), 'file')} transcribed"
                      f"{' together' * (len(ready) > 1)} in {time.perf_counter() - started:.2f} s")
            for (item, stem, formats, _), transcript in zip(ready, transcripts):
                for warning in transcript.warnings:  # the clip's and decoding's, once it is transcribed
                    log(f"warning: {item.path}: {warning}")
                detail(1, f"{item.path}: mode {transcript.mode}, rate {','.join(map(str, transcript.rate))}, "
                          f"{counted(len(transcript.segments), 'segment')}")
                for segment in transcript.segments:
                    detail(2, f"  [{segment['start']:.2f} -> {segment['end']:.2f}] {segment['text']}")
                try:
                    write_outputs(transcript, job.output_dir, stem, formats)
                except OSError as e:
                    log(f"error: {item.path}: cannot write {e.filename or job.output_dir}: {e.strerror or e}")
                    report.failed += 1
                else:
                    report.ok += 1
                    if job.stdout:
                        print_line(item.path, transcript.text)
                progress and progress(1)
    return report


__all__ = ["TranscribeJob", "StdoutError", "OutputFolderError", "print_line", "stdout_line", "expand_formats",
           "face_detection_on_gpu", "run"]
