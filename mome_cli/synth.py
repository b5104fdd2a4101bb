"""A synthetic audio-visual corpus: espeak-ng speech and a drawn mouth that moves with the same phoneme timings.

    python -m mome_cli.synth OUT_DIR --utterances 2000 --seed 0 [--voices en-us en-gb ...] [--speakers 12] [--jobs 2]

writes OUT_DIR/{train,valid,test}.jsonl, one {"id", "video", "text"} line per utterance with the path relative to
OUT_DIR (a split of no utterances, --valid 0 or --test 0, has no manifest: an empty one is no set to use), and
OUT_DIR/<split>/<id>.mp4: 96 x 96 grayscale mouth crops at 25 fps (libx264, yuv420p) with the speech as 16 kHz mono
AAC, so `mome train --train OUT_DIR/train.jsonl` reads it like any manifest (the clips are already mouth
ROIs: the --roi path). OUT_DIR/alignments.jsonl holds each clip's speaker, duration and phoneme and word timings;
OUT_DIR/corpus.json the seed, the speakers and the text source. The same seed and options give the same manifests,
durations and frames. `--reading N` also speaks N more sentences (none of the clips') for their timings only, with no
clip: OUT_DIR/reading.jsonl, one alignment record with its "text" per line, for the LM to learn to read
(`mome_cli.pretrain reader --reading`). A rerun into the same OUT_DIR with the same options keeps the clips already
written (each is written whole or not at all), so an interrupted run resumes and a reading set can be added later.

    python -m mome_cli.synth OUT_DIR --long-form 9

joins a corpus's valid and test clips into long-form ones instead (join_clips): each speaker's clips, in manifest
order, until they last 9 s or more, as OUT_DIR/long/{valid,test}.jsonl (of the splits the corpus has) and
OUT_DIR/long/<split>/<id>.mp4. Models trained on single utterances meet several in one input there, with the pauses
between them, as in a user's video.

Text: the fortune cookie files of Debian's `fortunes` package (with `fortunes-min`), /usr/share/games/fortunes, under
the BSD licence of fortune-mod (Debian's /usr/share/doc/fortunes/copyright). The categories in FORTUNE_CATEGORIES are
read (about 15,000 sentences, 14,000 different words); `--text FILE` reads any other plain English text instead.
Each sentence is cleaned to lowercase words of letters and apostrophes, kept when it has 3 to 12 words, and
deduplicated; train, valid and test never share a sentence.

Speech: libespeak-ng through ctypes, which reports phoneme and word events with their times. Each speaker is an
English voice (accent) with a voice variant, speaking rate, pitch and pitch range of its own.

Video: every phoneme maps to a viseme target (lip opening, width, rounding, teeth showing); the targets are
interpolated and smoothed at 200 Hz and sampled at each frame's centre, then drawn with numpy: lips, teeth and mouth
interior on a shaded skin patch, with each speaker's lip shape, skin shade, mouth position and size, and per-frame
jitter and pixel noise.

Notation for shapes: S samples, T frames, R = 96 ROI side, P = 4 viseme parameters.
"""

from __future__ import annotations

import argparse
import ctypes
import difflib
import hashlib
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .files import atomic_write, atomic_write_text
from .media import (SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, MediaError, decode_audio, decode_video, last_words,
                    probe)

ESPEAK_RATE = 22_050  # Hz: what espeak-ng synthesises; resampled to SAMPLE_RATE by ffmpeg when muxing
ESPEAK_FRAME = ESPEAK_RATE // VIDEO_FPS  # 882 samples = 40 ms: clips are padded to whole video frames
ROI = 96  # pixels, side of the mouth crop (the LRS convention)
CURVE_RATE = 200  # Hz: viseme curves are interpolated on a 5 ms grid before sampling at the frames
ANTICIPATION = 0.06  # seconds: the lips leave rest this long before the first sound
MIN_WORDS, MAX_WORDS = 3, 12  # words per sentence kept
SPLITS = ("train", "valid", "test")

FORTUNE_DIR = Path("/usr/share/games/fortunes")
# Quotes, quips and definitions in plain English; left out: ASCII art, the non-English translate-me, and the
# categories of jokes about ethnic groups, sexes, drugs and politics.
FORTUNE_CATEGORIES = (
    "art", "computers", "cookie", "definitions", "disclaimer", "education", "food", "fortunes", "goedel", "humorists",
    "kids", "law", "linux", "literature", "love", "magic", "medicine", "miscellaneous", "news", "paradoxum", "people",
    "pets", "platitudes", "pratchett", "riddles", "science", "songs-poems", "sports", "startrek", "tao", "wisdom",
    "work", "zippy",
)
DEFAULT_VOICES = ("en-us", "en-gb", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan",
                  "en-gb-x-gbcwmd")
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4")  # espeak-ng's voice variants


class SynthError(Exception):
    """The corpus cannot be made (no espeak-ng, no text, an unknown voice); str() says what to do."""


class UsageError(SynthError):
    """A bad value or a folder not to write into (exit 2): an unknown voice, a folder of files that is no corpus."""


class UnknownVoice(UsageError):
    """A voice or voice variant espeak-ng does not have: a bad --voices value."""


# ------------------------------------------------------------------------------------------------------------- text

def clean_sentence(sentence: str) -> str | None:
    """Lowercase words of letters and apostrophes, or None for a sentence unfit to read aloud as written."""
    if re.search(r"[0-9@#$%^&*_=+<>/\\|{}\[\]~`]", sentence):  # numbers and symbols: read otherwise than written
        return None
    words = re.sub(r"[^a-z']+", " ", sentence.lower().replace("\u2019", "'")).split()
    words = [w.strip("'") for w in words]
    words = [w for w in words if w]
    return " ".join(words) if MIN_WORDS <= len(words) <= MAX_WORDS else None


def sentences_of(text: str) -> list[str]:
    """Clean sentences of a fortune file or plain text (entries split at %, attributions '-- Name' dropped)."""
    out = []
    for entry in re.split(r"^%\s*$", text, flags=re.M):
        lines = [line for line in entry.splitlines() if not re.match(r"\s*--", line)]
        flat = " ".join(" ".join(lines).split())
        for part in re.split(r"(?<=[.!?;:])\s+|\s+-{2,}\s*", flat):
            cleaned = clean_sentence(part)
            if cleaned:
                out.append(cleaned)
    return out


