"""A loaded recogniser: both frozen encoders and the MoME model, and the loop from a Clip to a Transcript.

`load_recognizer(model)` takes a preset name (tiny, demo, mome-1b, mome-3b, mome-8b) or a checkpoint directory written
by `mome train`. Backbones named by hub id are looked up in mome's cache and never downloaded here: a missing one is
a MissingModelError (exit 4) that names the `mome download` command that fetches it. `build_recognizer(config)` is
the part after the config is known - backbones plus fresh MoME modules and projectors - which `mome train` starts from.

A clip is cut into segments at pauses (media.split_at_pauses): at every pause between stretches of speech, and within
stretches longer than the limit (20 s, or the audio encoder's window) so that none is longer; segments are encoded and
decoded in batches; silent segments are not decoded.

Notation for shapes: B segments in a batch, S samples, T frames, R ROI side, D encoder width.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from pathlib import Path
from warnings import warn

import torch

from .checkpoint import CheckpointError, load_weights
from .decoding import DecodingOptions, decode, token_budget
from .hub import (AVHUBERT_LARGE, PRESETS, HubRepo, MissingModelError, UnusableModelError, locate, mome_home,
                  snapshot_lacks)
from .media import MAX_SEGMENT_SECONDS, SAMPLES_PER_FRAME, VIDEO_FPS, Segment, split_at_pauses
from .model import AVSRModel, Features, ModelConfig
from .options import RecognizeOptions, UsageProblem
from .outputs import Transcript
from .preprocess import Clip, PreprocessOptions, Preprocessor
from .presets import (BUNDLED, check_options, model_config, preset_config, rate_for, segment_limit, shadowed_preset,
                      tiny_config)
from .rng import seeded


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageProblem("--device cuda: no CUDA device is available")
    return device


class Recognizer:
    def __init__(self, model: AVSRModel, audio_encoder, video_encoder, name: str):
        self.model, self.audio_encoder, self.video_encoder, self.name = model, audio_encoder, video_encoder, name
        self._preprocessors = {}  # PreprocessOptions -> the Preprocessor transcribe_file reads files with

    @property
    def config(self) -> ModelConfig:
        return self.model.config

    def describe(self) -> str:
        """One line on what was loaded: backbones, MoME, rates, modes, device and precision (for -v)."""
        c, llm = self.config, self.model.llm
        shape = f"{llm.config.num_hidden_layers} layers x {llm.config.hidden_size}"
        m = c.mome
        rates = "; ".join(f"{a},{v}" for a, v in c.rates)
        weights = next(llm.parameters())
        from .llama import LlamaForCausalLM
        from .whisper import WhisperEncoder

        native = [name for name, used in (
            ("Llama", isinstance(llm, LlamaForCausalLM)),
            ("Whisper", isinstance(getattr(self.audio_encoder, "encoder", None), WhisperEncoder)),
        ) if used]
        code = f"; {' and '.join(native)} on mome's own code (MOME_NATIVE=0: transformers')" if native else ""
        return (f"LLM {c.llm} ({shape}), audio {c.audio_encoder}, video {c.video_encoder}; MoME: {m.num_routed} "
                f"routed experts (top {m.top_k}) and {m.num_shared} shared, bottleneck {m.bottleneck}, beside "
                f"{m.position}; rates {rates}; modes {','.join(c.modes)}; on {weights.device.type}, "
                f"{str(weights.dtype).split('.')[-1]}{code}")

    @property
    def max_segment_seconds(self) -> float:
        """Segments are at most 20 s, and never longer than the audio encoder's window (8 s for the demo model)."""
        window = getattr(self.audio_encoder, "max_seconds", MAX_SEGMENT_SECONDS)
        return min(MAX_SEGMENT_SECONDS, window)

    def segment_limit(self, asked: float | None = None) -> float:
        """The longest segment to cut: the one asked (--max-segment), which must fit the audio encoder's window, or
        max_segment_seconds. A model trained on short utterances may read only the first sentence of a long segment:
        a shorter limit cuts at more pauses."""
        return segment_limit(asked, self.max_segment_seconds)

    def rate_for(self, mode: str, rate: tuple | None, any_rate: bool = False) -> tuple:
        """The rate to use in a mode: the given one (checked against the trained ones) or the first trained.
        UsageProblem for a mode that needs an encoder the model has none of (one trained for mode a reads no lips)."""
        return rate_for(self.config, mode, rate, any_rate)

    def untrained_mode(self, mode: str) -> str | None:
        """A warning when mode is not one the model was trained in (it reads it all the same: an av model can be
        asked for mode a, and an av input without video falls back to it)."""
        modes = self.config.modes
        if mode in modes:
            return None
        return (f"warning: this model was trained for mode{'s' * (len(modes) > 1)} {', '.join(modes)}, not {mode}: "
                f"expect worse transcripts in mode {mode} than in mode {modes[0]}")

    @torch.inference_mode()
    def features(self, audio: list | None, rois: list | None) -> Features:
        """Encode a batch: audio as B sample arrays, rois as B (T, R, R) uint8 arrays; either may be None."""
        from .lips import normalised_crops

        # Nothing here waits for the GPU, so that it runs one encoder while the host queues the next: inputs are
        # copied from pinned memory, the crops before any encoder is queued, and the lengths stay on the host, where
        # the prefix reads them.
        f = Features()
        if rois is not None:
            device = next(self.video_encoder.parameters()).device
            frames, video_lengths = normalised_crops(rois, device)  # (B, T, 88, 88)
        if audio is not None:
            f.audio, f.audio_lengths = self.audio_encoder(audio)
        if rois is not None:
            f.video, f.video_lengths = self.video_encoder(frames, video_lengths)
        return f

    def transcribe(self, clip: Clip, options: RecognizeOptions = RecognizeOptions()) -> Transcript:
        return self.transcribe_many([clip], options)[0]

    def transcribe_file(self, path, mode: str = "av", rate: int | tuple | None = None, roi: bool = False,
                        beam: int = 1, detector: str = "sfd", any_rate: bool = False,
                        max_segment: float | None = None, pack: bool = False) -> Transcript:
        """The Transcript of one media file (or pipe) that `mome transcribe PATH` writes with the same options
        (--mode, --rate, --roi, --beam, --detector, --any-rate, --max-segment, --pack): .text, .segments (start, end
        and text of each, seconds), .mode (a where av fell back to audio), .rate, .duration and .warnings (those the
        command prints for the file; its warning that the model was not trained in this mode is a Python warning
        here), read with preprocess.Preprocessor (no clip cache) and transcribed by transcribe().

        rate: None for the model's first trained rate in mode; one rate (16) in mode a or v, or a pair (4, 2), of
        which mode a takes the audio half and v the video half. roi: the video is already mouth crops; otherwise
        face-alignment finds the lips (its weights: `mome download demo`). A mode or rate the model does not take
        raises options.UsageProblem before the file is read, a file that cannot be read media.MediaError.
        """
        rate = (rate,) if isinstance(rate, int) else None if rate is None else tuple(rate)  # (4, 2) or [4, 2]
        options = RecognizeOptions(mode=mode, rate=rate, any_rate=any_rate, beam=beam, max_segment=max_segment,
                                   pack=pack)
        reading = PreprocessOptions(mode=mode, roi=roi, detector=detector,
                                    device=next(self.model.parameters()).device.type)
        if reading not in self._preprocessors:  # one a way of reading: its face detector is built once, not per file
            self._preprocessors[reading] = Preprocessor(reading)
        self.rate_for(mode, options.rate, any_rate)  # refused before the file is read, as the command does
        self.segment_limit(max_segment)
        if said := self.untrained_mode(mode):  # the command's warning, as Python's
            warn(said.removeprefix("warning: "), stacklevel=2)
        return self.transcribe(self._preprocessors[reading](path), options)

    def transcribe_many(self, clips: list[Clip], options: RecognizeOptions = RecognizeOptions()) -> list[Transcript]:
        """Transcripts of many clips; their segments are decoded together, longest first, grouped by mode."""
        modes = [clip.mode if options.mode == "av" else options.mode for clip in clips]  # av may have fallen back to a
        rates = [self.rate_for(m, options.rate, options.any_rate) for m in modes]  # fallen back: --rate's audio half
        limit = self.segment_limit(options.max_segment)
        segments = [segments_of(clip, limit, every_pause=not options.pack) for clip in clips]
        texts = [[""] * len(s) for s in segments]
        cut = [[] for _ in clips]  # segments that reached the token limit without ending
        groups = {}  # (mode, rate) -> [(clip, segment)]; silent segments are not decoded
        for c, segs in enumerate(segments):
            for i, seg in enumerate(segs):
                if seg.speech:
                    groups.setdefault((modes[c], rates[c]), []).append((c, i))
        decoding = DecodingOptions(beam_size=options.beam)
        for (mode, rate), jobs in groups.items():
            seconds = [segments[c][i].duration for c, i in jobs]
            for batch, budgets in budget_batches(jobs, seconds, options.batch_size, options.max_new_tokens):
                audio = [slice_audio(clips[c], segments[c][i]) for c, i in batch] if "a" in mode else None
                rois = [slice_rois(clips[c], segments[c][i]) for c, i in batch] if "v" in mode else None
                features = self.features(audio, rois)
                decoding = dataclasses.replace(decoding, max_new_tokens=max(budgets))
                results = decode(self.model, features, rate, mode, decoding, options.any_rate, limits=budgets)
                for (c, i), budget, result in zip(batch, budgets, results):
                    texts[c][i] = result.text
                    if len(result.tokens) >= budget:  # it did not end: a model that repeats itself, or noise
                        cut[c].append(i)
        warnings = [list(clip.warnings) for clip in clips]
        for c, segs in enumerate(segments):
            if "a" in modes[c] and not any(seg.speech for seg in segs):  # nothing decoded: a muted track?
                warnings[c].append("the sound is silence throughout: nothing was transcribed"
                                   + "; --mode v reads the lips alone" * (modes[c] == "av"))
            if cut[c]:
                times = ", ".join(f"{segs[i].start:.2f}-{segs[i].end:.2f} s" for i in sorted(cut[c]))
                warnings[c].append(f"decoding reached the token limit without ending at {times}: the text stops "
                                   "there (the model repeats itself, or reads noise as speech)")
        return [
            Transcript(
                text=" ".join(t for t in texts[c] if t),
                segments=[{"start": round(s.start, 3), "end": round(min(s.end, clip.duration), 3), "text": t}
                          for s, t in zip(segments[c], texts[c]) if s.speech],  # ends within the clip; no silence
                mode=modes[c], rate=tuple(r for r in rates[c] if r is not None), model=self.name,
                duration=clip.duration, warnings=warnings[c],
            )
            for c, clip in enumerate(clips)
        ]


