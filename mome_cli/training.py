"""`mome train`: MoME modules and projectors trained on frozen encoders and a frozen LLM, every rate pair at once.

One process (the CPU, or one GPU):

    mome train --config recipes/tiny.toml --train data/train.jsonl --valid data/valid.jsonl -o runs/tiny

One process per GPU with torchrun (several nodes: --nnodes N --node_rank I --rdzv-endpoint HOST:PORT instead of
--standalone); `mome` is the same program as `python -m mome_cli`:

    torchrun --standalone --nproc_per_node 8 -m mome_cli train --config recipes/mome-1b-lrs3.toml \\
        --train $MOME_DATA/lrs3/train.csv --valid $MOME_DATA/lrs3/valid.csv -o runs/mome-1b-lrs3

Continue a run that stopped (crash, kill, pre-emption) exactly where its last save left it: the same command with
--resume, or just `mome train -o DIR --resume`.

The output directory is a checkpoint directory (`--model DIR` for transcribe and evaluate):

    config.json, model.safetensors   the latest save, or the mean of the last K saves with average_last = K
    train_config.json                the resolved TrainConfig (recipe + flags)
    trainer_state.pt                 what --resume needs, in one file written atomically (the commit point of a save):
                                     trainable tensors, optimiser, scheduler, step, data position (epoch, batch
                                     index), RNG states; plain containers of tensors and numbers (weights_only load)
    snapshots/step-000100/           the last keep_last saves, each a checkpoint directory
    log.jsonl                        one JSON object per logged step ("train"), validation ("eval") and save ("save")

A step is one batch per process: utterances grouped by padded length (batch_frames video frames, length buckets),
each epoch's batch order shuffled with (seed, epoch) and dealt out to the processes, each taking every world-th
batch, so every process makes the same number of steps. The encoders are frozen: without raw-input augmentation each
utterance is encoded once and its features are kept (in memory, or on disk under $MOME_HOME/cache/features);
with time masking or babble noise the raw inputs are augmented and encoded again at every step. The augmentation's
randomness is drawn from (seed, step, rank), so resuming needs no augmentation state.

Test hook: with MOME_TRAIN_DIGEST_DIR set, every process writes rank-<rank>.sha256 there at the end: the SHA-256 of
its trainable tensors (see tensor_digest), so a test can check that data-parallel processes agree.

Notation for shapes: B utterances in a batch, S audio samples, T frames, R ROI side, D encoder width.
"""

from __future__ import annotations

import bisect
import contextlib
import dataclasses
import hashlib
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch

from .checkpoint import save_checkpoint
from .data import DataError, frame_batches, load_manifest
from .files import atomic_write, atomic_write_text
from .hub import PRESETS, mome_home
from .media import SAMPLE_RATE, SAMPLES_PER_FRAME, VIDEO_FPS, MediaError
from .model import DEFAULT_RATES, MODES, Features, ModelConfig
from .mome import POSITIONS, MoMEConfig

STATE_NAME = "trainer_state.pt"
CONFIG_NAME = "train_config.json"
LOG_NAME = "log.jsonl"
SNAPSHOTS = "snapshots"
STATE_FORMAT = 1  # bumped when trainer_state.pt changes layout
DIGEST_ENV = "MOME_TRAIN_DIGEST_DIR"
TRAINABLE_MODELS = tuple(name for name, p in PRESETS.items() if p.source != "bundled")  # tiny, mome-1b, ...
PRECISIONS = ("bf16", "fp32")
FEATURE_CACHES = ("memory", "disk")
DEVICES = ("auto", "cpu", "cuda")
# What may change when a run is resumed: anything else would make it a different run.
RESUMABLE = {"output", "steps", "epochs", "valid", "save_every", "keep_last", "average_last", "eval_every", "eval_limit",
             "eval_batch_size", "log_every", "device", "feature_cache", "encode_batch"}


class ConfigError(ValueError):
    """A training configuration that cannot work (the CLI exits 2)."""


class TrainingError(RuntimeError):
    """Training went wrong after it started (the CLI exits 1)."""


def parse_rates(value) -> list[tuple[int, int]]:
    """Rate pairs from text ("4,2;4,5") or pairs ([[4, 2], [4, 5]]) -> [(4, 2), (4, 5)]; else ConfigError."""
    try:
        pairs = [p.split(",") for p in value.split(";") if p.strip()] if isinstance(value, str) else list(value)
        rates = [tuple(int(r) for r in pair) for pair in pairs]
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rates must be audio,video pairs such as \"4,2;4,5\", got {value!r}") from e
    if not rates or any(len(p) != 2 or min(p) < 1 for p in rates) or len(set(rates)) != len(rates):
        raise ConfigError(f"rates must be distinct audio,video pairs of rates >= 1, got {value!r}")
    return rates