def load_sentences(text_file: str | Path | None = None) -> list[str]:
    """The sorted, deduplicated clean sentences of the text source."""
    if text_file is not None:
        files = [Path(text_file)]
    else:
        files = [FORTUNE_DIR / name for name in FORTUNE_CATEGORIES if (FORTUNE_DIR / name).is_file()]
        if not files:
            raise SynthError(f"no fortune files under {FORTUNE_DIR}: install Debian's fortunes package "
                             "(apt-get install fortunes) or pass --text FILE")
    sentences = set()
    for path in files:
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise SynthError(f"{path}: cannot read it: {e.strerror or e}") from e
        sentences.update(sentences_of(text))
    return sorted(sentences)


# ----------------------------------------------------------------------------------------------------------- speech

class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):  # espeak_EVENT of speak_lib.h
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


class _Voice(ctypes.Structure):  # espeak_VOICE of speak_lib.h
    _fields_ = [("name", ctypes.c_char_p), ("languages", ctypes.c_char_p), ("identifier", ctypes.c_char_p),
                ("gender", ctypes.c_ubyte), ("age", ctypes.c_ubyte), ("variant", ctypes.c_ubyte),
                ("xx1", ctypes.c_ubyte), ("score", ctypes.c_int), ("spare", ctypes.c_void_p)]


_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))
EVENT_WORD, EVENT_PHONEME = 1, 7  # espeak_EVENT_TYPE values
OUTPUT_SYNCHRONOUS = 2  # AUDIO_OUTPUT_SYNCHRONOUS: espeak_Synth returns when the callback has had everything
INIT_PHONEME_EVENTS, INIT_DONT_EXIT = 0x0001, 0x8000
CHARS_UTF8 = 1
PARAM_RATE, PARAM_PITCH, PARAM_RANGE = 1, 3, 4  # espeak_PARAMETER values


@dataclass
class Speech:
    samples: np.ndarray  # (S,) int16 at ESPEAK_RATE
    phonemes: list[tuple[float, str]]  # (start in seconds, espeak phoneme mnemonic), in time order
    words: list[tuple[float, str]]  # (start in seconds, word)

    @property
    def duration(self) -> float:
        return len(self.samples) / ESPEAK_RATE


