"""Media in: probe a file, decode 16 kHz mono audio and 25 fps video on one clock, cut long inputs at pauses.

Every ffmpeg call is built with ffmpeg-python, runs with -nostdin and its stderr captured, and gets the file as
file:<absolute path>; a failure becomes a MediaError that names the file and quotes ffmpeg's own last words. Audio and video are decoded on the file's timeline from t = 0:
audio that starts late is padded with silence, video that starts late repeats its first frame, and both are cut to
the same duration, so sample s and frame f are at s / 16000 and f / 25 seconds.

Notation for shapes: S samples, T frames, H x W pixels.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

SAMPLE_RATE = 16_000  # Hz, mono: what Whisper takes
VIDEO_FPS = 25  # frames a second: what AV-HuBERT and the LRS corpora use
SAMPLES_PER_FRAME = SAMPLE_RATE // VIDEO_FPS  # 640 samples = 40 ms, one video frame
MAX_SEGMENT_SECONDS = 20.0  # longest segment handed to the model
SHORT_STREAM_SECONDS = 1.0  # a stream ending more than this before its file's announced length gets a warning
MIN_PAUSE_SECONDS = 0.2  # a silence this long is a pause: between two stretches of speech, it ends a segment
ENERGY_WINDOW = SAMPLES_PER_FRAME  # energy measured per video frame, so cuts fall on frame boundaries
SILENCE_DB = -35.0  # a window this far below the clip's loudest (95th percentile) window counts as silence
SILENCE_FLOOR_DBFS = -60.0  # and so does one this quiet in absolute terms (digital silence, a muted phone, room hum)
SPEECH_MARGIN_SECONDS = 0.24  # silence kept on each side of a segment's speech: the synthetic corpus's utterances
# have 0.1 to 0.4 s, LRS3's a few tenths; more (a clip's first seconds, a long pause) is cut off and not decoded


class MediaError(Exception):
    """An input that cannot be used; str() is one line naming the file and the problem."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{path}: {problem}")

    def __reduce__(self):  # as it was made: a worker process's error reaches the parent (Exception pickles args)
        return type(self), (self.path, self.problem)


class NoAudioError(MediaError):
    pass


class NoVideoError(MediaError):
    pass


@dataclass
class MediaInfo:
    path: str
    duration: float  # seconds from t = 0 to the end of the stream that ends first
    has_audio: bool
    has_video: bool
    width: int = 0  # the picture as a player shows it: upright (rotation applied), in square pixels (the sample
    height: int = 0  # aspect ratio applied to the width: HDV's 1440 x 1080 frames of 4:3 pixels are 1920 x 1080)
    fps: float = 0.0  # the video stream's own average frame rate
    audio_duration: float = 0.0  # seconds from t = 0 to the end of the audio (mode a reads that far)
    video_duration: float = 0.0  # seconds from t = 0 to the end of the video (mode v reads that far)
    estimated: bool = False  # the lengths are ffprobe's guess from the bitrate (MP3 without a Xing header, raw AAC)
    audio_streams: int = 0  # how many there are: the first is read
    video_streams: int = 0  # not counting cover art


@dataclass
class Segment:
    start: float  # seconds, on a video-frame boundary
    end: float  # seconds, on a video-frame boundary
    speech: bool = True  # False when the segment is silence throughout

    @property
    def duration(self) -> float:
        return self.end - self.start


def _ffmpeg():
    import ffmpeg

    if shutil.which("ffmpeg") is None or shutil.which("ffprobe") is None:
        raise MediaError("ffmpeg", "the ffmpeg and ffprobe programs are not installed (e.g. apt-get install ffmpeg)")
    return ffmpeg


def last_words(stderr: bytes | None) -> str:
    """The last non-empty line ffmpeg (or ffprobe) wrote to stderr."""
    lines = [ln.strip() for ln in (stderr or b"").decode("utf-8", "replace").splitlines() if ln.strip()]
    return lines[-1] if lines else "ffmpeg failed"


