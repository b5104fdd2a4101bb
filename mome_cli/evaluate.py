"""`mome evaluate` as a library call: corpus WER of one model on one dataset, for every asked rate pair and SNR.

Work is shared wherever the result allows it. Every utterance is preprocessed once (through the Preprocessor's cache).
Utterances are cut into segments as `mome transcribe` cuts them (at every pause, at most 20 s), except those of the
auto_avsr CSV layout (LRS2/LRS3), which are decoded whole as the paper does, cut only where the limit needs it
(`pack`). Pauses are looked for in the audio the model hears, noise included: the cuts know no more than a user's
run would. Per SNR, segments are batched longest first; per batch the encoders run once, and the LLM decodes once per
rate pair: encoder features do not depend on the rate, and a batch cut as at an earlier SNR reuses its lips'
features (the noise changes the cuts, not the lips). In mode v nothing depends on the SNR, so the first SNR's
results fill every column (with a warning).

Noise. Babble is built from the dataset's own utterances: BABBLE_TALKERS + 1 of them, drawn with the seed from the
whole manifest (not only the `limit` evaluated), each scaled to unit RMS. Utterance i hears the sum of BABBLE_TALKERS
of those talkers - never itself: if it is one of them the spare takes its place - each talker looped end to end on a
track as long as the longest talker, and i takes a window of that track at a start drawn from (seed, i's id), whatever
else is evaluated (--limit, failed utterances). The window is scaled so that its power sits `snr` dB below the
utterance's own power (both measured over the whole utterance: see noise.py, which does the looping and mixing). A
`--noise FILE` is used the same way, as the only talker. Everything is deterministic given the seed; the window does
not change with the SNR, only its level.

Outputs (atomic): report.json (the counts per rate x SNR and how they were made), hypotheses.jsonl (one line per
utterance, rate and SNR), wer.png (plotting.py: WER against SNR, one line per rate pair; bars when there is one SNR
column).

Notation for shapes: S samples.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from .files import atomic_write_all, interrupt_after, text_writer
from .noise import LoopedNoise, mix_at_snr
from .outputs import counted
from .options import MAX_BEAM
from .report import Report
from .scoring import NORMALISATION, WordErrors, score, wer_percent

BABBLE_TALKERS = 30  # utterances summed into babble, as in AV-HuBERT's LRS3 babble; with few, words stand out
CLEAN = "clean"  # the SNR column with no noise added
MAX_SNR = 140  # dB: a float32 sample holds about 144 dB between a signal and its rounding
REPORT_FILE, HYPOTHESES_FILE, PLOT_FILE = "report.json", "hypotheses.jsonl", "wer.png"

SNR = float | str  # dB, or CLEAN


# ---- options ---------------------------------------------------------------------------------------------------------


def parse_snrs(text: str) -> tuple[SNR, ...]:
    """"clean,-5,0,5" -> ("clean", -5, 0, 5): whole numbers as int; ValueError naming the bad value."""
    snrs = []
    for part in str(text).split(","):
        part = part.strip()
        if part.lower() == CLEAN:
            value = CLEAN
        else:
            try:
                number = float(part)
            except ValueError:
                raise ValueError(f"{part!r} in {text!r} is neither a number of dB nor 'clean' "
                                 f"(e.g. --snr clean,-5,0,5)") from None
            if not abs(number) <= MAX_SNR:  # NaN too
                raise ValueError(f"{part!r} in {text!r}: an SNR must be a number of dB within ±{MAX_SNR} (beyond "
                                 "it, one of speech and noise is below the other's rounding in 32-bit samples)")
            value = int(number) if number.is_integer() else number
        if value not in snrs:
            snrs.append(value)
    return tuple(snrs)


def snr_label(snr: SNR) -> str:
    return CLEAN if snr == CLEAN else f"{snr:g} dB"


def rate_label(rate: tuple) -> str:
    """(4, 2) -> "4,2"; (4, None) -> "4" (mode a); (None, 5) -> "5" (mode v)."""
    return ",".join(str(r) for r in rate if r is not None)


@dataclass(frozen=True)
class EvaluateJob:
    dataset: str  # lrs3 | lrs2 | a manifest or folder path, as the user gave it
    output_dir: Path
    data_root: Path | None = None  # where named datasets are looked up
    split: str = "test"
    model: str = "demo"
    adapter: str | None = None
    device: str = "auto"
    mode: str = "av"  # a | v | av
    rates: tuple | None = None  # rate tuples as parsed, (A, V) or (R,); None: every rate the model was trained on
    any_rate: bool = False  # allow rates the model was not trained on
    snrs: tuple = (CLEAN,)  # columns of the table: dB or CLEAN
    noise: Path | None = None  # noise file; None: babble from the dataset
    seed: int = 0  # picks the babble talkers and every utterance's noise window
    limit: int | None = None  # evaluate the first N utterances only
    beam: int = 1
    batch_size: int = 8  # segments encoded and decoded together
    max_new_tokens: int | None = None  # None: from the length of each segment (token_budget)
    max_segment: float | None = None  # seconds; None: the recognizer's limit (20 s, or its audio window)
    pack: bool | None = None  # cut only what is longer than the limit; None: yes for the auto_avsr CSV layout
    roi: bool | None = None  # videos are mouth crops; None: yes for the auto_avsr CSV layout, else no
    detector: str = "sfd"  # face detector when roi is off
    cache_dir: Path | None = None  # preprocessed clips; None: no cache
    verbose: int = 0  # -v: the model, the preprocessing time and each cell's WER and time as it is scored

    def __post_init__(self):
        if not self.snrs:
            raise ValueError("snrs must name at least one SNR or 'clean'")
        if self.batch_size < 1 or not 1 <= self.beam <= MAX_BEAM:
            raise ValueError(f"batch_size must be >= 1 and beam in [1, {MAX_BEAM}], got {self.batch_size} and "
                             f"{self.beam}")


# ---- noise -----------------------------------------------------------------------------------------------------------


def babble(utterances: list, load_audio: Callable, seed: int, log: Callable[[str], None],
           talkers: int = BABBLE_TALKERS, said: frozenset = frozenset()) -> LoopedNoise:
    """Babble from up to talkers + 1 of the utterances (drawn with the seed); fewer when the corpus is smaller.
    An utterance that cannot be read is left out, with a warning unless its id is in said (the evaluation's own
    error says why)."""
    from .media import MediaError

    order = np.random.default_rng(seed).permutation(len(utterances))
    pool = []
    for k in order:
        if len(pool) == talkers + 1:
            break
        try:
            audio = load_audio(utterances[k])
        except MediaError as e:
            if utterances[k].id not in said:
                log(f"warning: babble: skipping {utterances[k].id}: {e}")
            continue
        if np.any(audio):
            pool.append((utterances[k].id, audio))
    if len(pool) < 2:
        from .recognizer import UsageProblem

        raise UsageProblem(f"babble noise needs at least 2 utterances with sound, the dataset has {len(pool)}; "
                           f"pass --noise FILE")
    if len(pool) <= talkers:
        log(f"warning: babble from {len(pool) - 1} talkers, not {talkers}: the dataset has too few utterances")
    return LoopedNoise(pool, count=len(pool) - 1, seed=seed)


# ---- preprocessing ---------------------------------------------------------------------------------------------------


class ClipLoader:
    """Utterance -> Clip in the asked mode, reading the audio from a separate file when the utterance has one."""

    def __init__(self, mode: str, roi: bool, detector: str, device: str, cache_dir: Path | None):
        from .preprocess import Preprocessor, PreprocessOptions

        self.mode = mode
        self.whole = Preprocessor(PreprocessOptions(mode=mode, roi=roi, detector=detector, device=device), cache_dir)
        self.audio = Preprocessor(PreprocessOptions(mode="a"), cache_dir)
        self.video = Preprocessor(PreprocessOptions(mode="v", roi=roi, detector=detector, device=device), cache_dir)

    def audio_of(self, utterance) -> np.ndarray:
        return self.audio(utterance.media).audio  # (S,)

    def __call__(self, utterance):
        """The utterance's Clip; MediaError, or UtteranceError (its transcript missing or unreadable), when it cannot
        be used."""
        from .lips import NoFaceError
        from .media import SAMPLE_RATE, MediaError, NoVideoError
        from .preprocess import Clip

        u, mode = utterance, self.mode
        u.check()
        if mode == "a":
            return self.audio(u.media)
        if u.video is None:
            if mode == "v":
                raise MediaError(u.audio, "no video (mode v needs the lips)")
            clip = self.audio(u.audio)
            clip.warnings.append("no video: evaluated from audio alone")
            return clip
        if mode == "v" or u.audio is None:
            return self.whole(u.video)
        audio = self.audio(u.audio).audio  # mode av with a separate audio file (the auto_avsr layout: a .wav beside)
        clip = Clip(path=str(u.video), duration=len(audio) / SAMPLE_RATE, mode="av", audio=audio)
        try:
            clip.rois = self.video(u.video).rois
        except MediaError as e:
            if not isinstance(e, NoVideoError) and not isinstance(e.__cause__, NoFaceError):
                raise
            clip.mode = "a"
            clip.warnings.append(f"{e.problem}: evaluated from audio alone")
        return clip


# ---- results ---------------------------------------------------------------------------------------------------------


@dataclass
class Cell:
    """One rate pair at one SNR, over the whole corpus."""

    rate: tuple
    snr: SNR
    errors: WordErrors
    audio_seconds: float  # of the utterances scored
    wall_seconds: float  # decoding this cell plus its share of the encoders' time
    segments: int = 0  # decoded
    cut_short: int = 0  # of them, those that reached the token limit without ending: their text stops there

    def to_dict(self) -> dict:
        counts = self.errors.to_dict()
        wer = counts.pop("wer")
        return {"rate": [r for r in self.rate if r is not None], "snr": self.snr, "wer": wer,
                "wer_percent": None if wer is None else round(100 * wer, 4), **counts,
                "audio_seconds": round(self.audio_seconds, 3), "wall_seconds": round(self.wall_seconds, 3),
                "segments": self.segments, "segments_cut_short": self.cut_short}


@dataclass
class Evaluation:
    job: EvaluateJob
    manifest: Path
    rates: list  # resolved rate tuples, (A, V) with None for an absent modality
    split: str | None = None  # the split read: of a named dataset, or a folder's <split>.jsonl / .csv; else None
    cells: list[Cell] = field(default_factory=list)
    hypotheses: list[dict] = field(default_factory=list)  # id, rate, snr, mode, ref, hyp
    evaluated: int = 0  # utterances preprocessed and decoded
    failed: list[tuple[str, str]] = field(default_factory=list)  # (utterance id, error) of those skipped
    noise: dict | None = None  # how noise was made; None when every column is clean
    max_segment: float | None = None  # seconds: utterances longer than this were cut at pauses
    pack: bool = False  # cut only where max_segment needs it, not at every pause
    audio_only: list[str] = field(default_factory=list)  # ids decoded from audio alone in mode av (no face)
    wall_seconds: float = 0.0

    @property
    def return_code(self):
        """0 all evaluated; 3 some utterances failed to preprocess, others were scored; 1 none could be."""
        return Report(ok=self.evaluated, failed=len(self.failed)).return_code

    def cell(self, rate: tuple, snr: SNR) -> Cell | None:
        return next((c for c in self.cells if c.rate == rate and c.snr == snr), None)

    def table(self) -> str:
        """Corpus WER in % with a row per rate pair and a column per SNR, aligned for a terminal."""
        head = ["rate" if self.job.mode != "av" else "rate A,V", *(snr_label(s) for s in self.job.snrs)]
        rows = [head]
        for rate in self.rates:
            values = []
            for snr in self.job.snrs:
                cell = self.cell(rate, snr)
                values.append(wer_percent(cell.errors.wer if cell else math.nan, 2, unit=""))
            rows.append([rate_label(rate), *values])
        widths = [max(len(row[k]) for row in rows) for k in range(len(head))]
        lines = ["  ".join(v.ljust(w) if k == 0 else v.rjust(w) for k, (v, w) in enumerate(zip(row, widths)))
                 for row in rows]
        title = f"WER % ({self.job.mode}, {counted(self.evaluated, 'utterance')})"
        return "\n".join([title, *lines])

    def to_dict(self) -> dict:
        from .decoding import TOKENS_PER_SECOND

        j = self.job
        return {
            "model": j.model, "adapter": j.adapter, "mode": j.mode, "dataset": j.dataset,
            "manifest": str(self.manifest), "split": self.split,
            "seed": j.seed, "beam": j.beam, "noise": self.noise,
            "max_segment_seconds": self.max_segment, "segments": "packed" if self.pack else "every pause",
            "max_new_tokens": j.max_new_tokens or f"{TOKENS_PER_SECOND} a second of the segment",
            "audio_only": self.audio_only,
            "rates": [[r for r in rate if r is not None] for rate in self.rates], "snrs": list(j.snrs),
            "normalisation": NORMALISATION,
            "utterances": self.evaluated + len(self.failed), "evaluated": self.evaluated,
            "failed": [{"id": i, "error": e} for i, e in self.failed],
            "wall_seconds": round(self.wall_seconds, 3),
            "results": [c.to_dict() for c in self.cells],
        }


# ---- the run ---------------------------------------------------------------------------------------------------------


def _no_progress(total: int, what: str):
    return contextlib.nullcontext(lambda n=1: None)


def run(job: EvaluateJob, log: Callable[[str], None] = lambda m: None, progress=_no_progress) -> Evaluation:
    """Evaluate; log(message) prints a line on stderr; progress(total, what) is a context giving advance(n).

    Raises DataError (DatasetMissing: exit 4), HubError / MissingModelError and UsageProblem (bad rate, noise file).
    """
    from .data import NAMED_DATASETS, UtteranceError, find_dataset, load_manifest
    from .media import SAMPLE_RATE, MediaError, decode_audio
    from .recognizer import UsageProblem, load_recognizer, shadowed_preset

    started = time.perf_counter()
    manifest = find_dataset(job.dataset, job.data_root, job.split)
    split = job.split if job.dataset in NAMED_DATASETS or manifest != Path(job.dataset) else None
    if split is None and job.split != "test":
        log(f"warning: --split {job.split} is not used: it picks a split of lrs2 or lrs3, or a folder's "
            f"{job.split}.jsonl or {job.split}.csv; {job.dataset} is read as it is")
    utterances = load_manifest(manifest)
    chosen = utterances[: job.limit] if job.limit else utterances
    auto_avsr = manifest.suffix == ".csv"  # LRS2/LRS3 prepared by auto_avsr: mouth crops, single utterances
    roi = job.roi if job.roi is not None else auto_avsr
    pack = job.pack if job.pack is not None else auto_avsr

    if warning := shadowed_preset(job.model):
        log(warning)
    loading = time.perf_counter()
    recognizer = load_recognizer(job.model, job.adapter, job.device)  # MissingModelError etc. end the run
    if job.verbose:
        log(f"model {job.model}: {recognizer.describe()}; loaded in {time.perf_counter() - loading:.2f} s")
    reading = time.perf_counter()
    rates = resolve_rates(recognizer, job.mode, job.rates, job.any_rate)
    if warning := recognizer.untrained_mode(job.mode):
        log(warning)
    # A --max-segment the model cannot take ends the run here, before any preprocessing.
    segment_seconds = recognizer.segment_limit(job.max_segment)
    if job.model == "tiny" and job.adapter is None:
        log("warning: --model tiny is random and untrained: its transcripts are meaningless")
    evaluation = Evaluation(job, manifest, rates, split, max_segment=segment_seconds, pack=pack)
    noisy_snrs = [s for s in job.snrs if s != CLEAN]
    sound = None  # the --noise file's samples, read (and refused) before any utterance is
    if job.noise is not None and not (noisy_snrs and "a" in job.mode):
        log("warning: --noise is not used: " + ("no --snr level below clean" if not noisy_snrs else
                                                "mode v reads no audio"))
    elif job.noise is not None:
        try:
            sound = decode_audio(job.noise)
        except MediaError as e:
            raise UsageProblem(f"--noise: {e}") from e
        if not np.any(sound):
            raise UsageProblem(f"--noise: {job.noise} is silent")

    loader = ClipLoader(job.mode, roi, job.detector, job.device, job.cache_dir)
    clips, kept = [], []
    with progress(len(chosen), "preprocessing") as advance:
        for u in chosen:
            try:
                clip = loader(u)
            except (MediaError, UtteranceError) as e:
                log(f"error: {u.id}: {e} (skipped)")
                evaluation.failed.append((u.id, str(e)))
            else:
                for warning in clip.warnings:
                    log(f"warning: {u.id}: {warning}")
                clips.append(clip)
                kept.append(u)
                if clip.mode != job.mode:
                    evaluation.audio_only.append(u.id)
            advance(1)
    evaluation.evaluated = len(kept)
    audio_seconds = sum(c.duration for c in clips)
    if job.verbose:
        log(f"{len(kept)} of {len(chosen)} utterances read ({audio_seconds:.1f} s of media) in "
            f"{time.perf_counter() - reading:.2f} s")
    if not kept:
        log("error: no utterance could be preprocessed: nothing to evaluate")
        evaluation.wall_seconds = time.perf_counter() - started
        return evaluation

    noise = None
    if noisy_snrs and "a" not in job.mode:
        log("warning: mode v reads no audio: noise changes nothing, every SNR column repeats the first")
    elif noisy_snrs:
        if sound is not None:
            noise = LoopedNoise([(None, sound)], count=1, seed=job.seed)
            longest = max(clips, key=lambda c: len(c.audio))
            if len(sound) < len(longest.audio):  # a short file heard again and again: a hum more than a noise
                log(f"warning: --noise {job.noise} lasts {len(sound) / SAMPLE_RATE:.2f} s, less than the "
                    f"{len(longest.audio) / SAMPLE_RATE:.2f} s of the longest utterance: it is repeated end to end "
                    "to cover each one")
            evaluation.noise = {"source": "file", "path": str(job.noise), "seconds": round(len(sound) / SAMPLE_RATE, 3)}
        else:
            failed = frozenset(i for i, _ in evaluation.failed)  # each said once, as an error
            noise = babble(utterances, loader.audio_of, job.seed, log, said=failed)
            evaluation.noise = {"source": "babble", "talkers": noise.count, "pool": noise.ids,
                                "rule": "each utterance hears the first `talkers` of `pool` other than itself"}

    measured = list(job.snrs) if "a" in job.mode else list(job.snrs[:1])  # mode v: one column is every column
    texts, seconds, counts = _transcribe_grid(recognizer, clips, [u.id for u in kept], rates, measured, noise, job,
                                              segment_seconds, pack, progress)
    for snr in job.snrs[len(measured):]:
        for rate in rates:
            for found in (texts, seconds, counts):
                found[rate, snr] = found[rate, measured[0]]
    cut_short = sum(counts[rate, snr][1] for rate in rates for snr in measured)
    if cut_short:
        from .decoding import TOKENS_PER_SECOND

        limit = job.max_new_tokens or f"{TOKENS_PER_SECOND} a second"
        log(f"warning: {cut_short} decoded segments reached their token limit ({limit}) without ending: their text "
            f"stops there (segments_cut_short in {REPORT_FILE})")

    refs = [u.text for u in kept]
    for rate in rates:
        for snr in job.snrs:
            hyps = texts[rate, snr]
            evaluation.cells.append(Cell(rate, snr, score(refs, hyps), audio_seconds, seconds[rate, snr],
                                         *counts[rate, snr]))
            if job.verbose:
                cell = evaluation.cells[-1]
                log(f"rate {rate_label(rate)}, {snr_label(snr)}: WER {wer_percent(cell.errors.wer, 2)} in "
                    f"{cell.wall_seconds:.2f} s ({audio_seconds / max(cell.wall_seconds, 1e-9):.0f}x real time)")
            evaluation.hypotheses += [  # rate: the report's cell; mode: what was read (a: no video, or no face)
                {"id": u.id, "rate": [r for r in rate if r is not None], "snr": snr, "mode": c.mode, "ref": u.text,
                 "hyp": h} for u, c, h in zip(kept, clips, hyps)]
    evaluation.wall_seconds = time.perf_counter() - started
    return evaluation


def resolve_rates(recognizer, mode: str, rates: tuple | None, any_rate: bool) -> list[tuple]:
    """The asked rates as (A, V) tuples, None for an absent modality; UsageProblem for one the model lacks."""
    if rates is None:
        recognizer.rate_for(mode, None)  # a mode the model cannot read is refused here
        return recognizer.config.rates_for(mode)
    resolved = [recognizer.rate_for(mode, tuple(r), any_rate) for r in rates]
    return list(dict.fromkeys(resolved))  # "4,2;4,5" in mode a is one rate, 4


def _transcribe_grid(recognizer, clips: list, ids: list[str], rates: list, snrs: list, noise: LoopedNoise | None,
                     job: EvaluateJob, segment_seconds: float, pack: bool, progress) -> tuple[dict, dict, dict]:
    """Hypotheses (one text per clip, its segments' texts joined), wall seconds and (segments decoded, of them cut
    short at the token limit), each per (rate, snr)."""
    from .decoding import DecodingOptions, decode
    from .model import Features
    from .recognizer import budget_batches, segments_of, slice_audio, slice_rois

    def heard(c: int, snr: SNR):
        if snr == CLEAN or noise is None:
            return clips[c]
        audio = clips[c].audio
        return dataclasses.replace(clips[c], audio=mix_at_snr(audio, noise.window(ids[c], len(audio)), snr))

    cells = [(rate, snr) for rate in rates for snr in snrs]
    texts, seconds, counts = {}, dict.fromkeys(cells, 0.0), {cell: (0, 0) for cell in cells}
    decoding = DecodingOptions(beam_size=job.beam)
    lips = {}  # a batch's (clip, start, end) -> its video features: the noise changes the cuts, never the lips
    with progress(len(snrs) * len(clips), "decoding") as advance:
        for snr in snrs:
            noisy = [heard(c, snr) for c in range(len(clips))]
            segments = [segments_of(clip, segment_seconds, every_pause=not pack) for clip in noisy]  # (start, end)
            for rate in rates:
                texts[rate, snr] = [[""] * len(s) for s in segments]
            groups = {}  # clip mode (av, or a for a clip without a face) -> [(clip, segment)]; silence not decoded
            for c, segs in enumerate(segments):
                groups.setdefault(clips[c].mode, []).extend((c, i) for i, seg in enumerate(segs) if seg.speech)
            for mode, jobs in groups.items():
                seconds_of = [segments[c][i].duration for c, i in jobs]
                for batch, budgets in budget_batches(jobs, seconds_of, job.batch_size, job.max_new_tokens):
                    tick = _clock(recognizer)
                    cuts = tuple((c, segments[c][i].start, segments[c][i].end) for c, i in batch)
                    if "v" in mode and cuts not in lips:  # cut as at an SNR before: encoded then
                        lips[cuts] = recognizer.features(None, [slice_rois(clips[c], segments[c][i]) for c, i in batch])
                    video = lips.get(cuts, Features())
                    audio = recognizer.features([slice_audio(noisy[c], segments[c][i]) for c, i in batch],
                                                None) if "a" in mode else Features()
                    features = Features(audio.audio, audio.audio_lengths, video.video, video.video_lengths)
                    encoders_share = (_clock(recognizer) - tick) / len(rates)
                    decoding = dataclasses.replace(decoding, max_new_tokens=max(budgets))
                    for rate in rates:
                        tick = _clock(recognizer)
                        rate_here = rate if mode == job.mode else (rate[0], None)  # a clip fallen back to audio
                        results = decode(recognizer.model, features, rate_here, mode, decoding, job.any_rate,
                                         limits=budgets)
                        for (c, i), result in zip(batch, results):
                            texts[rate, snr][c][i] = result.text
                        done, short = counts[rate, snr]
                        counts[rate, snr] = (done + len(batch),
                                             short + sum(len(r.tokens) >= n for r, n in zip(results, budgets)))
                        seconds[rate, snr] += _clock(recognizer) - tick + encoders_share
                advance(len(clips))
    joined = {cell: [" ".join(t for t in parts if t) for parts in per_clip] for cell, per_clip in texts.items()}
    return joined, seconds, counts


def _clock(recognizer) -> float:
    """time.perf_counter() once the accelerator has finished what was queued, so stages are timed apart."""
    import torch

    if next(recognizer.model.parameters()).is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter()


# ---- outputs ---------------------------------------------------------------------------------------------------------


def write_outputs(evaluation: Evaluation, output_dir: Path) -> list[Path]:
    """report.json, hypotheses.jsonl and (when something was scored) wer.png, written as one: all of them, or none
    when one cannot be (a new report beside an earlier run's figure would contradict it), and a Ctrl-C while they
    are written waits for the last. When nothing was scored, an earlier run's outputs are left as they were
    (returns []); else the report lists what failed."""
    output_dir = Path(output_dir)
    if not evaluation.cells and (output_dir / REPORT_FILE).is_file():
        return []
    hypotheses = "".join(json.dumps(h, ensure_ascii=False) + "\n" for h in evaluation.hypotheses)
    writes = [(output_dir / REPORT_FILE, text_writer(_json(evaluation.to_dict()) + "\n")),
              (output_dir / HYPOTHESES_FILE, text_writer(hypotheses))]
    if evaluation.cells:
        from .plotting import plot_wer  # matplotlib only when a figure is drawn

        writes.append((output_dir / PLOT_FILE, lambda tmp: plot_wer(evaluation, tmp)))
    with interrupt_after():
        atomic_write_all(writes)  # all three, or none if one cannot be written
        if not evaluation.cells:  # a figure left by anything else would contradict the report
            (output_dir / PLOT_FILE).unlink(missing_ok=True)
    return [path for path, _ in writes]


def _json(value, indent: int = 0) -> str:
    """JSON, indented, with every list or object that fits in one line of 100 characters kept on one line."""
    flat = json.dumps(value, ensure_ascii=False)
    if indent + len(flat) <= 100 or not isinstance(value, (dict, list)) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        items = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + " " * indent + "}"
    return "[\n" + ",\n".join(pad + _json(v, indent + 2) for v in value) + "\n" + " " * indent + "]"


__all__ = ["BABBLE_TALKERS", "CLEAN", "EvaluateJob", "Evaluation", "Cell", "ClipLoader", "babble", "parse_snrs",
           "rate_label", "snr_label", "resolve_rates", "run", "write_outputs"]