def budget_batches(jobs: list, seconds: list[float], batch_size: int,
                   max_new_tokens: int | None = None) -> list[tuple[list, list[int]]]:
    """Jobs (segments of `seconds` each) longest first, in batches of at most batch_size (similar lengths share a
    batch: little padding), each job with its own token budget (max_new_tokens, else token_budget of its length),
    which decode(limits=...) keeps to: a short segment beside a long one stops where it would alone, so the batch size
    does not change a transcript."""
    order = sorted(range(len(jobs)), key=lambda j: -seconds[j])
    budgets = [max_new_tokens or token_budget(seconds[j]) for j in order]
    return [([jobs[j] for j in order[at : at + batch_size]], budgets[at : at + batch_size])
            for at in range(0, len(order), batch_size)]


def segments_of(clip: Clip, max_seconds: float = MAX_SEGMENT_SECONDS, every_pause: bool = True) -> list[Segment]:
    if clip.audio is not None:
        return split_at_pauses(clip.audio, max_seconds, every_pause)
    frames = len(clip.rois)  # video only: fixed windows
    step = int(max_seconds * VIDEO_FPS)
    return [Segment(a / VIDEO_FPS, min(a + step, frames) / VIDEO_FPS) for a in range(0, frames, step)]


def slice_audio(clip: Clip, s: Segment):
    a, b = round(s.start * VIDEO_FPS) * SAMPLES_PER_FRAME, round(s.end * VIDEO_FPS) * SAMPLES_PER_FRAME
    return clip.audio[a:b]