def _source(path) -> str:
    """The path as ffmpeg must be given it: absolute, with the file: protocol, so that a name that starts with '-' or
    holds a ':' (rec:01.mp4) is a file name, not an option or a protocol."""
    return "file:" + os.path.abspath(path)


def _rotation(stream: dict) -> int:
    """Degrees a player turns the picture (phone videos shot upright store landscape frames and say so)."""
    for side in stream.get("side_data_list", []) or []:
        if "rotation" in side:
            return int(round(float(side["rotation"])))
    return int(round(float((stream.get("tags") or {}).get("rotate", 0) or 0)))


def is_pipe(path) -> bool:
    """Whether path is a pipe: a named one (mkfifo), /dev/stdin fed by `cat x.mp4 |`, or bash's <(...)."""
    try:
        return stat.S_ISFIFO(os.stat(path).st_mode)
    except OSError:  # missing, or not to be looked at: check_file says which
        return False


def _pixel_aspect(stream: dict) -> float:
    """Width of a stored pixel over its height, as a player shows it: the sample aspect ratio (anamorphic video, a
    DVD or a camera that stores 16:9 in a 4:3 frame, says 4:3 or 32:27); 1 when it says none (0:1, N/A)."""
    num, _, den = str(stream.get("sample_aspect_ratio") or "").partition(":")
    try:
        ratio = int(num) / int(den)
    except (ValueError, ZeroDivisionError):
        return 1.0
    return ratio if ratio > 0 else 1.0


def check_file(path: Path) -> None:
    """MediaError unless path is a non-empty file this process can read. A pipe is not one: it can be read once, and
    a media file is read several times (probed, then decoded); Preprocessor copies a pipe to a file first."""
    if not path.exists():
        raise MediaError(path, "no such file")
    if path.is_dir():
        raise MediaError(path, "is a folder, not a media file")
    if not os.access(path, os.R_OK):
        raise MediaError(path, "permission denied")
    info = path.stat()
    if stat.S_ISFIFO(info.st_mode):
        raise MediaError(path, "a pipe, not a file: it can be read once, and media are read more than once")
    if not stat.S_ISREG(info.st_mode):  # a device (its size says nothing), a socket
        raise MediaError(path, "not a regular file (a device or a socket)")
    if info.st_size == 0:
        raise MediaError(path, "empty file (0 bytes)")


def probe(path) -> MediaInfo:
    """Streams and duration of a media file; MediaError if it is missing, unreadable or not media."""
    path = Path(path)
    check_file(path)
    ffmpeg = _ffmpeg()
    command = ["ffprobe", "-v", "warning", "-show_format", "-show_streams", "-of", "json", _source(path)]
    done = subprocess.run(command, capture_output=True)
    if done.returncode:
        raise MediaError(path, f"not a readable media file ({_unreadable(done.stderr, _source(path))})")
    try:
        info = json.loads(done.stdout)
    except ValueError as e:
        raise MediaError(path, f"not a readable media file ({e})") from e
    estimated = b"Estimating duration from bitrate" in done.stderr
    streams = info.get("streams", [])
    audios = [s for s in streams if s.get("codec_type") == "audio"]
    videos = [s for s in streams if s.get("codec_type") == "video" and not _is_cover_art(s)]
    audio, video = (audios or [None])[0], (videos or [None])[0]
    if audio is None and video is None:
        raise MediaError(path, "no audio or video stream")
    # The clip ends where its first stream to end ends, on the file's clock from its start (t = 0): the audio's real
    # length (AAC priming and padding are not audio), and no held frames or padded silence at the end. A stream that
    # starts late still ends where it ends. Streams that give no duration fall back on the container's.
    container = info.get("format", {})
    origin = _seconds(container.get("start_time")) or 0.0
    whole = _seconds(container.get("duration")) or 0.0
    by_ffmpeg = str(container.get("tags", {}).get("ENCODER", "")).startswith("Lavf")  # its DURATION tags: ends
    ends = {kind: _end(s, origin, by_ffmpeg) for kind, s in (("audio", audio), ("video", video)) if s is not None}
    if not whole and all(end is None for end in ends.values()):  # a live recording (browser, OBS): no duration kept
        ends = {kind: _packets_end(ffmpeg, path, kind, origin) for kind in ends}
    known = [end for end in ends.values() if end is not None]
    duration = min(known) if known else whole
    if duration <= 0:
        raise MediaError(path, "zero-length media")
    fps, width, height = 0.0, 0, 0
    if video is not None:
        num, _, den = str(video.get("avg_frame_rate", "0/1")).partition("/")
        fps = float(num) / float(den or 1) if float(den or 1) else 0.0
        width, height = int(video.get("width", 0)), int(video.get("height", 0))
        width = max(1, round(width * _pixel_aspect(video))) if width else 0  # what iter_video scales the frames to
        if _rotation(video) % 180:  # ffmpeg turns the frames as a player does: upright, width and height swapped
            width, height = height, width
    audio_duration, video_duration = ((ends.get(kind) or whole or duration) if kind in ends else 0.0
                                      for kind in ("audio", "video"))
    return MediaInfo(path=str(path), duration=duration, has_audio=audio is not None, has_video=video is not None,
                     width=width, height=height, fps=fps, audio_duration=audio_duration, video_duration=video_duration,
                     estimated=estimated, audio_streams=len(audios), video_streams=len(videos))