@dataclass
class TrainConfig:
    """Everything a training run depends on; a recipe (TOML) sets any field, flags override it (resolve_config)."""

    # -- data ------------------------------------------------------------------------------------------------------
    train: str | None = None  # training manifest: .jsonl, auto_avsr .csv, or a folder of media with .txt transcripts
    valid: str | None = None  # validation manifest (same layouts); None: no validation
    output: str | None = None  # the checkpoint directory written (and continued by --resume)
    mode: str = "av"  # modalities trained: av, a or v
    roi: bool | None = None  # videos are mouth crops (no face detection); None: yes for an auto_avsr .csv manifest
    detector: str = "sfd"  # face detector when roi is off: sfd | blazeface
    # -- model -----------------------------------------------------------------------------------------------------
    model: str = "tiny"  # backbone preset: tiny | mome-1b | mome-3b | mome-8b
    rates: list = field(default_factory=lambda: list(DEFAULT_RATES))  # (audio, video) rate pairs, trained jointly
    compression: str = "avgpool"  # avgpool | stack: how r frames become one token
    projector_hidden: int | None = None  # projector hidden width; None: the preset's (2048; 64 for tiny)
    experts: int = 23  # routed experts N_r per layer
    shared: int = 1  # shared experts N_s per layer
    top_k: int = 4  # routed experts per token
    bottleneck: int = 12  # hidden units per expert
    position: str = "mhsa"  # mhsa | ffn | layer: what each MoME module runs beside
    lb_coef: float = 0.01  # weight of the load-balancing loss
    # -- optimisation ----------------------------------------------------------------------------------------------
    steps: int | None = None  # optimiser steps in all; or:
    epochs: int | None = None  # passes over the training set (exactly one of steps, epochs)
    batch_frames: int = 1000  # padded video frames (25 fps) per batch and process: count x longest
    bucket: int = 400  # utterances sorted by length within shuffled buckets of this many
    lr: float = 1e-3  # peak learning rate
    betas: list = field(default_factory=lambda: [0.9, 0.98])  # AdamW betas
    weight_decay: float = 0.1  # AdamW weight decay (every trainable tensor)
    warmup_steps: int | None = None  # linear warmup steps; None: warmup_fraction of all steps
    warmup_fraction: float = 0.05  # warmup as a fraction of all steps, when warmup_steps is None
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    grad_clip: float = 10.0  # max gradient norm (0: no clipping)
    precision: str = "bf16"  # bf16 autocast on CUDA (the CPU always trains in fp32) | fp32
    seed: int = 0  # model init, batch order, augmentation
    device: str = "auto"  # auto | cpu | cuda (under torchrun: the process's LOCAL_RANK GPU)
    # -- augmentation of the raw inputs (any of it on: every step encodes its batch again) ------------------------
    mask_audio: bool = False  # zero random spans of audio samples
    mask_video: bool = False  # zero random spans of ROI frames
    mask_max_seconds: float = 0.4  # longest masked span
    mask_every_seconds: float = 1.0  # one span per this much of an utterance (at least one)
    babble_prob: float = 0.0  # chance that an utterance gets babble noise (other training utterances summed)
    babble_speakers: int = 4  # utterances summed into one babble
    babble_snr: list = field(default_factory=lambda: [-5, 0, 5, 10, 15, 20])  # SNRs (dB), one drawn per utterance
    # -- features --------------------------------------------------------------------------------------------------
    feature_cache: str = "memory"  # memory | disk ($MOME_HOME/cache/features): where encoded utterances are kept
    encode_batch: int = 8  # utterances encoded together
    # -- saving, validation, logging -------------------------------------------------------------------------------
    save_every: int = 1000  # steps between saves (the last step is always saved)
    keep_last: int = 3  # snapshots kept (at least average_last)
    average_last: int | None = None  # the final model is the mean of the last K saves
    eval_every: int | None = None  # steps between validations (and one at the end); None: only at the end
    eval_limit: int | None = None  # validate on the first N utterances of the valid manifest
    eval_batch_size: int = 16  # segments decoded together in validation
    log_every: int = 10  # steps between log lines

    def __post_init__(self):
        self.rates = parse_rates(self.rates)
        self.betas = [float(b) for b in self.betas]
        self.babble_snr = [float(s) for s in self.babble_snr]
        if self.train is None:
            raise ConfigError("no training manifest: give --train MANIFEST (or train = ... in the config)")
        if self.output is None:
            raise ConfigError("no output directory: give -o/--output DIR (or output = ... in the config)")
        choices = {"mode": MODES, "model": TRAINABLE_MODELS, "position": POSITIONS, "precision": PRECISIONS,
                   "feature_cache": FEATURE_CACHES, "device": DEVICES, "detector": ("sfd", "blazeface"),
                   "compression": ("avgpool", "stack")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError(f"give exactly one of steps and epochs, got steps={self.steps}, epochs={self.epochs}")
        positive = ["steps", "epochs", "batch_frames", "bucket", "save_every", "keep_last", "average_last",
                    "eval_every", "eval_limit", "eval_batch_size", "log_every", "encode_batch", "babble_speakers",
                    "projector_hidden"]
        for name in positive:
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ConfigError(f"{name} must be a whole number >= 1, got {value!r}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1), got {self.betas}")
        for name, low, high in [("weight_decay", 0, math.inf), ("warmup_fraction", 0, 1), ("min_lr_ratio", 0, 1),
                                ("grad_clip", 0, math.inf), ("babble_prob", 0, 1), ("mask_max_seconds", 0, 60)]:
            if not low <= getattr(self, name) <= high:
                raise ConfigError(f"{name} must be in [{low}, {high}], got {getattr(self, name)}")
        if self.warmup_steps is not None and self.warmup_steps < 0:
            raise ConfigError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if not self.mask_every_seconds > 0:
            raise ConfigError(f"mask_every_seconds must be > 0, got {self.mask_every_seconds}")
        if self.babble_prob > 0 and not self.babble_snr:
            raise ConfigError("babble_prob > 0 needs at least one SNR in babble_snr")
        if self.mask_audio and "a" not in self.mode or self.mask_video and "v" not in self.mode:
            raise ConfigError(f"mask_audio/mask_video need their modality in mode, got mode={self.mode!r}")
        if self.babble_prob > 0 and "a" not in self.mode:
            raise ConfigError(f"babble noise needs audio, got mode={self.mode!r}")
        try:
            self.mome_config()
        except ValueError as e:
            raise ConfigError(f"MoME: {e} (experts={self.experts}, shared={self.shared}, top_k={self.top_k})") from e

    # -- derived ---------------------------------------------------------------------------------------------------

    @property
    def mouth_crops(self) -> bool:
        return self.roi if self.roi is not None else str(self.train).endswith(".csv")

    @property
    def augmenting(self) -> bool:
        return self.mask_audio or self.mask_video or self.babble_prob > 0

    def mome_config(self) -> MoMEConfig:
        return MoMEConfig(num_routed=self.experts, num_shared=self.shared, top_k=self.top_k,
                          bottleneck=self.bottleneck, position=self.position, lb_coef=self.lb_coef)

    def model_config(self) -> ModelConfig:
        from .recognizer import preset_config, tiny_config

        base = tiny_config() if self.model == "tiny" else preset_config(self.model)
        return dataclasses.replace(base, rates=list(self.rates), compression=self.compression,
                                   projector_hidden=self.projector_hidden or base.projector_hidden,
                                   mome=self.mome_config(), modes=[self.mode])

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["rates"] = [list(p) for p in self.rates]
        return d


# ---- configuration from TOML, flags and a saved run --------------------------------------------------------------


def read_toml(path) -> dict:
    """A recipe's fields; tables ([data], [optim], ...) only group them and are flattened."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            document = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ConfigError(f"{path}: {e}") from e
    values = {}
    for key, value in document.items():
        for name, v in (value.items() if isinstance(value, dict) else [(key, value)]):
            if name in values:
                raise ConfigError(f"{path}: {name} is set twice")
            values[name] = v
    return values


def _layer(values: dict, more: dict, source: str) -> dict:
    """values updated with more; a layer that sets steps clears epochs and the other way round."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(more) - known)
    if unknown:
        raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)}")
    if more.get("steps") is not None and more.get("epochs") is not None:
        raise ConfigError(f"{source}: give steps or epochs, not both")
    merged = {**values, **more}
    if more.get("steps") is not None:
        merged["epochs"] = None
    elif more.get("epochs") is not None:
        merged["steps"] = None
    return merged