def slice_rois(clip: Clip, s: Segment):
    a, b = round(s.start * VIDEO_FPS), round(s.end * VIDEO_FPS)
    return clip.rois[a:max(b, a + 1)]


# ---- loading --------------------------------------------------------------------------------------------------------


def _presets_with(repo_id: str) -> list[str]:
    return [p.name for p in PRESETS.values() if p.llm and p.llm.repo_id == repo_id or p.audio and
            p.audio.repo_id == repo_id]


def _hub_repo(repo_id: str, revision: str) -> HubRepo:
    """repo_id at revision; with the files a preset's copy of it needs (its tokenizer, its feature extractor) if a
    preset names it, so that a snapshot cached in part counts as missing here as it does for `mome download`."""
    for preset in PRESETS.values():
        for repo in (preset.llm, preset.audio):
            if repo is not None and repo.repo_id == repo_id:
                return dataclasses.replace(repo, revision=revision)
    return HubRepo(repo_id, revision)


def cached_commit(repo_id: str, revision: str | None, home: Path) -> str | None:
    """The commit of repo_id's cached snapshot at revision (a branch, a tag or a commit), if it is complete."""
    path = locate(_hub_repo(repo_id, revision or "main"), home)
    return None if path is None else path.name


def _cached_repo(repo_id: str, revision: str | None, home: Path) -> Path:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError:  # a folder, as a checkpoint names the backbones it was trained on, that is not here
        raise MissingModelError(f"{repo_id}: no such folder (nor a Hugging Face repo id); a checkpoint names its "
                                "backbones by path: put them there, or bundle them with it (python -m "
                                "mome_cli.pretrain bundle)") from None
    repo = _hub_repo(repo_id, revision or "main")
    path = locate(repo, home)
    if path is None:
        presets = _presets_with(repo_id)
        pinned = "" if repo.revision == "main" else f" --revision {repo.revision}"
        fix = f"run `mome download {presets[0]}{pinned}`" if presets else "put it in the cache with `mome download`"
        at = "" if repo.revision == "main" else f" at revision {repo.revision}"
        lacks = snapshot_lacks(repo, home)  # cached in part: which files
        files = f"{', '.join(lacks)} of " if lacks else ""
        raise MissingModelError(f"{files}{repo_id}{at} is not in the cache ({home}); {fix}")
    return path