def _unreadable(stderr: bytes | None, source: str) -> str:
    """Why ffprobe could not read a file: its last words without the "file:/abs/path: " they start with (the error
    names the file already), and for an mp4 with no index ("moov atom not found"), what that usually means."""
    said = last_words(stderr).removeprefix(f"{source}: ")
    if b"moov atom not found" in (stderr or b""):
        said += "; no moov atom, the index an mp4 writes at its end: a download or recording cut short?"
    return said


def _seconds(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):  # None, "N/A"
        return None


def _packets_end(ffmpeg, path, kind: str, origin: float) -> float | None:
    """Where the first stream of a kind ends, from its packets' times (for files whose headers give no duration)."""
    try:
        packets = ffmpeg.probe(_source(path), cmd="ffprobe", select_streams=f"{kind[0]}:0",
                               show_entries="packet=pts_time,duration_time").get("packets", [])
    except ffmpeg.Error:
        return None
    ends = [(_seconds(p.get("pts_time")) or 0.0) + (_seconds(p.get("duration_time")) or 0.0) for p in packets]
    return max(ends) - origin if ends else None


def _end(stream: dict, origin: float, tags_end: bool = True) -> float | None:
    """Where a stream ends, in seconds from the file's start; None if it does not say.

    Matroska/WebM keep no stream duration but a DURATION tag (DURATION-eng in older files): ffmpeg writes where the
    stream ends (tags_end), mkvmerge how long it lasts from its first timestamp."""
    start = max(0.0, (_seconds(stream.get("start_time")) or origin) - origin)
    duration = _seconds(stream.get("duration"))
    if duration is not None:
        return start + duration
    tags = stream.get("tags", {})
    tagged = next((_clock_time(v) for k, v in tags.items() if k.upper().split("-")[0] == "DURATION"), None)
    if not tagged:  # absent, unreadable, or 0
        return None
    return max(0.0, tagged - origin) if tags_end else start + tagged


def _clock_time(value) -> float | None:
    """'HH:MM:SS.fffffffff' (as Matroska's DURATION tags hold it) in seconds; None if it is not one."""
    match = re.fullmatch(r"\s*(\d+):([0-5]?\d):(\d+(?:\.\d*)?)\s*", str(value or ""))
    if not match:
        return None
    hours, minutes, seconds = match.groups()
    return int(hours) * 3600 + int(minutes) * 60 + float(seconds)


def _is_cover_art(stream: dict) -> bool:
    return bool(stream.get("disposition", {}).get("attached_pic"))


def _window(start: float, duration: float | None, info: MediaInfo) -> tuple[float, float]:
    end = info.duration if duration is None else min(info.duration, start + duration)
    if start < 0 or start >= info.duration:
        raise ValueError(f"start {start:.3f} s is outside the media (0 to {info.duration:.3f} s)")
    return start, end - start