def resolve_config(config_file=None, overrides: dict | None = None, resume: bool = False) -> TrainConfig:
    """The TrainConfig of a run: [the saved run's config when resuming] < the TOML recipe < the flags.

    Refuses to start a new run in a directory that holds one, and to resume with settings that would make it a
    different run (only RESUMABLE settings may change)."""
    values = _layer({}, read_toml(config_file), str(config_file)) if config_file else {}
    values = _layer(values, overrides or {}, "flags")
    if values.get("output") is None:
        raise ConfigError("no output directory: give -o/--output DIR (or output = ... in the config)")
    for name in ("train", "valid", "output"):  # relative to where mome runs; saved absolute, so resume can move
        if values.get(name) is not None:
            values[name] = str(Path(values[name]).absolute())
    out = Path(values["output"])
    saved_path = out / CONFIG_NAME
    if not resume:
        if (out / STATE_NAME).exists():
            raise ConfigError(f"{out} holds a training run already: pass --resume to continue it, or another -o")
        return TrainConfig(**values)
    if not (out / STATE_NAME).is_file() or not saved_path.is_file():
        raise ConfigError(f"--resume: {out} holds no run to continue (no {STATE_NAME} / {CONFIG_NAME})")
    saved = json.loads(saved_path.read_text(encoding="utf-8"))
    config = TrainConfig(**_layer(_layer({}, saved, str(saved_path)), values, "flags and recipe"))
    before = TrainConfig(**saved).to_dict()
    changed = [k for k, v in config.to_dict().items() if k not in RESUMABLE and v != before[k]]
    if changed:
        detail = "; ".join(f"{k}: run {before[k]!r}, now {config.to_dict()[k]!r}" for k in changed)
        raise ConfigError(f"--resume: these settings differ from the run in {out} ({detail})")
    return config


# ---- inputs ------------------------------------------------------------------------------------------------------