class Espeak:
    """libespeak-ng in synchronous mode; one per process (the library keeps global state)."""

    def __init__(self):
        try:
            self.lib = ctypes.CDLL("libespeak-ng.so.1")
        except OSError as e:
            raise SynthError("libespeak-ng.so.1 is not installed (apt-get install espeak-ng)") from e
        self.lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self.lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        self.lib.espeak_SetVoiceByProperties.argtypes = [ctypes.POINTER(_Voice)]
        self.lib.espeak_GetCurrentVoice.restype = ctypes.POINTER(_Voice)
        self.lib.espeak_Info.restype = ctypes.c_char_p
        self.lib.espeak_Info.argtypes = [ctypes.c_void_p]
        self.lib.espeak_ListVoices.argtypes = [ctypes.POINTER(_Voice)]
        self.lib.espeak_ListVoices.restype = ctypes.POINTER(ctypes.POINTER(_Voice))
        self._identifiers: dict[str, str] = {}  # language -> voice file, e.g. en-gb -> gmw/en
        self.lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
                                          ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
        rate = self.lib.espeak_Initialize(OUTPUT_SYNCHRONOUS, 0, None, INIT_PHONEME_EVENTS | INIT_DONT_EXIT)
        if rate != ESPEAK_RATE:
            raise SynthError(f"espeak-ng did not start (sample rate {rate}, expected {ESPEAK_RATE})")
        self._chunks: list[bytes] = []
        self._events: list[tuple[int, int, int, int, bytes]] = []
        self._callback = _CALLBACK(self._receive)  # kept referenced: espeak calls it until the process ends
        self.lib.espeak_SetSynthCallback(self._callback)
        self.variants = self._list_variants()

    def _list_variants(self) -> frozenset[str]:
        """The variant names a voice takes after its '+' (f3 for en-gb+f3), as `espeak-ng --voices=variant` lists
        them: the files of its voices/!v folder. espeak-ng speaks an unknown variant as no variant at all, without a
        word, so this is the only place a misspelt one shows."""
        listed = self.lib.espeak_ListVoices(ctypes.byref(_Voice(languages=b"variant")))
        names, i = set(), 0
        while listed[i]:  # a NULL-terminated array, valid until the next call: copied out at once
            identifier = listed[i].contents.identifier.decode("utf-8", "replace")
            if identifier.startswith("!v/"):
                names.add(identifier[3:])
            i += 1
        return frozenset(names)

    def check_variant(self, voice: str) -> None:
        """UnknownVoice unless the variant of LANGUAGE[+VARIANT] is one espeak-ng has (or there is none)."""
        language, _, variant = voice.partition("+")
        if variant.isdigit():  # espeak-ng's old numbered variants: +3 is m3, +12 is f2, +0 none
            n = int(variant)
            variant = "" if n == 0 else f"m{n}" if n < 10 else f"f{n - 10}"
        if not variant or variant in self.variants:
            return
        like = difflib.get_close_matches(variant, sorted(self.variants), n=3, cutoff=0.5)
        some = like or [v for v in VARIANTS if v in self.variants][:8] or sorted(self.variants)[:8]
        raise UnknownVoice(f"espeak-ng has no voice variant {variant!r} (in {voice!r}): it has {len(self.variants)}, "
                           f"{'like' if like else 'e.g.'} {', '.join(some)} (espeak-ng --voices=variant lists them)")

    @property
    def version(self) -> str:
        """The library's version, e.g. "1.51" (recorded in corpus.json: another version speaks a little otherwise)."""
        return self.lib.espeak_Info(None).decode("ascii", "replace").split()[0]

    def _receive(self, wav, n_samples, events) -> int:
        if wav and n_samples > 0:
            self._chunks.append(ctypes.string_at(wav, n_samples * 2))
        i = 0
        while events[i].type != 0:  # the list ends with espeakEVENT_LIST_TERMINATED
            e = events[i]
            name = bytes(e.id.string).split(b"\0")[0] if e.type == EVENT_PHONEME else b""
            self._events.append((e.type, e.audio_position, e.text_position, e.length, name))
            i += 1
        return 0

    def select(self, voice: str) -> None:
        """Use a voice given as LANGUAGE[+VARIANT] (en-gb+f3), as the espeak-ng command's -v takes it."""
        self.check_variant(voice)
        language, _, variant = voice.partition("+")
        if language not in self._identifiers:  # the library finds voices by file name: look the language up
            wanted = _Voice(languages=language.encode())
            self.lib.espeak_SetVoiceByProperties(ctypes.byref(wanted))
            found = self.lib.espeak_GetCurrentVoice().contents
            if (found.languages or b"")[1:].decode().lower() != language.lower():
                raise UnknownVoice(f"espeak-ng has no voice for {language!r} (see espeak-ng --voices=en)")
            self._identifiers[language] = found.identifier.decode()
        name = self._identifiers[language] + (f"+{variant}" if variant else "")
        if self.lib.espeak_SetVoiceByName(name.encode()) != 0:
            raise UnknownVoice(f"espeak-ng has no voice {voice!r} (variants: espeak-ng --voices=variant)")

    def speak(self, text: str, voice: str = "en-us", rate: int = 175, pitch: int = 50, pitch_range: int = 50) -> Speech:
        """Speak in a forked child: espeak-ng carries state from one message to the next (its waveform generator's
        phase and pitch), so the same call in this process would give other samples after other texts; a child of a
        process that has spoken nothing starts where every other child starts."""
        read_end, write_end = os.pipe()
        # Ctrl-C is the parent's: blocked across the fork, so that it never reaches the child before the child ignores
        # it (a KeyboardInterrupt there would print a traceback of its own and run on in the parent's code)
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            pid = os.fork()
            if pid == 0:
                self._answer(read_end, write_end, mask, text, voice, rate, pitch, pitch_range)  # never returns
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        os.close(write_end)
        with os.fdopen(read_end, "rb") as pipe:
            payload = pipe.read()
        os.waitpid(pid, 0)
        if not payload:
            raise SynthError(f"espeak-ng died speaking {text!r} in voice {voice}")
        ok, result = pickle.loads(payload)
        if not ok:
            raise result if isinstance(result, SynthError) else SynthError(result)
        return result

    def _answer(self, read_end: int, write_end: int, mask, *speech) -> None:
        """The child of speak(): speak, send the result back, leave without running the parent's exit handlers."""
        try:
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            os.close(read_end)
            try:
                payload = pickle.dumps((True, self._speak(*speech)))
            except SynthError as e:  # as it is: an UnknownVoice stays one
                payload = pickle.dumps((False, e))
            except BaseException as e:  # noqa: BLE001 - anything the child meets is the parent's to report
                payload = pickle.dumps((False, f"{type(e).__name__}: {e}"))
            with os.fdopen(write_end, "wb") as pipe:
                pipe.write(payload)
        finally:  # also when the parent stopped reading (interrupted): the pipe it broke is no one's to report
            os._exit(0)

    def _speak(self, text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> Speech:
        self.select(voice)
        for parameter, value in ((PARAM_RATE, rate), (PARAM_PITCH, pitch), (PARAM_RANGE, pitch_range)):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks, self._events = [], []
        data = text.encode("utf-8")
        if self.lib.espeak_Synth(data, len(data) + 1, 0, 1, 0, CHARS_UTF8, None, None) != 0:
            raise SynthError(f"espeak-ng failed on {text!r}")
        samples = np.frombuffer(b"".join(self._chunks), np.int16).copy()
        phonemes = [(pos / 1000, phoneme_name(name)) for kind, pos, _, _, name in self._events if kind == EVENT_PHONEME]
        words = [(pos / 1000, data[at - 1 : at - 1 + n].decode("utf-8", "replace"))  # text positions count from 1
                 for kind, pos, at, n, _ in self._events if kind == EVENT_WORD and n > 0]
        return Speech(samples, phonemes, words)


def phoneme_name(event_name: bytes) -> str:
    """The phoneme mnemonic of a phoneme event: espeak-ng 1.52 and later put the syllable's stress mark before it
    ("'aU", ",i:"), which earlier versions and the viseme table leave out."""
    return event_name.decode("utf-8", "replace").lstrip("',%=")


_ESPEAK: Espeak | None = None


def espeak() -> Espeak:
    global _ESPEAK
    if _ESPEAK is None:
        _ESPEAK = Espeak()
    return _ESPEAK


# ---------------------------------------------------------------------------------------------------------- visemes

# Viseme targets: (opening 0 closed .. 1 wide, width 0 pursed .. 1 spread, rounding 0 .. 1, teeth showing 0 .. 1).
VISEMES = {
    "rest": (0.04, 0.50, 0.0, 0.0), "closed": (0.00, 0.48, 0.1, 0.0), "labiodental": (0.10, 0.52, 0.0, 1.0),
    "dental": (0.18, 0.55, 0.0, 1.0), "sibilant": (0.10, 0.66, 0.0, 1.0), "postalveolar": (0.22, 0.32, 0.6, 0.7),
    "w": (0.08, 0.15, 1.0, 0.0), "oo": (0.20, 0.20, 0.9, 0.0), "o": (0.50, 0.30, 0.7, 0.2),
    "open": (0.90, 0.62, 0.0, 0.5), "spread": (0.28, 0.90, 0.0, 0.8), "mid": (0.48, 0.68, 0.0, 0.5),
    "schwa": (0.30, 0.55, 0.1, 0.3), "coronal": (0.20, 0.55, 0.0, 0.5), "dorsal": (0.30, 0.52, 0.1, 0.3),
}
VISEME_PHONEMES = {  # espeak-ng's English phoneme mnemonics
    "rest": "_ _: _! _| ;", "closed": "p b m", "labiodental": "f v", "dental": "T D", "sibilant": "s z",
    "postalveolar": "S Z tS dZ r r- R", "w": "w w# W", "oo": "u: U U@ u", "o": "0 O: O@ O2 O o@ oU OI",
    "open": "a aa A: A@ a# V VR A aI aI2 aI3 aI@ aU", "spread": "i: i I I2 I# IR eI i@ i@3 j",
    "mid": "E e@ 3: e", "schwa": "@ @2 @5 @- 3 @L", "coronal": "t t# t[ t2 d n n- l", "dorsal": "k g N h ? x",
}
PHONEME_VISEME = {p: v for v, names in VISEME_PHONEMES.items() for p in names.split()}
DIPHTHONGS = {  # (first, second) targets of gliding vowels
    "aI": ("open", "spread"), "aI2": ("open", "spread"), "aI3": ("open", "spread"), "aU": ("open", "oo"),
    "OI": ("o", "spread"), "eI": ("mid", "spread"), "oU": ("o", "oo"), "i@": ("spread", "schwa"),
    "i@3": ("spread", "schwa"), "e@": ("mid", "schwa"), "U@": ("oo", "schwa"),
}


def viseme_of(phoneme: str) -> str:
    if phoneme in PHONEME_VISEME:
        return PHONEME_VISEME[phoneme]
    if phoneme.startswith("_"):
        return "rest"
    stripped = re.sub(r"[^A-Za-z0-9@:]", "", phoneme)
    return PHONEME_VISEME.get(stripped, PHONEME_VISEME.get(stripped[:1], "schwa"))


def viseme_keys(phonemes: list[tuple[float, str]], duration: float) -> tuple[np.ndarray, np.ndarray]:
    """Key times (K,) in seconds and targets (K, P): rest at both ends, each phoneme's target(s) inside its span."""
    times, targets = [0.0], [VISEMES["rest"]]
    spoken = [start for start, name in phonemes if viseme_of(name) != "rest"]
    if spoken:  # the lips stay at rest until just before the first sound
        times.append(max(0.0, spoken[0] - ANTICIPATION))
        targets.append(VISEMES["rest"])
    ends = [start for start, _ in phonemes[1:]] + [duration]
    for (start, name), end in zip(phonemes, ends):
        span = end - start
        if span <= 0 or name == ";":  # ';' marks palatalisation, not a sound of its own
            continue
        if name in DIPHTHONGS:
            first, second = DIPHTHONGS[name]
            times += [start + 0.3 * span, start + 0.85 * span]
            targets += [VISEMES[first], VISEMES[second]]
        elif viseme_of(name) in ("closed", "labiodental", "rest"):  # held for the whole closure or pause
            times += [start + 0.15 * span, start + 0.8 * span]
            targets += [VISEMES[viseme_of(name)]] * 2
        else:
            times.append(start + 0.5 * span)
            targets.append(VISEMES[viseme_of(name)])
    times.append(duration)
    targets.append(VISEMES["rest"])
    return np.maximum.accumulate(np.array(times)), np.array(targets, np.float32)


def viseme_track(phonemes: list[tuple[float, str]], duration: float, n_frames: int) -> np.ndarray:
    """(T, P) viseme parameters at each frame's centre: keys interpolated, then smoothed like articulators move."""
    times, targets = viseme_keys(phonemes, duration)
    grid = np.arange(int(np.ceil(duration * CURVE_RATE)) + 1) / CURVE_RATE  # (G,) seconds
    curves = np.stack([np.interp(grid, times, targets[:, p]) for p in range(targets.shape[1])], axis=1)  # (G, P)
    sigma = 0.012 * CURVE_RATE  # 12 ms of articulator inertia
    radius = int(3 * sigma)
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    padded = np.pad(curves, ((radius, radius), (0, 0)), mode="edge")
    smooth = np.stack([np.convolve(padded[:, p], kernel, mode="valid") for p in range(curves.shape[1])], axis=1)
    centres = (np.arange(n_frames) + 0.5) / VIDEO_FPS  # (T,)
    return np.stack([np.interp(centres, grid, smooth[:, p]) for p in range(smooth.shape[1])], axis=1)  # (T, P)


# ---------------------------------------------------------------------------------------------------------- drawing

@dataclass
class Face:
    """How one speaker's mouth looks in the crop (pixels and 0-255 gray levels)."""

    skin: float = 150.0  # gray level of the skin
    lip_contrast: float = 0.25  # how much darker the lips are than the skin, as a fraction of its gray level
    centre: tuple[float, float] = (48.0, 50.0)  # (x, y) of the mouth centre
    half_width: float = 26.0  # mouth corner to centre, about, at a neutral width
    max_gap: float = 16.0  # inner lip gap fully open
    upper_lip: float = 4.5  # upper lip thickness at the middle
    lower_lip: float = 7.0  # lower lip thickness at the middle
    bow: float = 0.25  # depth of the cupid's bow (fraction of the upper lip)
    smile: float = 0.0  # corners up (> 0) or down, in pixels
    tilt: float = 0.0  # radians
    light: tuple[float, float] = (0.0, 0.0)  # brightness gradient across x and y, gray levels per pixel
    noise: float = 3.0  # gray levels of per-frame pixel noise

    @classmethod
    def random(cls, rng: np.random.Generator) -> "Face":
        return cls(skin=rng.uniform(90, 200), lip_contrast=rng.uniform(0.15, 0.35),
                   centre=(rng.uniform(44, 52), rng.uniform(46, 54)), half_width=rng.uniform(22, 30),
                   max_gap=rng.uniform(12, 19), upper_lip=rng.uniform(4, 7), lower_lip=rng.uniform(6, 10),
                   bow=rng.uniform(0.1, 0.4), smile=rng.uniform(-2, 2), tilt=rng.uniform(-0.1, 0.1),
                   light=(rng.uniform(-0.4, 0.4), rng.uniform(-0.5, 0.3)), noise=rng.uniform(1.5, 5))


def _cover(distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a pixel whose centre is `distance` pixels inside an edge."""
    return np.clip(distance + 0.5, 0.0, 1.0)


def _inside(v: np.ndarray, top: np.ndarray, bottom: np.ndarray, slope_top, slope_bottom) -> np.ndarray:
    """Coverage of the band top < v < bottom, edges anti-aliased along their normals (a band thinner than a pixel
    covers no more than its thickness)."""
    edges = np.minimum(_cover((v - top) / np.sqrt(1 + slope_top ** 2)),
                       _cover((bottom - v) / np.sqrt(1 + slope_bottom ** 2)))
    return np.minimum(edges, np.clip(bottom - top, 0.0, 1.0))


def render_mouth(track: np.ndarray, face: Face, rng: np.random.Generator) -> np.ndarray:
    """(T, R, R) uint8 frames of the mouth following the (T, P) viseme track."""
    T = track.shape[0]
    track = track.astype(np.float32)
    opening, width, rounding, teeth = (track[:, p, None, None] for p in range(4))  # each (T, 1, 1)
    # Per-frame jitter: slow random walks of position, scale and tilt, and a flicker of brightness.
    walk = np.cumsum(rng.normal(0, 1, (T, 5)), axis=0) * [0.25, 0.25, 0.004, 0.004, 0.3]
    walk = (walk - walk.mean(axis=0)).astype(np.float32)
    cx, cy, scale, tilt, flicker = (walk[:, k, None, None] for k in range(5))
    cx, cy = cx + face.centre[0], cy + face.centre[1] + 2.5 * opening  # the jaw drops the mouth a little
    tilt = tilt + face.tilt
    ys, xs = np.mgrid[0:ROI, 0:ROI].astype(np.float32)  # (R, R)
    dx, dy = xs[None] - cx, ys[None] - cy  # (T, R, R)
    u = (dx * np.cos(tilt) + dy * np.sin(tilt)) / (1 + scale)  # along the mouth
    v = (-dx * np.sin(tilt) + dy * np.cos(tilt)) / (1 + scale)  # down across it

    half = face.half_width * (0.6 + 0.55 * width)  # (T, 1, 1)
    x = np.clip(u / half, -1.5, 1.5)
    span = np.clip(1 - x ** 2, 0, None)
    curl = face.smile * -(x ** 2)  # the mouth line bends up at the corners for a smile
    gap = face.max_gap * opening
    reach = 0.92 - 0.3 * rounding  # the opening's corners, as a fraction of the mouth's: pursed lips close them in
    inner = (np.clip(1 - (x / reach) ** 2, 0, None)) ** (1.0 - 0.5 * rounding)  # lens (spread) to oval (rounded)
    protrude = 1 + 0.35 * rounding
    inner_top = curl - 0.35 * gap * inner
    inner_bottom = curl + 0.65 * gap * inner
    bow = 1 + 0.22 * np.exp(-(((np.abs(x) - 0.25) / 0.15) ** 2)) - face.bow * np.exp(-((x / 0.09) ** 2))
    outer_top = inner_top - face.upper_lip * protrude * span ** 0.6 * bow
    outer_bottom = inner_bottom + face.lower_lip * protrude * span ** 0.5

    def slope(edge):  # d(edge)/du on the pixel grid, for anti-aliasing along the edge's normal
        return np.gradient(edge, axis=2)

    lips = _inside(v, outer_top, outer_bottom, slope(outer_top), slope(outer_bottom))  # the whole mouth shape
    cavity = _inside(v, inner_top, inner_bottom, slope(inner_top), slope(inner_bottom))
    shown = teeth * 0.3 * face.max_gap * inner  # how far the upper teeth reach below the upper lip
    upper_teeth = cavity * _cover(inner_top + shown - v) * np.clip(3 * (0.75 - np.abs(x)), 0, 1)
    lower_teeth = cavity * _cover(v - inner_bottom + 0.5 * shown * opening) * np.clip(3 * (0.6 - np.abs(x)), 0, 1)
    tongue = cavity * np.exp(-(((v - inner_bottom) / (0.35 * gap + 1)) ** 2) - (x / 0.6) ** 2) * opening

    # Skin: base shade, light gradient, the philtrum above the lip and the shadow under the lower lip.
    image = face.skin + face.light[0] * dx + face.light[1] * dy
    image = image - 12 * np.exp(-((x / 0.12) ** 2) - (((v - outer_top + 8) / 6) ** 2)) * (v < outer_top)
    image = image - 18 * np.exp(-(((v - outer_bottom - 5) / 4) ** 2)) * np.clip(1.2 - np.abs(u) / face.half_width, 0, 1)
    image = image - 10 * np.exp(-(((np.abs(u) - half - 2) / 3) ** 2) - (v / 6) ** 2)  # corner creases
    # Lips: darker than skin, the upper lip in shadow, a highlight on the lower lip.
    lip_shade = face.skin * (1 - face.lip_contrast) - 10 * (v < curl) + 14 * np.exp(
        -(((v - (inner_bottom + outer_bottom) / 2) / 2.5) ** 2) - (x / 0.5) ** 2) * (v > curl)
    image = image * (1 - lips) + lip_shade * lips
    seam = np.exp(-(((v - curl) / 0.8) ** 2)) * (gap < 1.5) * np.clip(1 - np.abs(x), 0, 1) * lips
    image = image - 0.5 * face.skin * face.lip_contrast * seam
    interior = 25 + 15 * tongue
    enamel = (face.skin * 0.4 + 90) * (1 - 0.5 * x ** 2)  # teeth further back are in shadow
    interior = interior * (1 - upper_teeth) + enamel * upper_teeth
    interior = interior * (1 - lower_teeth) + 0.8 * enamel * lower_teeth
    image = image * (1 - cavity) + interior * cavity
    image = image * (1 + flicker / 100) + rng.normal(0, face.noise, image.shape).astype(np.float32)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------- corpus

@dataclass
class Speaker:
    name: str
    voice: str  # espeak-ng voice with its variant, e.g. en-gb+f3
    rate: int  # words per minute
    pitch: int  # 0-100, 50 normal
    pitch_range: int  # 0-100, 50 normal
    face: Face = field(default_factory=Face)


def make_speakers(n: int, voices: list[str], seed: int) -> list[Speaker]:
    speakers = []
    for k in range(n):
        rng = np.random.default_rng([seed, 2, k])
        variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
        voice = voices[k % len(voices)]
        if variant and "+" not in voice:  # a voice given with its own variant keeps it
            voice += f"+{variant}"
        female = variant.startswith("f")
        speakers.append(Speaker(f"spk{k:02d}", voice, int(rng.integers(140, 196)),
                                int(rng.integers(50, 75) if female else rng.integers(25, 60)),
                                int(rng.integers(30, 80)), Face.random(rng)))
    return speakers


def split_counts(n: int, valid: float, test: float) -> dict[str, int]:
    """Utterances per split: the fractions of n, rounded, except that valid and test get one each when given a
    fraction above 0 and there are three utterances or more, and that train keeps one (the larger of valid and test
    gives it up)."""
    held = {}
    for split, fraction in (("valid", valid), ("test", test)):
        held[split] = int(round(n * fraction))
        if fraction > 0 and n >= 3:
            held[split] = max(held[split], 1)
    while n >= 1 and held["valid"] + held["test"] >= n:
        held["valid" if held["valid"] >= held["test"] else "test"] -= 1
    return {"train": n - held["valid"] - held["test"], **held}


# Output settings every clip of the corpus is written with (deterministic: the same frames give the same bytes).
CLIP_OUTPUT = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-g", "50", "-pix_fmt", "yuv420p",
               "-threads", "1", "-c:a", "aac", "-b:a", "48k", "-ar", str(SAMPLE_RATE),
               "-map_metadata", "-1", "-fflags", "+bitexact", "-flags", "+bitexact"]


def write_clip(path: Path, frames: np.ndarray, samples: np.ndarray, rate: int = ESPEAK_RATE) -> None:
    """(T, R, R) uint8 frames and (S,) int16 samples at `rate` into an mp4 (H.264 + 16 kHz AAC), written under a
    temporary name and renamed (files.atomic_write): a clip at `path` is always whole."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".s16", dir=path.parent) as audio:
        audio.write(samples.astype("<i2").tobytes())
        audio.flush()
        inputs = ["-f", "rawvideo", "-pix_fmt", "gray", "-s", f"{ROI}x{ROI}", "-framerate", str(VIDEO_FPS),
                  "-i", "pipe:0", "-f", "s16le", "-ar", str(rate), "-ac", "1", "-i", audio.name,
                  "-map", "0:v", "-map", "1:a"]
        _encode(path, inputs, "write the clip", frames.tobytes())


def _encode(path: Path, inputs: list[str], what: str, data: bytes | None = None) -> None:
    """ffmpeg from `inputs` (data on its stdin) to a corpus clip at path, written atomically; MediaError if it fails."""
    def encode(partial: str) -> None:
        command = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *inputs, *CLIP_OUTPUT,
                   "-f", "mp4", partial]
        subprocess.run(command, input=data, capture_output=True, check=True)

    try:
        atomic_write(path, encode)
    except FileNotFoundError as e:
        raise MediaError("ffmpeg", "the ffmpeg program is not installed (e.g. apt-get install ffmpeg)") from e
    except subprocess.CalledProcessError as e:
        raise MediaError(path, f"cannot {what} ({last_words(e.stderr)})") from e


def make_utterance(job: dict) -> dict:
    """Speak one sentence and, for a clip job (one with a "video" path), draw and write its clip unless a clip is
    already there (clips are written whole or not at all); returns its alignment record, with its text for a
    reading job. `job` is a plain dict (it crosses processes)."""
    speaker = Speaker(**{**job["speaker"], "face": Face(**job["speaker"]["face"])})
    rng = np.random.default_rng([job["seed"], 3, job["index"]])
    speech = espeak().speak(job["text"] + ".", speaker.voice, speaker.rate, speaker.pitch, speaker.pitch_range)
    lead = int(rng.uniform(0.1, 0.35) * ESPEAK_RATE)
    total = lead + len(speech.samples) + int(rng.uniform(0.1, 0.35) * ESPEAK_RATE)
    total = -(-total // ESPEAK_FRAME) * ESPEAK_FRAME  # whole video frames, so audio and video end together
    shift = lead / ESPEAK_RATE
    phonemes = [(t + shift, name) for t, name in speech.phonemes]
    duration = total / ESPEAK_RATE
    n_frames = total // ESPEAK_FRAME
    clip = Path(job["out_dir"]) / job["video"] if job.get("video") else None
    if clip is not None and not clip.exists():
        samples = np.zeros(total, np.int16)
        samples[lead : lead + len(speech.samples)] = speech.samples
        track = viseme_track(phonemes, duration, n_frames)  # (T, P)
        frames = render_mouth(track, speaker.face, rng)  # (T, R, R)
        write_clip(clip, frames, samples)
    record = {"id": job["id"], "split": job["split"], "speaker": speaker.name, "voice": speaker.voice,
              "duration": round(duration, 6), "frames": n_frames,
              "speech": [round(shift, 4), round(shift + speech.duration, 4)],
              "phonemes": [[round(t, 4), name] for t, name in phonemes],
              "words": [[round(t + shift, 4), w] for t, w in speech.words]}
    return record if clip is not None else {**record, "text": job["text"]}


IDENTITY = ("seed", "utterances", "splits", "text", "speakers")  # what corpus.json fields make a corpus what it is
# and these, when the corpus.json there has them (older ones do not): the sentences drawn (another fortunes package or
# text file reorders them: kept clips would get other transcripts) and the espeak-ng that spoke them
IDENTITY_IF_RECORDED = ("sentences_sha256", "espeak_ng")


def generate(out_dir, utterances: int, seed: int = 0, voices: list[str] | None = None, speakers: int = 12,
             valid: float = 0.05, test: float = 0.05, text_file=None, jobs: int = 1, progress=None,
             reading: int = 0, warn=None) -> dict:
    """Write the corpus, and `reading` more sentences spoken for their alignments only (no clip: text for the LM to
    learn to read, `reading.jsonl`); returns what corpus.json holds. Clips already in out_dir from an earlier run
    with the same options are kept, so an interrupted run resumes and a reading set can be added later. `warn` gets
    what is done otherwise than asked (splits not of the sizes --valid and --test give)."""
    out_dir = Path(out_dir)
    written = out_dir / "corpus.json"
    if not written.is_file() and out_dir.is_dir() and any(out_dir.iterdir()):  # its train.jsonl would be written over
        raise UsageError(f"{out_dir} holds files and no synth corpus (corpus.json): write to a new or empty folder")
    voices = list(voices or DEFAULT_VOICES)
    sentences = load_sentences(text_file)
    if utterances + reading > len(sentences):
        raise SynthError(f"{utterances} utterances and {reading} reading sentences asked for but the text has only "
                         f"{len(sentences)} sentences")
    order = np.random.default_rng([seed, 0]).permutation(len(sentences))[:utterances + reading]
    cast = make_speakers(speakers, voices, seed)
    for voice in dict.fromkeys(voices):  # fail early on an unknown voice or variant, named as the user gave it
        espeak().speak("hello", voice)
    for speaker in cast:  # and on one of VARIANTS that this espeak-ng lacks
        espeak().check_variant(speaker.voice)
    counts = split_counts(utterances, valid, test)
    meta = {"seed": seed, "utterances": utterances, "splits": counts, "hours": None,
            "text": str(text_file) if text_file else f"Debian fortunes ({FORTUNE_DIR}), BSD licence",
            "sentences_available": len(sentences), "speakers": [asdict(s) for s in cast], "reading": reading,
            "espeak_ng": espeak().version,
            "sentences_sha256": hashlib.sha256("\n".join(sentences[at] for at in order[:utterances]).encode())
            .hexdigest()}  # the clips' sentences (a reading set may be added to a corpus later)
    if written.is_file():
        before = json.loads(written.read_text(encoding="utf-8"))
        differ = [key for key in IDENTITY if before.get(key) != json.loads(json.dumps(meta[key]))]
        differ += [key for key in IDENTITY_IF_RECORDED if key in before and before[key] != meta[key]]
        if differ:
            raise SynthError(f"{out_dir} holds a corpus made otherwise ({', '.join(differ)} differ: seed "
                             f"{before.get('seed')}, {before.get('utterances')} utterances, espeak-ng "
                             f"{before.get('espeak_ng')}): write to another folder")
    exact = {"valid": int(round(utterances * valid)), "test": int(round(utterances * test))}
    if warn and any(counts[split] != exact[split] for split in exact):  # moved by a rule, not by rounding: said
        warn(f"train/valid/test {'/'.join(str(k) for k in counts.values())}, not the "
             f"{utterances - sum(exact.values())}/{exact['valid']}/{exact['test']} of --valid {valid:g} "
             f"--test {test:g}: a split given a fraction gets a clip at least, and train keeps one")
    out_dir.mkdir(parents=True, exist_ok=True)
    # written before any clip: a rerun with other options is refused, not mixed in
    atomic_write_text(written, json.dumps(meta, indent=1) + "\n")
    labels = ["test"] * counts["test"] + ["valid"] * counts["valid"] + ["train"] * counts["train"]
    labels += ["reading"] * reading
    work = []
    for index, (label, at) in enumerate(zip(labels, order)):
        speaker = cast[int(np.random.default_rng([seed, 1, index]).integers(len(cast)))]
        uid = f"{speaker.name}_{index:06d}"
        work.append({"index": index, "seed": seed, "id": uid, "split": label, "text": sentences[at],
                     "video": f"{label}/{uid}.mp4" if label in SPLITS else None, "out_dir": str(out_dir),
                     "speaker": asdict(speaker)})
    records = []
    if jobs > 1:
        import multiprocessing

        with multiprocessing.get_context("fork").Pool(jobs, initializer=_quiet_worker) as pool:
            for record in pool.imap(make_utterance, work, chunksize=4):
                records.append(record)
                if progress:
                    progress(len(records), len(work))
    else:
        for job in work:
            records.append(make_utterance(job))
            if progress:
                progress(len(records), len(work))
    for label in SPLITS:
        rows = [{"id": j["id"], "video": j["video"], "text": j["text"]} for j in work if j["split"] == label]
        if rows:  # an empty manifest is no set: `mome train --valid` refuses it, `evaluate` finds nothing in it
            _write_lines(out_dir / f"{label}.jsonl", rows)
    _write_lines(out_dir / "alignments.jsonl", [r for r in records if r["split"] in SPLITS])
    if reading:
        _write_lines(out_dir / "reading.jsonl", [r for r in records if r["split"] == "reading"])
    meta["hours"] = sum(r["duration"] for r in records if r["split"] in SPLITS) / 3600
    atomic_write_text(written, json.dumps(meta, indent=1) + "\n")
    return meta


def _quiet_worker() -> None:
    """A pool worker leaves Ctrl-C to the parent, which stops the pool (SIGTERM); stopped, it raises SystemExit, which
    ends a worker without a traceback and removes a clip it was writing as an error would (atomic_write)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _stop)


def _stop(signum, frame) -> None:
    raise SystemExit(128 + signum)


def join_clips(corpus: str | Path, split: str, seconds: float, out_dir: str | Path) -> list[dict]:
    """Long-form clips of a corpus's split: each speaker's clips, in manifest order, joined until they last `seconds`
    or more (a speaker's last group may be shorter), re-encoded as the corpus's clips are. Writes
    out_dir/<split>/<id>.mp4 (ids <speaker>_long<k>, each clip written whole; one already there is kept) and
    out_dir/<split>.jsonl (id, video, text: the joined transcripts, and "parts": the ids joined); returns its rows.
    """
    corpus, out_dir = Path(corpus), Path(out_dir)
    durations = {r["id"]: r["duration"] for r in map(json.loads, open(corpus / "alignments.jsonl", encoding="utf-8"))}
    groups: dict[str, list[list[dict]]] = {}  # speaker -> groups of manifest rows
    for row in map(json.loads, open(corpus / f"{split}.jsonl", encoding="utf-8")):
        speaker = row["id"].rsplit("_", 1)[0]
        runs = groups.setdefault(speaker, [[]])
        if sum(durations[r["id"]] for r in runs[-1]) >= seconds:
            runs.append([])
        runs[-1].append(row)
    rows = []
    for speaker, runs in groups.items():
        for k, run in enumerate(runs):
            name = f"{speaker}_long{k:03d}"
            path = out_dir / split / f"{name}.mp4"
            if not path.exists():
                _concat([corpus / r["video"] for r in run], path)
            rows.append({"id": name, "video": f"{split}/{name}.mp4", "text": " ".join(r["text"] for r in run),
                         "parts": [r["id"] for r in run]})
    _write_lines(out_dir / f"{split}.jsonl", rows)
    return rows


def _concat(clips: list[Path], path: Path) -> None:
    """Clips one after the other into one mp4, written as write_clip writes one. Each part is decoded and gives its
    frames and exactly 640 samples a frame, so sound and lips stay together however many parts are joined (ffmpeg's
    concat demuxer pads each part's audio to whole AAC frames: the sound fell 16-40 ms further behind at each join)."""
    frames, samples = [], []
    for clip in clips:
        info = probe(clip)
        video = decode_video(clip, info=info)[..., 0]  # (T, R, R): the clips are gray
        audio = decode_audio(clip, info=info)[: len(video) * SAMPLES_PER_FRAME]
        frames.append(video)
        samples.append(np.pad(audio, (0, len(video) * SAMPLES_PER_FRAME - len(audio))))
    pcm = np.clip(np.round(np.concatenate(samples) * 32768), -32768, 32767).astype(np.int16)
    write_clip(path, np.concatenate(frames), pcm, rate=SAMPLE_RATE)


def _write_lines(path: Path, rows: list[dict]) -> None:
    """One JSON object per line, written atomically."""
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


# What a new corpus is made with where the command line does not say (--text: the fortunes)
CORPUS_DEFAULTS = {"seed": 0, "voices": list(DEFAULT_VOICES), "speakers": 12, "valid": 0.05, "test": 0.05,
                   "text": None, "reading": 0, "jobs": 1}


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C: every clip is whole or absent, and a rerun keeps the whole ones
        print("synth: interrupted; the same command again goes on from where it stopped", file=sys.stderr)
        return 130


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mome_cli.synth", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", metavar="OUT_DIR", help="folder for the manifests and clips")
    parser.add_argument("--utterances", "-n", type=int, help="how many clips in all splits")
    # the options of a new corpus default to None here, so that --long-form can tell those given (CORPUS_DEFAULTS)
    parser.add_argument("--seed", type=int, help="same seed, same corpus [0]")
    parser.add_argument("--voices", nargs="+", metavar="VOICE",
                        help="espeak-ng English voices the speakers are drawn from, each LANGUAGE[+VARIANT] as "
                        f"espeak-ng -v takes it (a voice given with a variant keeps it) [{' '.join(DEFAULT_VOICES)}]")
    parser.add_argument("--speakers", type=int, help="distinct speakers (voice, variant, face) [12]")
    parser.add_argument("--valid", type=float, help="fraction of sentences for valid [0.05]")
    parser.add_argument("--test", type=float, help="fraction of sentences for test [0.05]")
    parser.add_argument("--text", metavar="FILE", help="plain English text to take sentences from [Debian fortunes]")
    parser.add_argument("--reading", type=int, metavar="N", help="also speak N more sentences, none of "
                        "the clips', for their alignments only: reading.jsonl, text for the LM to learn to read [0]")
    parser.add_argument("--jobs", "-j", type=int, help="worker processes [1]")
    parser.add_argument("--long-form", type=float, metavar="SECONDS", help="instead: join OUT_DIR's valid and test "
                        "clips into clips of SECONDS or more per speaker (a speaker's last may be shorter), in "
                        "OUT_DIR/long")
    args = parser.parse_args(argv)
    given = [f"--{name}" for name in ("utterances", *CORPUS_DEFAULTS) if getattr(args, name) is not None]
    if args.long_form is not None:
        if args.long_form <= 0:
            parser.error(f"--long-form takes a positive number of seconds, got {args.long_form:g}")
        if given:  # they would be ignored
            parser.error(f"--long-form joins the clips already in OUT_DIR as they were made: it takes no "
                         f"{', '.join(given)}")
        return _long_form(Path(args.out_dir), args.long_form)
    for name, default in CORPUS_DEFAULTS.items():
        if getattr(args, name) is None:
            setattr(args, name, default)
    if args.utterances is None:
        parser.error("--utterances is required (or --long-form)")
    if args.utterances < 1 or args.speakers < 1 or args.jobs < 1 or args.reading < 0:
        parser.error("--utterances, --speakers and --jobs must be at least 1, --reading at least 0")
    if args.seed < 0:
        parser.error(f"--seed must be 0 or more, got {args.seed}")
    if not (0 <= args.valid < 1 and 0 <= args.test < 1 and args.valid + args.test < 1):
        parser.error(f"--valid {args.valid} and --test {args.test} must be fractions that add up to less than 1")
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done == total or done % 50 == 0:
            print(f"synth: {done}/{total} utterances, {time.monotonic() - started:.1f} s", file=sys.stderr)

    def warn(message: str) -> None:
        print(f"synth: warning: {message}", file=sys.stderr)

    try:
        meta = generate(args.out_dir, args.utterances, args.seed, args.voices, args.speakers, args.valid, args.test,
                        args.text, args.jobs, progress, args.reading, warn)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (SynthError, MediaError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for label in [s for s in SPLITS if meta["splits"][s]] + (["reading"] if args.reading else []):
        print(os.path.join(args.out_dir, f"{label}.jsonl"))
    print(f"synth: {meta['utterances']} clips, {meta['hours'] * 60:.1f} min of speech, "
          f"{time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


def _long_form(corpus: Path, seconds: float) -> int:
    started = time.monotonic()
    for split in ("valid", "test"):
        if not (corpus / f"{split}.jsonl").is_file() and (corpus / "corpus.json").is_file():
            continue  # a corpus made with --valid 0 or --test 0 has no such split
        try:
            rows = join_clips(corpus, split, seconds, corpus / "long")
        except (MediaError, OSError, KeyError, ValueError) as e:
            print(f"error: {corpus}: cannot join the {split} clips: {e}", file=sys.stderr)
            return 1
        print(corpus / "long" / f"{split}.jsonl")
        print(f"synth: {split}: {len(rows)} long-form clips, {time.monotonic() - started:.1f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