def _seek(start: float) -> dict:
    """ffmpeg's input seek to start, none from the file's start: -ss 0 seeks to the first video keyframe, which drops
    the audio before it when the video starts late."""
    return {"ss": start} if start > 0 else {}


def _stops_early(kind: str, got: float, wanted: float, rest: str) -> str | None:
    """The warning for a stream that ends well before the length the file announces (a truncated download)."""
    if wanted - got <= SHORT_STREAM_SECONDS:
        return None  # streams of one file often end a few frames apart: padded in silence
    return f"{kind} stops at {got:.2f} s of the {wanted:.2f} s the file announces: {rest} (a truncated file?)"


def decode_audio(path, start: float = 0.0, duration: float | None = None, info: MediaInfo | None = None,
                 warnings: list | None = None, to_end: bool = False) -> np.ndarray:
    """(S,) float32 mono samples at 16 kHz, exactly round(duration * 16000) of them; a stream that ends more than
    SHORT_STREAM_SECONDS early is padded with silence and said in warnings.

    to_end (from the start, for audio read alone): the whole stream, also past the length the file announces, which
    can be an estimate (ffprobe guesses an MP3 without a Xing header from its bitrate: a VBR file was cut short);
    that includes a codec's padding at the end (AAC: up to ~20 ms of silence). Where the length is an estimate, the
    stream's end is the audio's end, also before it (a VBR file was padded with silence, "a truncated file?")."""
    info = info or probe(path)
    if not info.has_audio:
        raise NoAudioError(path, "no audio stream")
    start, duration = _window(start, duration, info)
    if to_end and start > 0:
        raise ValueError("to_end reads from the start")
    ffmpeg = _ffmpeg()
    stream = (
        ffmpeg.input(_source(path), **_seek(start), **({} if to_end else {"t": duration}))
        .output("pipe:", format="f32le", acodec="pcm_f32le", ac=1, ar=SAMPLE_RATE, af="aresample=async=1:first_pts=0",
                map="0:a:0")
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
    )
    try:
        out, _ = stream.run(cmd="ffmpeg", capture_stdout=True, capture_stderr=True)
    except ffmpeg.Error as e:
        raise MediaError(path, f"cannot decode audio ({last_words(e.stderr)})") from e
    samples = np.frombuffer(out, np.float32)
    want = int(round(duration * SAMPLE_RATE))
    if to_end:
        want = samples.size if info.estimated else max(want, samples.size)
    if samples.size < want:  # a stream that ends early: pad its tail with silence
        short = _stops_early("audio", samples.size / SAMPLE_RATE, want / SAMPLE_RATE, "the rest is taken as silence")
        if short and warnings is not None:
            warnings.append(short)
        samples = np.concatenate([samples, np.zeros(want - samples.size, np.float32)])
    return samples[:want].copy()


def frame_size(info: MediaInfo, max_height: int | None = None) -> tuple[int, int]:
    """(W, H) of the frames iter_video gives: the picture's, scaled down to max_height if it is taller (keeping its
    aspect ratio), and never 0 pixels wide, however thin it is (2 x 2000 scaled to 720 high is 1 x 720, not 0 x 720)."""
    width, height = info.width, info.height
    if width < 1 or height < 1:
        raise MediaError(info.path, f"the video stream gives no picture size ({width} x {height})")
    if max_height and height > max_height:
        width, height = max(1, int(round(width * max_height / height / 2)) * 2), max_height
    return width, height