def _backbone_path(name: str, revision: str | None, home: Path) -> str:
    """tiny names and local folders as they are; hub ids resolved to their cached snapshot folder."""
    if name.startswith("tiny") or Path(name).exists():
        return name
    return str(_cached_repo(name, revision, home))


def load_audio_encoder(config: ModelConfig, home: Path, device: str, native: bool = False):
    from .encoders import load_whisper

    if config.audio_encoder == "tiny" or Path(config.audio_encoder).exists():
        return load_whisper(config.audio_encoder, device=device, native=native)
    return load_whisper(str(_cached_repo(config.audio_encoder, config.audio_encoder_revision, home)), device=device,
                        native=native)


def load_video_encoder(config: ModelConfig, home: Path, device: str):
    from .avhubert import AVHubertCheckpointError, AVHubertConfig, AVHubertVideoEncoder, load_avhubert

    name = config.video_encoder
    if name == "tiny":
        with seeded(0):
            encoder = AVHubertVideoEncoder(AVHubertConfig.tiny()).eval().requires_grad_(False)
    elif name == "avhubert-large":
        path = locate(AVHUBERT_LARGE, home)
        if path is None:
            raise MissingModelError(f"AV-HuBERT Large ({AVHUBERT_LARGE.filename}) is not in the cache ({home}); "
                                    f"run `mome download mome-1b`")
        try:
            encoder = load_avhubert(path)
        except AVHubertCheckpointError as e:  # the cache's copy: cut short, or another file in its place
            raise type(e)(f"{e}; delete it and run `mome download mome-1b` again") from e
    else:
        encoder = load_avhubert(name)
    dtype = torch.bfloat16 if str(device).startswith("cuda") else torch.float32  # as the other backbones
    return encoder.to(device=device, dtype=dtype)


@contextlib.contextmanager
def _unusable_models():
    """The errors of a model's files that are there but cannot be used (a checkpoint's, a backbone's, AV-HuBERT's,
    an encoder's) as UnusableModelError: a HubError, which every command reports as one line and exit 1."""
    from .avhubert import AVHubertCheckpointError
    from .encoders import EncoderError

    try:
        yield
    except (CheckpointError, AVHubertCheckpointError, EncoderError) as e:
        raise UnusableModelError(f"{e}{_refetch_hint(str(e))}") from e