def load_clip(u, mode: str, preprocessors: dict):
    """An utterance's Clip in a mode; a separate audio file (auto_avsr layout) joins its video's ROIs.

    preprocessors: a Preprocessor per mode (the utterance's mode, and a and v for separate files)."""
    from .preprocess import Clip

    if u.video is None and "v" in mode:
        raise MediaError(u.media, f"no video (mode {mode} needs one)")
    if u.audio is None or mode == "v":
        clip = preprocessors[mode](u.video if mode == "v" else u.media)
        if clip.mode != mode:
            raise MediaError(u.media, "; ".join(clip.warnings) or f"no {mode} input")
        return clip
    audio = preprocessors["a"](u.audio)
    if mode == "a":
        return audio
    video = preprocessors["v"](u.video)
    return Clip(path=str(u.video), duration=max(audio.duration, video.duration), mode="av", audio=audio.audio,
                rois=video.rois)


def clip_frames(clip) -> int:
    """Length in video frames (25 fps): what batches are measured in."""
    return len(clip.rois) if clip.rois is not None else -(-len(clip.audio) // SAMPLES_PER_FRAME)


def time_mask(x: np.ndarray, rate: float, config: TrainConfig, rng: np.random.Generator) -> np.ndarray:
    """A copy of x (T, ...) with random spans zeroed: one per mask_every_seconds, each up to mask_max_seconds."""
    x = x.copy()
    T = len(x)
    longest = int(config.mask_max_seconds * rate)
    for _ in range(max(1, math.ceil(T / (config.mask_every_seconds * rate)))):
        span = int(rng.integers(0, longest + 1))
        if 0 < span < T:
            start = int(rng.integers(0, T - span + 1))
            x[start : start + span] = 0
    return x


def add_babble(audio: np.ndarray, others: list[np.ndarray], snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """audio (S,) plus the sum of others (each looped to S samples from a random offset) at snr_db."""
    S = len(audio)
    babble = np.zeros(S, dtype=np.float64)
    for other in others:
        if len(other):
            start = int(rng.integers(0, len(other)))
            babble += np.resize(np.roll(other, -start), S)  # np.resize repeats a short utterance
    signal, noise = float(np.mean(audio.astype(np.float64) ** 2)), float(np.mean(babble**2))
    if signal == 0 or noise == 0:
        return audio
    scale = math.sqrt(signal / (noise * 10 ** (snr_db / 10)))
    return (audio + scale * babble).astype(np.float32)


def collate(items: list[dict], device) -> Features:
    """Per-utterance features {"audio": (Ta, Da), "video": (Tv, Dv)} -> one padded Features batch on device."""
    from torch.nn.utils.rnn import pad_sequence

    features = Features()
    for name in ("audio", "video"):
        if items[0].get(name) is not None:
            seqs = [item[name] for item in items]
            setattr(features, name, pad_sequence(seqs, batch_first=True).to(device))  # (B, T, D)
            setattr(features, f"{name}_lengths", torch.tensor([len(s) for s in seqs], device=device))  # (B,)
    return features


def split_features(features: Features) -> list[dict]:
    """A padded batch -> per-utterance CPU tensors (plain tensors, even from an inference-mode encoder)."""
    items = [{} for _ in range(features.batch_size)]
    for name in ("audio", "video"):
        x, lengths = getattr(features, name), getattr(features, f"{name}_lengths")
        if x is not None:
            for i, n in enumerate(lengths.tolist()):
                items[i][name] = x[i, :n].clone().cpu()  # (T_i, D)
    return items


class FeatureStore:
    """Encoded utterances: in memory, or one file each under a cache folder keyed by input files and encoders."""

    def __init__(self, folder: Path | None, tag: str):
        self.folder, self.tag, self.memory = folder, tag, {}

    def key(self, u) -> str:
        files = [p for p in (u.video, u.audio) if p is not None]
        stamp = [(str(Path(p).resolve()), os.stat(p).st_size, os.stat(p).st_mtime_ns) for p in files]
        return hashlib.sha256(json.dumps([stamp, self.tag]).encode()).hexdigest()

    def path(self, u) -> Path:
        return self.folder / f"{self.key(u)}.pt"

    def has(self, i: int, u) -> bool:
        return i in self.memory if self.folder is None else self.path(u).is_file()

    def put(self, i: int, u, item: dict) -> None:
        if self.folder is None:
            self.memory[i] = item
        else:
            atomic_write(self.path(u), lambda tmp: torch.save(item, tmp))

    def get(self, i: int, u, mmap: bool = False) -> dict:
        if self.folder is None:
            return self.memory[i]
        return torch.load(self.path(u), map_location="cpu", weights_only=True, mmap=mmap)


# ---- distributed helpers -----------------------------------------------------------------------------------------


def distributed_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) as torchrun sets them; (0, 0, 1) for a plain launch."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    return distributed_env()[0] == 0


def tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of the tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def average_tensors(snapshots: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of several state dicts with the same keys (computed in fp32, returned in their dtype)."""
    return {k: torch.stack([s[k].float() for s in snapshots]).mean(dim=0).to(snapshots[0][k].dtype)
            for k in snapshots[0]}


def _rng_state() -> dict:
    """Python, numpy and torch RNG states as plain lists and tensors (loadable with weights_only=True)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(mt), gauss], "numpy": [name, keys.tolist(), pos, has_gauss, cached],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---- the recipe --------------------------------------------------------------------------------------------------


class Trainer:
    """setup() builds everything (or restores it with resume), train() runs the loop, cleanup() ends the process
    group. Only the main process (rank 0) logs and writes."""

    def __init__(self, config: TrainConfig, resume: bool = False, quiet: bool = False, home: Path | None = None):
        self.config, self.resume, self.home = config, resume, Path(home) if home else mome_home()
        self.rank, self.local_rank, self.world = distributed_env()
        self.main = self.rank == 0
        self.out = Path(config.output)
        self.quiet = quiet or not self.main
        self.console = None
        if not self.quiet:
            from rich.console import Console

            self.console = Console(stderr=True, highlight=False, soft_wrap=True)
        self.step = self.epoch = self.index = 0
        self.elapsed = 0.0
        self.meter, self.meter_steps = None, 0  # summed losses since the last log line
        self._order = (None, [])  # (epoch, its batches): the last epoch_batches() result

    # -- messages --------------------------------------------------------------------------------------------------

    def say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, markup=False)

    def record(self, kind: str, **values) -> None:
        if self.main:
            with open(self.out / LOG_NAME, "a", encoding="utf-8") as f:
                f.write(json.dumps({"kind": kind, "step": self.step, **values}) + "\n")

    # -- setup -----------------------------------------------------------------------------------------------------

    def setup(self) -> None:
        cfg = self.config
        self.device = self._init_device()
        self.utterances = load_manifest(cfg.train)  # DataError: exit 1 or 4
        self.valid_utterances = load_manifest(cfg.valid)[: cfg.eval_limit] if cfg.valid else []
        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)
        self.recognizer = self._build_recognizer()  # MissingModelError: exit 4
        self.model = self.recognizer.model
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        if self.main:
            self.out.mkdir(parents=True, exist_ok=True)
            if not self.resume:  # traces of an earlier attempt that never saved
                (self.out / LOG_NAME).unlink(missing_ok=True)
                shutil.rmtree(self.out / SNAPSHOTS, ignore_errors=True)
            atomic_write_text(self.out / CONFIG_NAME, json.dumps(cfg.to_dict(), indent=2) + "\n")
        self._prepare_data()
        self.per_epoch = len(self.epoch_batches(0))
        self.total = cfg.steps or sum(len(self.epoch_batches(e)) for e in range(cfg.epochs))
        warmup = cfg.warmup_steps if cfg.warmup_steps is not None else round(cfg.warmup_fraction * self.total)
        self.optimizer = torch.optim.AdamW(self.trainable, lr=cfg.lr, betas=tuple(cfg.betas),
                                           weight_decay=cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor(warmup, self.total,
                                                                                        cfg.min_lr_ratio))
        if self.resume:
            self._restore()
        self.ddp = self.model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            # Inputs are moved to the device here (device_ids=None); a mode without one modality leaves that
            # modality's projectors out of the graph.
            self.ddp = DistributedDataParallel(self.model, device_ids=None, broadcast_buffers=False,
                                               find_unused_parameters=cfg.mode != "av")
        counts = self.model.parameter_counts()
        self.say(f"training {counts['trainable']:,} parameters ({cfg.model} backbones, rates "
                 f"{'; '.join(f'{a},{v}' for a, v in cfg.rates)}) on {self.device} x {self.world}; "
                 f"{len(self.utterances)} utterances, {self.per_epoch} steps/epoch, {self.total} steps"
                 + (f", resuming at step {self.step}" if self.resume else ""))

    def _init_device(self) -> torch.device:
        cfg = self.config
        cuda = cfg.device == "cuda" or cfg.device == "auto" and torch.cuda.is_available()
        if cuda and not torch.cuda.is_available():
            raise ConfigError("device cuda: no CUDA device is available")
        device = torch.device(f"cuda:{self.local_rank}" if cuda else "cpu")
        if cuda:
            torch.cuda.set_device(device)
        if self.world > 1 and not torch.distributed.is_initialized():
            from datetime import timedelta

            # Long timeout: the first epoch's preprocessing and encoding happen between collectives.
            torch.distributed.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(hours=3))
        if cfg.precision == "bf16" and not cuda:
            self.say("note: bf16 autocast is for CUDA; training in fp32 on the CPU")
        self.autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if cuda and cfg.precision == "bf16"
                         else contextlib.nullcontext())
        return device

    def _build_recognizer(self):
        """The frozen encoders and LLM from the cache (never downloaded here) and new trainable modules."""
        from .llm import load_llm
        from .model import AVSRModel
        from .recognizer import Recognizer, _backbone_path, load_audio_encoder, load_video_encoder

        cfg, device = self.config, str(self.device)
        config = cfg.model_config()
        dtype = torch.bfloat16 if self.device.type == "cuda" and cfg.precision == "bf16" else torch.float32
        llm, tokenizer = load_llm(_backbone_path(config.llm, config.llm_revision, self.home), dtype=dtype,
                                  device=device)
        audio = load_audio_encoder(config, self.home, device) if "a" in cfg.mode else None
        video = load_video_encoder(config, self.home, device) if "v" in cfg.mode else None
        torch.manual_seed(cfg.seed)  # the same initial weights on every process and in every run of this seed
        return Recognizer(AVSRModel(config, llm, tokenizer).to(device), audio, video, name=str(self.out))

    def _preprocessors(self) -> dict:
        from .preprocess import PreprocessOptions, Preprocessor

        cfg = self.config
        cache = self.home / "cache" / "clips"
        device = str(self.device)
        return {m: Preprocessor(PreprocessOptions(mode=m, roi=cfg.mouth_crops, detector=cfg.detector, device=device),
                                cache_dir=cache) for m in {cfg.mode, "a", "v"}}

    def _load_clips(self, utterances, indices, what: str) -> dict:
        """{index: Clip} of the utterances that preprocess; the others are skipped with one warning line each."""
        from .hub import face_alignment_env

        preprocessors, clips = self._preprocessors(), {}
        with face_alignment_env(self.home):  # face-alignment's weights as `mome download` puts them
            for i in indices:
                try:
                    clips[i] = load_clip(utterances[i], self.config.mode, preprocessors)
                except MediaError as e:
                    self.say(f"warning: {what} utterance {utterances[i].id} skipped: {e}")
        return clips

    def _prepare_data(self) -> None:
        """Lengths of the training utterances and their features (or raw clips when augmenting); valid clips."""
        cfg, n = self.config, len(self.utterances)
        self.say(f"preparing {n} training utterances" + (" (augmented: encoded at every step)" if cfg.augmenting
                                                            else f" (features cached in {cfg.feature_cache})"))
        model = self.model.config
        tag = ["v1", cfg.mode, cfg.mouth_crops, cfg.detector, model.audio_encoder, model.audio_encoder_revision,
               model.video_encoder, model.video_encoder_revision, self.device.type]  # encoders: bf16 on CUDA
        folder = self.home / "cache" / "features" if cfg.feature_cache == "disk" else None
        self.features = FeatureStore(folder, json.dumps(tag))
        self.clips = {}
        if cfg.augmenting:
            self.clips = self._load_clips(self.utterances, range(n), "training")
            kept = sorted(self.clips)
        else:
            if folder is not None and self.world > 1:  # each process fills its share of the disk cache first
                self._encode(range(self.rank, n, self.world))
                torch.distributed.barrier()
            kept = self._encode(range(n))
        if not kept:
            raise DataError(f"{cfg.train}: none of its {n} utterances could be prepared")
        if len(kept) < n:
            self.say(f"warning: {n - len(kept)} of {n} training utterances skipped")
        self.kept = kept  # indices into self.utterances
        self.lengths = [clip_frames(self.clips[i]) if self.clips else self._feature_frames(i) for i in kept]
        self.valid_clips = list(self._load_clips(self.valid_utterances, range(len(self.valid_utterances)),
                                                 "validation").items())

    def _feature_frames(self, i: int) -> int:
        item = self.features.get(i, self.utterances[i], mmap=True)
        return len(item["video"]) if "video" in item else -(-len(item["audio"]) // 2)  # audio features: 50 Hz

    def _encode(self, indices) -> list[int]:
        """Encode (in groups of similar length) the utterances not in the store yet; the indices now in it."""
        cfg, todo = self.config, [i for i in indices if not self.features.has(i, self.utterances[i])]
        chunk = 16 * cfg.encode_batch  # preprocessed clips held at once
        for at in range(0, len(todo), chunk):
            clips = self._load_clips(self.utterances, todo[at : at + chunk], "training")
            order = sorted(clips, key=lambda i: clip_frames(clips[i]))
            for b in range(0, len(order), cfg.encode_batch):
                group = order[b : b + cfg.encode_batch]
                features = self._features([clips[i] for i in group])
                for i, item in zip(group, split_features(features)):
                    self.features.put(i, self.utterances[i], item)
        return [i for i in indices if self.features.has(i, self.utterances[i])]

    def _features(self, clips) -> Features:
        mode = self.config.mode
        return self.recognizer.features([c.audio for c in clips] if "a" in mode else None,
                                        [c.rois for c in clips] if "v" in mode else None)

    @staticmethod
    def _lr_factor(warmup: int, total: int, floor: float):
        """LambdaLR's factor after `step` optimiser steps: linear warmup, then a cosine from 1 down to floor."""

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

        return factor

    # -- the data order --------------------------------------------------------------------------------------------

    def epoch_batches(self, epoch: int) -> list[list[int]]:
        """This process's batches (indices into self.kept) of an epoch: every world-th of the shuffled order."""
        cfg = self.config
        if self._order[0] == epoch:
            return self._order[1]
        batches = frame_batches(self.lengths, cfg.batch_frames, shuffle=True, seed=cfg.seed + epoch, bucket=cfg.bucket)
        n = len(batches) // self.world
        if n == 0:
            raise DataError(f"{cfg.train}: {len(batches)} batches an epoch cannot feed {self.world} processes; "
                            f"lower batch_frames ({cfg.batch_frames}) or add utterances")
        self._order = (epoch, batches[self.rank :: self.world][:n])
        return self._order[1]

    def inputs(self, batch: list[int]) -> tuple[Features, list[str]]:
        utterances = [self.kept[j] for j in batch]
        texts = [self.utterances[i].text for i in utterances]
        if not self.config.augmenting:
            return collate([self.features.get(i, self.utterances[i]) for i in utterances], self.device), texts
        rng = np.random.default_rng([self.config.seed, self.step, self.rank])
        features = self._features([self._augment(i, rng) for i in utterances])
        for name in ("audio", "audio_lengths", "video", "video_lengths"):  # plain tensors, not inference-mode ones
            if getattr(features, name) is not None:
                setattr(features, name, getattr(features, name).clone())
        return features, texts

    def _augment(self, i: int, rng: np.random.Generator):
        cfg, clip = self.config, self.clips[i]
        audio, rois = clip.audio, clip.rois
        n = len(self.kept)
        if cfg.babble_prob > 0 and rng.random() < cfg.babble_prob and n > 1:
            me = bisect.bisect_left(self.kept, i)  # kept is sorted
            picks = rng.choice(n - 1, size=min(cfg.babble_speakers, n - 1), replace=False)  # anyone but me
            others = [self.clips[self.kept[p + (p >= me)]].audio for p in picks.tolist()]
            audio = add_babble(audio, others, float(rng.choice(cfg.babble_snr)), rng)
        if cfg.mask_audio:
            audio = time_mask(audio, SAMPLE_RATE, cfg, rng)
        if cfg.mask_video:
            rois = time_mask(rois, VIDEO_FPS, cfg, rng)
        return dataclasses.replace(clip, audio=audio, rois=rois)

    # -- the loop --------------------------------------------------------------------------------------------------

    def train(self) -> None:
        cfg = self.config
        started = time.monotonic() - self.elapsed
        rates = self.model.config.rates_for(cfg.mode)
        while self.step < self.total:
            batches = self.epoch_batches(self.epoch)
            if self.index >= len(batches):  # only after resuming with another number of processes
                self.epoch, self.index = self.epoch + 1, 0
                continue
            features, texts = self.inputs(batches[self.index])
            self.model.train()
            self.model.llm.eval()  # frozen backbone: no dropout
            with self.autocast:
                out = self.ddp(features, texts, rates, cfg.mode)
            out.loss.backward()  # DDP: gradients averaged over the processes
            norm = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.grad_clip or math.inf)  # same on every rank
            if not torch.isfinite(norm):  # every process stops here together
                raise TrainingError(f"non-finite gradients at step {self.step + 1} (loss {out.loss.item():.4g}); "
                                    f"try a lower lr than {cfg.lr}")
            self.optimizer.step()
            self.lr = self.optimizer.param_groups[0]["lr"]  # the rate this step used
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            losses = torch.stack([out.loss, out.lm_loss, out.lb_loss, norm, *out.rate_losses.values()]).detach()
            self.meter = losses if self.meter is None else self.meter + losses
            self.meter_steps += 1
            self.step, self.index = self.step + 1, self.index + 1
            if self.index == len(batches):
                self.epoch, self.index = self.epoch + 1, 0
            self.elapsed = time.monotonic() - started
            if self.step % cfg.log_every == 0 or self.step == self.total:
                self._log(rates)
            if cfg.eval_every and self.step % cfg.eval_every == 0:
                self.validate()
            if self.step % cfg.save_every == 0 or self.step == self.total:
                self.save()
        if self.valid_clips and not (cfg.eval_every and self.step % cfg.eval_every == 0):
            self.validate()
        self._finish()

    def _log(self, rates) -> None:
        mean = self.meter / self.meter_steps
        if self.world > 1:
            torch.distributed.all_reduce(mean)
            mean /= self.world
        loss, lm, lb, norm, *per_rate = mean.tolist()
        lr = self.lr
        rate_losses = {_rate_name(r): v for r, v in zip(rates, per_rate)}
        epochs = self.epoch + self.index / max(1, len(self._order[1]))
        self.record("train", epoch=round(epochs, 4), loss=loss, lm_loss=lm, lb_loss=lb, rate_losses=rate_losses, lr=lr,
                    grad_norm=norm, seconds=round(self.elapsed, 3))
        self.say(f"step {self.step}/{self.total}  loss {loss:.4f} (lm {lm:.4f}, lb {lb:.4f})  lr {lr:.2e}  "
                 f"{self.elapsed:.0f} s")
        self.meter, self.meter_steps = None, 0

    def validate(self) -> dict:
        """Greedy transcripts of the valid clips at every trained rate, through transcribe's path; WER per rate."""
        from .recognizer import RecognizeOptions
        from .scoring import WordErrors, score

        if not self.valid_clips:
            return {}
        cfg, began = self.config, time.monotonic()
        mine = self.valid_clips[self.rank :: self.world]
        self.model.eval()
        result = {}
        for rate in self.model.config.rates_for(cfg.mode):
            options = RecognizeOptions(mode=cfg.mode, rate=rate, beam=1, batch_size=cfg.eval_batch_size)
            hyps = [t.text for t in self.recognizer.transcribe_many([c for _, c in mine], options)] if mine else []
            errors = score([self.valid_utterances[i].text for i, _ in mine], hyps)
            counts = torch.tensor([getattr(errors, f.name) for f in fields(WordErrors)], dtype=torch.float64,
                                  device=self.device)  # NCCL reduces CUDA tensors only
            if self.world > 1:
                torch.distributed.all_reduce(counts)
            result[_rate_name(rate)] = WordErrors(*(int(c) for c in counts.tolist())).wer
        seconds = time.monotonic() - began
        self.record("eval", wer=result, utterances=len(self.valid_clips), seconds=round(seconds, 3))
        self.say(f"step {self.step}  valid WER " + "  ".join(f"{r} {100 * w:.1f}%" for r, w in result.items()))
        return result

    # -- saving and resuming ---------------------------------------------------------------------------------------

    def save(self) -> None:
        """A snapshot, then trainer_state.pt (the commit), then the top-level checkpoint; main process only."""
        if not self.main:
            return
        extra = {"training": {"step": self.step, "epoch": self.epoch}}
        snapshot = self.out / SNAPSHOTS / f"step-{self.step:06d}"
        save_checkpoint(self.model, snapshot, extra)
        state = {
            "format": STATE_FORMAT, "step": self.step, "epoch": self.epoch, "index": self.index,
            "elapsed": self.elapsed, "world": self.world,
            "model": {k: v.detach().cpu().clone() for k, v in self.model.trainable_state_dict().items()},
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "rng": _rng_state(), "meter_steps": self.meter_steps,
            "meter": None if self.meter is None else self.meter.cpu(),
        }
        atomic_write(self.out / STATE_NAME, lambda tmp: torch.save(state, tmp))
        save_checkpoint(self.model, self.out, extra)
        keep = max(self.config.keep_last, self.config.average_last or 0)
        for old in self.snapshots()[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
        self.record("save", path=str(snapshot))

    def snapshots(self) -> list[Path]:
        folder = self.out / SNAPSHOTS
        return sorted(p for p in folder.glob("step-*") if (p / "config.json").is_file()) if folder.is_dir() else []

    def _restore(self) -> None:
        state = torch.load(self.out / STATE_NAME, map_location="cpu", weights_only=True)
        if state.get("format") != STATE_FORMAT:
            raise ConfigError(f"{self.out / STATE_NAME}: format {state.get('format')}, this mome reads {STATE_FORMAT}")
        if state["world"] != self.world:
            self.say(f"warning: the run had {state['world']} processes, now {self.world}: the data order changes")
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        if params.keys() != state["model"].keys():
            raise ConfigError(f"{self.out / STATE_NAME}: its tensors do not fit this model")
        with torch.no_grad():
            for name, tensor in state["model"].items():
                params[name].copy_(tensor)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"])
        self.step, self.epoch, self.index = state["step"], state["epoch"], state["index"]
        self.elapsed = state["elapsed"]
        meter = state["meter"]
        self.meter, self.meter_steps = (None if meter is None else meter.to(self.device)), state["meter_steps"]
        if self.main:  # what the stopped run did after its last save is done again: forget its traces
            for snapshot in (self.out / SNAPSHOTS).glob("step-*"):  # complete or not
                if int(snapshot.name.split("-")[1]) > self.step:
                    shutil.rmtree(snapshot, ignore_errors=True)
            log = self.out / LOG_NAME
            if log.is_file():
                lines = [ln for ln in log.read_text(encoding="utf-8").splitlines()
                         if ln.strip() and json.loads(ln)["step"] <= self.step]
                atomic_write_text(log, "".join(ln + "\n" for ln in lines))

    def _finish(self) -> None:
        cfg = self.config
        digest_dir = os.environ.get(DIGEST_ENV)
        if digest_dir:
            Path(digest_dir).mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(digest_dir) / f"rank-{self.rank}.sha256",
                              tensor_digest(self.model.trainable_state_dict()) + "\n")
        if self.main and cfg.average_last:
            self.average(cfg.average_last)
        if self.world > 1:  # all leave together: a process that tears down gloo while another works can abort
            torch.distributed.barrier()
        self.say(f"done: {self.step} steps in {self.elapsed:.0f} s; checkpoint in {self.out}")

    def average(self, k: int) -> None:
        """The final checkpoint = the element-wise mean of the last k snapshots' trainable tensors."""
        from safetensors.torch import load_file

        from .checkpoint import WEIGHTS_NAME

        chosen = self.snapshots()[-k:]
        if len(chosen) < k:
            self.say(f"warning: average_last {k} but only {len(chosen)} saves exist: averaging those")
        mean = average_tensors([load_file(p / WEIGHTS_NAME) for p in chosen])
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, tensor in mean.items():
                params[name].copy_(tensor)
        steps = [int(p.name.split("-")[1]) for p in chosen]
        save_checkpoint(self.model, self.out, {"training": {"step": self.step, "averaged_steps": steps}})
        self.record("average", steps=steps)
        self.say(f"final model: mean of the saves at steps {', '.join(map(str, steps))}")

    def cleanup(self) -> None:
        if self.world > 1 and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _rate_name(rate) -> str:
    return ",".join(str(r) for r in rate if r is not None)


def run(config: TrainConfig, resume: bool = False, quiet: bool = False) -> Trainer:
    """Set up, train and clean up: what `mome train` calls once it has a config."""
    trainer = Trainer(config, resume=resume, quiet=quiet)
    try:
        trainer.setup()
        trainer.train()
    finally:
        trainer.cleanup()
    return trainer


__all__ = ["TrainConfig", "ConfigError", "TrainingError", "resolve_config", "read_toml", "Trainer", "run",
           "tensor_digest", "average_tensors", "time_mask", "add_babble", "distributed_env", "is_main_process"]