def iter_video(path, start: float = 0.0, duration: float | None = None, info: MediaInfo | None = None,
               chunk: int = 250, max_height: int | None = None, warnings: list | None = None) -> Iterator[np.ndarray]:
    """Chunks of (n, H, W, 3) uint8 RGB frames at 25 fps, from the file's t = start, round(duration * 25) in all (a
    stream that ends early holds its last frame; more than SHORT_STREAM_SECONDS early, said in warnings).

    max_height scales larger frames down (keeping the aspect ratio) so that long high-resolution inputs stream in
    bounded memory.
    """
    info = info or probe(path)
    if not info.has_video:
        raise NoVideoError(path, "no video stream")
    start, duration = _window(start, duration, info)
    width, height = frame_size(info, max_height)
    ffmpeg = _ffmpeg()
    stream = (
        ffmpeg.input(_source(path), **_seek(start), t=duration)
        .video.filter("fps", fps=VIDEO_FPS, start_time=0)  # input -ss puts the start at t = 0
        .filter("scale", width, height)
        .output("pipe:", format="rawvideo", pix_fmt="rgb24")
        .global_args("-nostdin", "-hide_banner", "-loglevel", "error")
    )
    want = int(round(duration * VIDEO_FPS))
    frame_bytes = width * height * 3
    # ffmpeg's messages go to a file, not a pipe: a damaged file makes it write more than a pipe holds, and it would
    # wait for the pipe to be read while this waits for frames.
    messages = tempfile.TemporaryFile()
    process = subprocess.Popen(stream.compile(cmd="ffmpeg"), stdout=subprocess.PIPE, stderr=messages)
    sent, last = 0, None
    try:
        while sent < want:
            n = min(chunk, want - sent)
            buffer = bytearray(n * frame_bytes)  # writable, so the frames can go to torch without a copy
            got = process.stdout.readinto(buffer) // frame_bytes
            if got == 0:
                break
            frames = np.frombuffer(buffer, np.uint8, count=got * frame_bytes).reshape(got, height, width, 3)
            last = frames[-1]
            sent += got
            yield frames
    finally:
        process.stdout.close()
        code = process.wait()
        messages.seek(0)
        stderr = messages.read()
        messages.close()
    if code != 0 and sent < want:
        raise MediaError(path, f"cannot decode video ({last_words(stderr)})")
    if last is None:
        raise MediaError(path, f"too short: {duration:.2f} s, not one video frame" if want == 0 else
                         "video stream holds no frames")
    if sent < want:  # a stream that ends early: hold its last frame
        short = _stops_early("video", sent / VIDEO_FPS, want / VIDEO_FPS, "its last frame is held for the rest")
        if short and warnings is not None:
            warnings.append(short)
        yield np.repeat(last[None], want - sent, axis=0)