def _refetch_hint(message: str) -> str:
    """For a file of a Hub snapshot in the cache that cannot be used, how to fetch it again: huggingface_hub keeps a
    cached blob as it is, damaged or not, and `mome download` without --force-download leaves it."""
    found = re.search(r"/models--(.+?)--(.+?)/snapshots/([0-9a-f]{40})/", message)
    if found is None:
        return ""
    repo_id, commit = f"{found[1]}/{found[2]}", found[3]
    presets = _presets_with(repo_id)
    if not presets:
        return ""
    if len(presets) > 1:  # a backbone the presets share (Whisper): the one in use, whose LLM is fetched again too
        return (f"; if the cached file is damaged, `mome download PRESET --force-download` ({', '.join(presets)}: the "
                "one you use) fetches it again")
    is_llm = PRESETS[presets[0]].llm is not None and PRESETS[presets[0]].llm.repo_id == repo_id
    pinned = f" --revision {commit}" if is_llm else ""  # --revision is the LLM's
    return f"; if the cached file is damaged, `mome download {presets[0]}{pinned} --force-download` fetches it again"


def load_recognizer(model: str, adapter: str | None = None, device: str = "auto",
                    home: Path | None = None) -> Recognizer:
    """A Recognizer from a preset name or a checkpoint directory, with an optional adapter checkpoint directory.

    A model that is missing raises MissingModelError, one that is there but cannot be used UnusableModelError (a
    folder that is not a checkpoint, damaged weights, an adapter that does not fit): both say which file and why.
    """
    with _unusable_models():
        return _load_recognizer(model, adapter, device, home)


def _load_recognizer(model: str, adapter: str | None, device: str, home: Path | None) -> Recognizer:
    device = resolve_device(device)
    home = Path(home) if home else mome_home()
    config, weights = model_config(model, adapter)
    # The backbones run on mome's own Llama and Whisper code where it runs them (llama.py, whisper.py): the same
    # numbers (float32) or the same within rounding (bf16), without transformers' modeling import, which is most of a
    # one-file transcription's wait on a CPU, and with fewer kernels a decoding step on a GPU (fused projections,
    # RMSNorm and rotary embedding). MOME_NATIVE=0 keeps transformers' classes (to compare, or to rule the native
    # code out when something is odd).
    native = os.environ.get("MOME_NATIVE", "1") != "0"
    recognizer = build_recognizer(config, home, device, name=model, native=native, source=str(weights or model))
    if weights is not None:
        load_weights(recognizer.model, weights)
    return recognizer


def build_recognizer(config: ModelConfig, home: Path, device: str, dtype: torch.dtype | None = None,
                     name: str = "untrained", seed: int = 0, native: bool = False,
                     source: str | None = None) -> Recognizer:
    """The backbones of a config from the cache (never downloaded) and fresh MoME modules and projectors, in eval mode.

    The fresh modules are drawn from `seed`, leaving the global CPU RNG where it was: the same weights in every run
    and every process. Only the encoders of the config's modes are loaded; dtype is the LLM's (None: bf16 on CUDA).
    native: the LLM and the Whisper encoder on llama.py's and whisper.py's code where those run them (inference).
    source: where the config comes from (a checkpoint or adapter folder, a preset), for messages; name if None.
    A backbone that is missing raises MissingModelError, one that cannot be used UnusableModelError, and so does an
    encoder whose width is not the config's audio_dim or video_dim (another encoder than the projectors were made for).
    """
    from .llm import load_llm

    with _unusable_models():  # `mome train` calls this directly
        llm, tokenizer = load_llm(_backbone_path(config.llm, config.llm_revision, home), dtype=dtype, device=device,
                                  native=native)
        with seeded(seed):
            avsr = AVSRModel(config, llm, tokenizer)
        audio = load_audio_encoder(config, home, device, native) if "a" in config.inputs else None
        video = load_video_encoder(config, home, device) if "v" in config.inputs else None
        # Said now: otherwise the first batch fails inside a projector ("mat1 and mat2 shapes cannot be multiplied").
        for kind, encoder, width, encoder_name in (("audio", audio, config.audio_dim, config.audio_encoder),
                                                   ("video", video, config.video_dim, config.video_encoder)):
            if encoder is not None and encoder.dim != width:
                raise CheckpointError(f"{source or name}: {kind}_dim {width} does not fit its {kind} encoder, "
                                      f"{encoder_name}, whose features are {encoder.dim} wide")
        return Recognizer(avsr.to(device).eval(), audio, video, name=name)


__all__ = ["UsageProblem", "RecognizeOptions", "Recognizer", "load_recognizer", "build_recognizer", "resolve_device",
           "cached_commit", "budget_batches", "segments_of", "slice_audio", "slice_rois",
           # from presets.py, torch-free
           "BUNDLED", "tiny_config", "preset_config", "model_config", "rate_for", "segment_limit", "check_options",
           "shadowed_preset"]
