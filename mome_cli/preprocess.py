"""From a user's media file to what the encoders read: 16 kHz audio samples and 25 fps mouth ROIs, cached.

Video is read twice, in chunks, so memory stays bounded on long high-resolution inputs: the first pass finds the
landmarks of every frame (face detection and FAN), the second cuts the mouth ROIs with the interpolated and smoothed
landmarks. Frames taller than `max_height` are scaled down first (the ROI is 96 x 96 of a 256 x 256 face frame, so
720 pixels lose nothing).

What happens when a modality is missing follows the contract: a file with no audio stream fails in modes a and av; a
file with no video stream fails in mode v and falls back to audio in av; a clip in which no frame shows a face (or
whose frames are too small to find one in) falls back to audio in av (with a warning) and fails in v; a clip where
more than half the frames show no face warns. A pipe is copied to a temporary file first: it gives its bytes once, and
a file is read several times here.

A finished clip is cached under <cache>/<sha256 of the file>-<options>.npz (written atomically, its name in it too),
so running transcribe or evaluate again skips decoding and face detection (not a file written to while it was read:
what was decoded may not be what was hashed). PREPROCESS_VERSION is in the key: change it whenever the output of this
stage changes.

Notation for shapes: S samples, T frames, R = 96 ROI side.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import queue
import stat
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import Future, TimeoutError as FuturesTimeout
from dataclasses import asdict, dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from .files import atomic_write
from .hub import FACE_ALIGNMENT_NEEDS
from .lips import (FaceTracker, FramesTooSmall, NoFaceError, check_stop, crop_mouths, interpolate_missing,
                   load_mean_face, rois_from_crops, smooth, too_small_to_detect)
from .media import (SAMPLE_RATE, SHORT_STREAM_SECONDS, VIDEO_FPS, MediaError, NoAudioError, NoVideoError,
                    check_file, decode_audio, frame_size, is_pipe, iter_video, probe)

# bumped when the clips it makes change (2: rotation, streams that start late; 3: audio before a late video,
# Matroska's stream ends, audio alone read to its end; 4: nor past it where its length is a guess, several streams said;
# 5: video alone read to its end, not the audio's; 6: non-square pixels shown square, as a player shows them)
PREPROCESS_VERSION = 6
MAX_HEIGHT = 720  # frames taller than this are scaled down before detection and cropping
CHUNK_FRAMES = 125  # frames held in memory at once: 5 s of video
CLIP_CACHE_BYTES = 20 * 2**30  # past this the clip cache drops the entries used longest ago (an hour of video: ~1 GB)
STALE_TEMP_SECONDS = 3600  # a cache entry's temporary file untouched this long is a killed writer's: trimmed too
CROP_CHUNK_PIXELS = 8_000_000  # and with --roi at most this many pixels (96 MB as float RGB): a 720p video is not crops
PIPE_BLOCK = 1 << 20  # bytes copied from a pipe at a time (a stop is looked at between them)


@dataclass(frozen=True)
class PreprocessOptions:
    mode: str = "av"  # a | v | av: which modalities are wanted
    roi: bool = False  # the video is already mouth crops (LRS2/LRS3 style): no face detection
    detector: str = "sfd"  # sfd | blazeface: face-alignment's face detector
    device: str = "auto"  # where face-alignment runs
    max_height: int = MAX_HEIGHT

    def __post_init__(self):
        if self.mode not in ("a", "v", "av"):
            raise ValueError(f"mode must be a, v or av, got {self.mode!r}")
        if self.detector not in ("sfd", "blazeface"):
            raise ValueError(f"detector must be sfd or blazeface, got {self.detector!r}")


@dataclass
class Clip:
    path: str
    duration: float  # seconds
    mode: str  # the modalities actually present: the asked mode, or a after a fallback
    audio: np.ndarray | None = None  # (S,) float32 at 16 kHz
    rois: np.ndarray | None = None  # (T, R, R) uint8 grayscale mouth ROIs at 25 fps
    warnings: list = field(default_factory=list)


@contextlib.contextmanager
def face_alignment_weights(detector: str):
    """Point face-alignment at its weights, or raise MissingModelError (exit 4) naming the fix; never download.

    The weights are looked for in $TORCH_HOME/hub/checkpoints if the user set TORCH_HOME (where face-alignment keeps
    them when it downloads them itself), then in mome's cache, where `mome download` puts them (MOME_HOME/torch).
    """
    from .hub import (MissingModelError, UnusableModelError, face_alignment_home, face_alignment_lacks,
                      hub_checkpoints, torch_home)

    user_home = os.environ.get("TORCH_HOME")
    home = face_alignment_home(detector)
    if home is None:
        folder, missing = hub_checkpoints(torch_home()), face_alignment_lacks(detector, torch_home())
        raise MissingModelError(f"face-alignment weights {', '.join(missing)} are not in {folder}: run `mome "
                                "download demo` (face-alignment's weights, no licence needed), or pass --roi if the "
                                "videos are already mouth crops")
    os.environ["TORCH_HOME"] = str(home)
    try:
        yield
    except ImportError:  # face-alignment not installed: its own message says what to install
        raise
    except Exception as e:  # a file there that is not the weights (cut short, or another in its place): torch's
        # unpickling errors, which `mome download`'s checksums catch but loading does not look for
        names = ", ".join(FACE_ALIGNMENT_NEEDS[detector])
        raise UnusableModelError(f"face-alignment's weights in {hub_checkpoints(home)} cannot be loaded "
                                 f"({type(e).__name__}: {' '.join(str(e).split())[:200]}): delete {names} there and "
                                 "run `mome download demo`") from e
    finally:
        if user_home is None:
            os.environ.pop("TORCH_HOME", None)
        else:
            os.environ["TORCH_HOME"] = user_home


@contextlib.contextmanager
def pipe_copy(path, stop=None):
    """The path of a temporary file that holds what the pipe at path gives (removed on leaving): media are read more
    than once (probed, decoded, video twice for face detection), and a pipe gives its bytes only once. Once the
    threading.Event `stop` is set, the copy ends at its next block with lips.Stopped."""
    with tempfile.TemporaryDirectory(prefix="mome-pipe-") as folder:
        copy = Path(folder) / (Path(path).name or "pipe")  # its name: a format may be known by its extension
        try:
            with open(path, "rb") as source, open(copy, "wb") as target:
                while block := source.read(PIPE_BLOCK):
                    check_stop(stop)
                    target.write(block)
        except OSError as e:
            raise MediaError(path, f"cannot copy the pipe to a file in {folder} ({e.strerror or e})") from e
        if copy.stat().st_size == 0:
            raise MediaError(path, "an empty pipe (0 bytes)")
        yield copy


def file_sha256(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(path) -> tuple[int, int] | None:
    """What tells whether a file was written to: its size and the time it was last written (ns)."""
    try:
        info = os.stat(path)
    except OSError:  # gone, or moved away
        return None
    return info.st_size, info.st_mtime_ns


class Preprocessor:
    """Turns media files into Clips; holds the landmark detector (built on first need) and the cache folder.

    Once the threading.Event `stop` is set, a call in progress raises lips.Stopped at its next chunk of video or
    batch of face detection, having written nothing: how a reader in another thread is stopped within a second or
    two instead of minutes (see ReadAhead)."""

    def __init__(self, options: PreprocessOptions = PreprocessOptions(), cache_dir: Path | None = None,
                 detector=None, stop=None):
        self.options = options
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._detector = detector
        self.stop = stop

    @property
    def detector(self):
        """face-alignment, built on first need from weights in mome's cache (or in $TORCH_HOME if the user set one)."""
        if self._detector is None:
            from .lips import LandmarkDetector

            with face_alignment_weights(self.options.detector):
                self._detector = LandmarkDetector(device=self.options.device, detector=self.options.detector)
        return self._detector

    def __call__(self, path) -> Clip:
        check_stop(self.stop)
        if not is_pipe(path):
            return self._read(path)
        with pipe_copy(path, self.stop) as copy:  # read in its place, and said as the pipe
            try:
                clip = self._read(copy)
            except MediaError as e:
                e.path, e.problem = str(path), e.problem.replace(os.path.abspath(copy), str(path))
                e.args = (f"{e.path}: {e.problem}",)
                raise
        clip.path = str(path)
        return clip

    def _read(self, path) -> Clip:
        """The Clip of a file (not a pipe)."""
        check_file(Path(path))  # a missing or unreadable file is one input's MediaError, before it is hashed
        version = _version(path)
        digest = file_sha256(path) if self.cache_dir is not None else None  # read once, whatever mode it ends in
        cached = self._load(self._cache_key(digest, self.options.mode))  # no probe for a file seen before
        if cached is not None:
            cached.path = str(path)  # the same content may have been read under another name
            return cached
        info = probe(path)
        mode, warnings = self.options.mode, []
        if mode == "a" and info.has_audio:  # the audio alone: as long as it is, whatever the video's length
            info = dataclasses.replace(info, duration=info.audio_duration)
        if mode == "v" and info.has_video:  # and the video alone, whatever the audio's
            info = dataclasses.replace(info, duration=info.video_duration)
        if "a" in mode and not info.has_audio:
            lips = "; --mode v reads the lips alone" if info.has_video else ""  # as a silent track's warning says
            raise NoAudioError(path, f"no audio stream (mode {mode} needs one{lips})")
        if mode == "v" and not info.has_video:
            raise NoVideoError(path, "no video stream (mode v needs one)")
        fallback = []  # said to this run, not stored: the mode-a entry it shares is also a plain mode-a run's
        if mode == "av" and not info.has_video:
            mode = "a"
            fallback.append("no video stream: transcribed from audio alone")
        key = self._cache_key(digest, mode)
        cached = self._load(key)
        if cached is not None:
            cached.path, cached.warnings = str(path), fallback + cached.warnings
            return cached
        clip = Clip(path=str(path), duration=info.duration, mode=mode, warnings=warnings)
        for kind, count in (("audio", info.audio_streams), ("video", info.video_streams)):
            if count > 1 and kind[0] in mode:  # a second language, a commentary, another camera: said, not guessed
                warnings.append(f"{count} {kind} streams: the first is read (ffmpeg's -map 0:{kind[0]}:N makes a file "
                                f"of another)")
        if mode == "av":  # the clip ends with the first stream to end: a long rest of the other is said
            self._check_streams_overlap(path, info, warnings)
        if "a" in mode:
            alone = mode == "a"  # as long as the stream really is: its announced length may be an estimate
            clip.audio = decode_audio(path, info=info, warnings=warnings, to_end=alone)
            if alone:
                clip.duration = len(clip.audio) / SAMPLE_RATE
        if "v" in mode:
            check_stop(self.stop)
            try:
                clip.rois = self._rois(path, info, warnings)
            except NoFaceError as e:
                why = str(e) if isinstance(e, FramesTooSmall) else "no face found in any frame"
                if mode == "v":
                    crops = "; --roi reads mouth crops of any size" * isinstance(e, FramesTooSmall)
                    raise MediaError(path, f"{why} (mode v needs the lips{crops})") from e
                clip.mode = "a"
                warnings.append(f"{why}: transcribed from audio alone")
        if key is not None and _version(path) != version:  # written to while it was read (a recording going on):
            # what was decoded is not the content that was hashed, and must not be found under that content's key
            clip.warnings.append("the file changed while it was read: its clip is not cached")
            key = None
        try:
            self._save(key, clip)
        except IsADirectoryError:  # a folder in this entry's place (not ours): this clip is not cached, others are
            clip.warnings.append(f"cannot write the clip cache entry {self.cache_dir / f'{key}.npz'}: a folder is in "
                                 "its place (delete it to cache this clip)")
        except OSError as e:  # a cache that cannot be written costs speed, not the transcript: go on without it
            clip.warnings.append(f"cannot write the clip cache in {self.cache_dir} ({e.strerror or e}): "
                                 "going on without it (--no-cache to silence this)")
            self.cache_dir = None
        clip.warnings[:0] = fallback
        return clip

    @staticmethod
    def _check_streams_overlap(path, info, warnings: list) -> None:
        """Mode av reads both streams up to where the first ends: what the other holds past it more than
        SHORT_STREAM_SECONDS is said in warnings, and a MediaError if the first ends before a video frame."""
        ends = {"audio": info.audio_duration, "video": info.video_duration}
        first = min(ends, key=ends.get)
        other = "video" if first == "audio" else "audio"
        if round(info.duration * VIDEO_FPS) == 0 and round(ends[other] * VIDEO_FPS) > 0:  # not "too short": say why
            raise MediaError(path, f"the {first} stream lasts {ends[first]:.3f} s, less than one video frame, beside "
                                   f"{ends[other]:.2f} s of {other}: nothing to read in mode av (--mode {other[0]} "
                                   f"reads the {other} alone)")
        if ends[other] - info.duration > SHORT_STREAM_SECONDS:
            warnings.append(f"the {other} goes on {ends[other] - info.duration:.1f} s after the {first} ends: that "
                            f"part is not transcribed (--mode {other[0]} reads the {other} to its end)")

    def _rois(self, path, info, warnings: list) -> np.ndarray:
        def chunks(said=None, chunk=CHUNK_FRAMES, **scaled):  # (<= chunk, H, W, 3) uint8 at a time; stops between
            with contextlib.closing(iter_video(path, info=info, chunk=chunk, warnings=said, **scaled)) as video:
                for frames in video:
                    check_stop(self.stop)
                    yield frames

        # Each pass closes its generator on leaving, so that ffmpeg ends at once on an exception (Stopped included),
        # not when the traceback that holds the generator's frame is dropped.
        if self.options.roi:  # chunk by chunk: an hour of crops is 0.8 GB of gray ROIs, not 10 GB of float RGB
            chunk = min(CHUNK_FRAMES, max(1, CROP_CHUNK_PIXELS // max(1, info.width * info.height)))
            with contextlib.closing(chunks(warnings, chunk)) as video:
                return np.concatenate([rois_from_crops(frames) for frames in video])
        scaled = dict(max_height=self.options.max_height)
        width, height = frame_size(info, **scaled)
        if reason := too_small_to_detect(height, width):  # said at once: nothing to decode, no detector to load
            raise FramesTooSmall(f"frames of {info.width} x {info.height} pixels are {reason}")
        tracker = FaceTracker()  # one face followed through every chunk
        with contextlib.closing(chunks(warnings, **scaled)) as video:
            landmarks = np.concatenate([self.detector.detect(frames, tracker=tracker, stop=self.stop)
                                        for frames in video])  # (T, 68, 2)
        filled, missing = interpolate_missing(landmarks)
        smoothed = smooth(filled)
        mean_face, rois, at = load_mean_face(), [], 0
        with contextlib.closing(chunks(**scaled)) as video:  # the second pass says nothing
            for frames in video:
                rois.append(crop_mouths(frames, smoothed[at : at + len(frames)], mean_face))
                at += len(frames)
        T = len(landmarks)
        if missing > T / 2:
            warnings.append(f"no face in {missing} of {T} frames: their mouth crops are interpolated")
        return np.concatenate(rois)  # (T, R, R)

    # ---- cache --------------------------------------------------------------------------------------------------

    def _cache_key(self, digest: str | None, mode: str) -> str | None:
        if self.cache_dir is None or digest is None:
            return None
        o = self.options
        tag = f"v{PREPROCESS_VERSION}-{mode}-{'roi' if o.roi else o.detector}-{o.max_height}"
        return f"{digest}-{tag}"

    def _load(self, key: str | None) -> Clip | None:
        if key is None:
            return None
        path = self.cache_dir / f"{key}.npz"
        if not path.is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["meta"]))
                if meta.pop("key", key) != key:  # another entry's bytes (copied over it): not this file's clip
                    return None  # (an entry written before entries named their key is taken as it is)
                clip = Clip(**meta, audio=data["audio"] if "audio" in data else None,
                            rois=data["rois"] if "rois" in data else None)
        except Exception:  # noqa: BLE001 (whatever a damaged file raises: zipfile's BadZipFile, EOFError, ValueError..)
            return None  # a damaged entry (or one another process just trimmed) is recomputed and overwritten
        with contextlib.suppress(OSError):  # a cache that cannot be written is still read
            os.utime(path)  # used now: among the last to go when the cache is trimmed
        return clip

    def _save(self, key: str | None, clip: Clip) -> None:
        if key is None:
            return
        meta = {k: v for k, v in asdict(clip).items() if k not in ("audio", "rois")} | {"key": key}
        arrays = {"meta": np.array(json.dumps(meta))}
        if clip.audio is not None:
            arrays["audio"] = clip.audio
        if clip.rois is not None:
            arrays["rois"] = clip.rois

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)

        atomic_write(self.cache_dir / f"{key}.npz", write)
        self._trim(keep=self.cache_dir / f"{key}.npz")

    def _trim(self, keep: Path) -> None:
        """Keep the cache within CLIP_CACHE_BYTES: the entries used longest ago go first, and never `keep`, the one
        just written (even where another's time is later: a cache copied from a machine whose clock is ahead).
        The temporary file of a writer killed before it could remove it (SIGKILL, the OOM killer, a power cut: as
        large as the clip) is removed once it has not changed for STALE_TEMP_SECONDS; a live writer's is kept."""
        now = time.time()
        for path in self.cache_dir.glob(".*.npz.*.tmp"):  # files.atomic_write's temporary names
            with contextlib.suppress(OSError):  # gone meanwhile: its writer renamed it, or another process trimmed it
                if now - path.stat().st_mtime > STALE_TEMP_SECONDS:
                    path.unlink()
        entries = []
        for path in self.cache_dir.glob("*.npz"):
            try:
                info = path.lstat()
            except OSError:  # gone meanwhile (another process trimming)
                continue
            if stat.S_ISDIR(info.st_mode):  # a folder of that name is not an entry: not ours to remove
                continue
            entries.append((info.st_mtime, info.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if path == keep:
                continue
            if total <= CLIP_CACHE_BYTES:
                break
            path.unlink(missing_ok=True)
            total -= size


class ReadAhead:
    """fn(item) for each item in turn, called in one background thread that stays at most `ahead` items ahead of
    take(), which returns the results in order: what a data loader does, so that media is decoded while the model
    loads or transcribes the clips before. An exception fn raised is raised by the take() of its item, and the items
    after it are still read. Only that thread calls fn (a Preprocessor is not shared between threads). With ahead 0
    nothing is read in advance: each item is read by its take(), while the caller waits.

    Memory: with cost(result) (say, a clip's seconds; finite, >= 0) and a budget, no item is started while the
    results read and not yet taken cost more than the budget, so a batch of hour-long videos is not all held twice.

    Use it in a `with`: on leaving, nothing more is started, `stop` (a threading.Event that fn watches, as
    Preprocessor does) is set so that a read in flight ends at its next chunk instead of after minutes of face
    detection, and the thread is waited for, through further Ctrl-Cs: a thread left inside torch while the
    interpreter exits aborts the process (Ctrl-C must exit with 130, and leave no half-written cache file).

    Left unclosed (a caller's bug), it ends once the thread that made it is gone: it reads nothing more, and the
    item in flight, if any, holds the interpreter's exit until it is read."""

    POLL = 0.25  # seconds between looks, while idle, at whether the thread that takes is gone without close()

    def __init__(self, fn, items, ahead: int, stop: threading.Event | None = None, cost=None,
                 budget: float = float("inf")):
        if not budget >= 0:  # NaN too
            raise ValueError(f"the read-ahead budget must be >= 0, not {budget}")
        self._fn, self._items, self._ahead = fn, iter(items), max(0, ahead)
        self.stop = stop if stop is not None else threading.Event()
        self._cost, self._budget = cost or (lambda result: 0.0), budget
        self._held = 0.0  # cost of the results read and not yet taken
        self._changed = threading.Condition()  # _held went down, or stop was set
        self._pending = deque()  # futures started and not yet taken, in order
        self._work = queue.SimpleQueue()  # (future, item) for the thread, then None: stop
        self._ended = threading.Event()  # set by the thread as it returns
        self._owner = threading.current_thread()  # the thread that takes: when it is gone, nobody will
        self._thread = threading.Thread(target=self._serve, name="mome-read-ahead", daemon=False)  # joined at exit
        self._thread.start()
        try:
            self._start()  # iterates over items, which may raise
        except BaseException:
            self.close()
            raise

    def _orphaned(self) -> bool:
        """The thread that made this is gone without closing it (a caller's bug): end, rather than hold the exit.
        A daemon owner is not joined at exit, so it counts as gone once the main thread is."""
        owner = self._owner
        return not owner.is_alive() or (owner.daemon and not threading.main_thread().is_alive())

    def _next_job(self):
        while True:
            try:
                return self._work.get(timeout=self.POLL)
            except queue.Empty:
                if self._orphaned():
                    return None

    def _serve(self) -> None:
        try:
            while (job := self._next_job()) is not None:
                future, item = job
                with self._changed:  # held results are taken in order, so this wait ends with the next take()
                    while not (self._held <= self._budget or self.stop.is_set() or self._orphaned()):
                        self._changed.wait(self.POLL)
                if self.stop.is_set() or self._orphaned():
                    future.cancel()  # never left pending: a take() of it raises CancelledError, not waits forever
                    continue
                if not future.set_running_or_notify_cancel():  # cancelled before it started
                    continue
                try:
                    result = self._fn(item)
                    cost = float(self._cost(result))
                    if not 0 <= cost < float("inf"):
                        raise ValueError(f"a read-ahead cost must be finite and >= 0, not {cost}")
                except BaseException as e:  # noqa: BLE001 (raised again by take(), in the caller's thread)
                    future.set_exception(e)
                    continue
                with self._changed:
                    future.cost = cost
                    self._held += cost
                future.set_result(result)
        finally:
            while True:  # what was queued and not read is cancelled, so that no take() waits for it
                try:
                    job = self._work.get_nowait()
                except queue.Empty:
                    break
                if job is not None:
                    job[0].cancel()
            self._ended.set()

    def _start(self, at_least: int = 0, defer: bool = False) -> None:
        """Queue items up to `ahead` (at least `at_least`) started and not taken. With defer, an exception raised by
        the items themselves (a generator's) takes an item's place, raised by its take(), not by this call."""
        try:
            for item in islice(self._items, max(0, max(at_least, self._ahead) - len(self._pending))):
                future = Future()
                self._pending.append(future)
                self._work.put((future, item))
        except Exception as e:
            if not defer:
                raise
            failed = Future()
            failed.set_exception(e)
            self._pending.append(failed)

    def take(self):
        """The next item's result (waiting for it), or the exception fn raised on it; then the next item is started.
        CancelledError: the item was not read, because the read-ahead was closed or stopped, or its thread ended."""
        self._start(at_least=1, defer=True)  # with ahead 0, this item is read now
        future = self._pending.popleft()  # IndexError past the last item
        try:
            while True:
                try:
                    future.exception(timeout=self.POLL)  # raises CancelledError, returns fn's exception (any kind)
                    break
                except FuturesTimeout:
                    if self._ended.is_set():
                        future.cancel()  # nobody is left to read it (say, taken after close())
            return future.result()
        finally:
            with self._changed:
                self._held -= getattr(future, "cost", 0.0)
                self._changed.notify_all()
            self._start(defer=True)  # a failure here must not replace the result being returned

    def _tell_to_stop(self) -> None:  # may run more than once
        self.stop.set()  # first, so that a Ctrl-C in what follows cannot leave the thread reading
        self._work.put(None)
        for future in self._pending:
            future.cancel()
        with self._changed:
            self._changed.notify_all()

    def close(self) -> None:
        """Start nothing more, ask the call in flight to stop, and wait for the thread to end. A Ctrl-C while waiting
        (a second one, when the first ended the run) is raised once the thread has ended: an interrupted join would
        let the interpreter exit under the thread."""
        interrupted = None
        while True:
            try:
                self._tell_to_stop()
                self._ended.wait()
                self._thread.join()
                break
            except KeyboardInterrupt as e:
                interrupted = interrupted or e
        if interrupted is not None:
            raise interrupted

    def __enter__(self):
        return self

    def __exit__(self, *_):
        self.close()


__all__ = ["PREPROCESS_VERSION", "PreprocessOptions", "Clip", "Preprocessor", "ReadAhead", "file_sha256",
           "pipe_copy"]