def decode_video(path, start: float = 0.0, duration: float | None = None, info: MediaInfo | None = None,
                 max_height: int | None = None, warnings: list | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 RGB frames at 25 fps (all at once: for short clips)."""
    return np.concatenate(list(iter_video(path, start, duration, info, max_height=max_height, warnings=warnings)))


def frame_energy_db(samples: np.ndarray) -> np.ndarray:
    """(T,) float64 energy per 40 ms window in dBFS (a full-scale sine is -3 dBFS), of the sound only: a window's
    mean (a DC offset, which cheap microphones and recorders add, inaudible) is left out. A 0.5% offset (-46 dBFS)
    otherwise made every pause louder than -60 dBFS and the speech near it: none was found."""
    n = len(samples) // ENERGY_WINDOW
    if n == 0:
        return np.zeros(0)
    windows = samples[: n * ENERGY_WINDOW].reshape(n, ENERGY_WINDOW).astype(np.float64)  # (T, 640)
    power = windows.var(axis=1)  # mean square about the window's mean
    return 10 * np.log10(power + 1e-12)


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, end) of each run of True in a 1-D boolean array."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def split_at_pauses(samples: np.ndarray, max_seconds: float = MAX_SEGMENT_SECONDS,
                    every_pause: bool = True) -> list[Segment]:
    """Contiguous segments covering the audio, cut in pauses: those with speech of at most max_seconds, and with
    every_pause, the silence around them as segments of their own.

    A pause is a silent run of at least MIN_PAUSE_SECONDS. With every_pause, each pause between two stretches of
    speech ends a segment, so that a segment holds what was said between pauses, as one utterance of LRS3 or of the
    synthetic corpus does (models trained on single utterances tend to stop at the first pause: on the demo's long-
    form validation set, packing utterances into 8 s segments gave 64.7% WER, cutting at every pause 38.8%). Then a
    segment longer than max_seconds is cut again: in the middle of the longest pause between a quarter of the limit
    and the limit, or without one at the quietest frame of the last quarter. Last, with every_pause, each segment's
    speech keeps SPEECH_MARGIN_SECONDS of silence on either side, as the utterances a model is trained on have: more
    (a clip's first seconds, the rest of a long pause) becomes a segment of its own, marked silent and not decoded,
    so that it neither moves a transcript's times nor reads as words; packed (every_pause False: an utterance decoded
    whole, as LRS3's are in the paper), a segment keeps its silence. A segment that is silence throughout is marked
    so either way. Cuts fall on video-frame boundaries, so audio and video are cut at the same instants.
    """
    total = len(samples) / SAMPLE_RATE
    dbfs = frame_energy_db(samples)  # (T,) one value per 40 ms frame
    db = (dbfs - np.percentile(dbfs, 95) if len(dbfs) else dbfs).astype(np.float32)  # relative to the loud level
    silent = (db < SILENCE_DB) | (dbfs.astype(np.float32) < SILENCE_FLOOR_DBFS)
    n_frames = int(np.ceil(total * VIDEO_FPS))
    limit = max(1, int(max_seconds * VIDEO_FPS))
    min_pause = max(1, int(round(MIN_PAUSE_SECONDS * VIDEO_FPS)))
    breaks = [0]  # with every_pause, the middle of each pause with speech on both sides
    if every_pause:
        breaks += [(a + b) // 2 for a, b in _runs(silent) if b - a >= min_pause and a > 0 and b < len(silent)]
    breaks.append(n_frames)
    cuts = [0]
    for end in breaks[1:]:
        while end - cuts[-1] > limit:
            start = cuts[-1]
            lo, hi = start + limit // 4, start + limit  # no uselessly short segments
            pauses = [(a + lo, b + lo) for a, b in _runs(silent[lo:hi]) if b - a >= min_pause]
            if pauses:
                a, b = max(pauses, key=lambda run: run[1] - run[0])
                cut = (a + b) // 2
            else:  # no pause: the quietest frame of the window's last quarter, so segments stay long
                late = start + 3 * limit // 4
                cut = late + int(np.argmin(db[late:hi])) if late < min(hi, len(db)) else hi
            cuts.append(min(max(cut, start + 1), hi))
        cuts.append(end)
    margin = int(round(SPEECH_MARGIN_SECONDS * VIDEO_FPS))
    pieces = []  # (start, end, speech) in frames
    for a, b in zip(cuts[:-1], cuts[1:]):
        spoken = np.flatnonzero(~silent[a:b])
        if not len(spoken):
            pieces.append((a, b, False))
            continue
        if not every_pause:  # packed: a segment is decoded whole, the silence in it too
            pieces.append((a, b, True))
            continue
        first, last = max(a, a + int(spoken[0]) - margin), min(b, a + int(spoken[-1]) + 1 + margin)
        pieces += [(a, first, False)] * (first > a) + [(first, last, True)] + [(last, b, False)] * (last < b)
    merged = pieces[:1]
    for a, b, speech in pieces[1:]:  # silence on both sides of a cut is one silent segment
        if not speech and not merged[-1][2]:
            merged[-1] = (merged[-1][0], b, False)
        else:
            merged.append((a, b, speech))
    return [Segment(a / VIDEO_FPS, min(b / VIDEO_FPS, total), speech=speech) for a, b, speech in merged]


__all__ = ["SAMPLE_RATE", "VIDEO_FPS", "SAMPLES_PER_FRAME", "MAX_SEGMENT_SECONDS", "MediaError", "NoAudioError",
           "NoVideoError", "MediaInfo", "Segment", "last_words", "is_pipe", "check_file", "probe", "decode_audio",
           "frame_size", "iter_video", "decode_video", "frame_energy_db", "split_at_pauses"]
