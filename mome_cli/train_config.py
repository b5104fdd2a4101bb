"""The settings of a `mome train` run: TrainConfig, recipes in TOML, flags on top, and what a resume may change.

A recipe (recipes/*.toml) sets any TrainConfig field; its tables ([data], [model], [optim], ...) only group them.
resolve_config layers, lowest first: the saved run's train_config.json (with --resume), the recipe, the flags; a layer
that sets steps clears epochs and the other way round. An impossible value is a ConfigError (the CLI exits 2) that
names it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

from .checkpoint import BACKBONES_NAME, CheckpointError, backbones_config
from .files import refuse_file_in_the_way
from .hub import PRESETS
from .model import DEFAULT_RATES, MODES, ModelConfig
from .mome import POSITIONS, MoMEConfig

STATE_NAME = "trainer_state.pt"  # in the output directory: what --resume needs (training.py writes it)
CONFIG_NAME = "train_config.json"  # in the output directory: the resolved TrainConfig
LOG_NAME = "log.jsonl"  # in the output directory: one JSON object per logged step, validation and save
SNAPSHOTS = "snapshots"  # in the output directory: a checkpoint folder per save kept
LOCK_NAME = ".train.lock"  # in the output directory: held by the process training there
TRAINABLE_MODELS = tuple(name for name, p in PRESETS.items() if p.source != "bundled")  # tiny, mome-1b, ...
PRECISIONS = ("bf16", "fp32")
FEATURE_CACHES = ("memory", "disk")
DEVICES = ("auto", "cpu", "cuda")
# What may change when a run is resumed: anything else would make it a different run.
RESUMABLE = {"output", "steps", "epochs", "valid", "save_every", "keep_last", "average_last", "eval_every", "eval_limit",
             "eval_batch_size", "log_every", "device", "feature_cache", "encode_batch"}


class ConfigError(ValueError):
    """A training configuration that cannot work (the CLI exits 2)."""


def parse_rates(value) -> list[tuple[int, int]]:
    """Rate pairs from text ("4,2;4,5") or pairs ([[4, 2], [4, 5]]) -> [(4, 2), (4, 5)]; else ConfigError.

    Pairs given as numbers (a recipe's, a saved run's) are taken as they are, never converted: int() read a
    recipe's [[4.7, 2]] as 4,2 and [[true, 2]] as 1,2."""
    try:
        if isinstance(value, str):
            rates = [tuple(int(r) for r in p.split(",")) for p in value.split(";") if p.strip()]
        else:
            rates = [tuple(pair) for pair in value]
            if not all(isinstance(r, int) and not isinstance(r, bool) for pair in rates for r in pair):
                raise ValueError("a rate that is not a whole number")
    except (TypeError, ValueError) as e:
        raise ConfigError(f"rates must be audio,video pairs of whole numbers such as \"4,2;4,5\" or [[4, 2], [4, 5]], "
                          f"got {value!r}") from e
    if not rates or any(len(p) != 2 or min(p) < 1 for p in rates) or len(set(rates)) != len(rates):
        shown = value if isinstance(value, str) else ";".join(",".join(map(str, p)) for p in rates)  # as typed
        raise ConfigError(f"rates must be distinct audio,video pairs of rates >= 1, got {shown!r}")
    return rates


@dataclass
class TrainConfig:
    """Everything a training run depends on; a recipe (TOML) sets any field, flags override it (resolve_config)."""

    # -- data ------------------------------------------------------------------------------------------------------
    train: str | None = None  # training manifest: .jsonl, auto_avsr .csv, or a folder of media with .txt transcripts
    valid: str | None = None  # validation manifest (same layouts); None: no validation
    output: str | None = None  # the checkpoint directory written (and continued by --resume)
    mode: str = "av"  # mode trained: av, a or v; or several, comma-separated ("av,a,v"): one model serves each
    roi: bool | None = None  # videos are mouth crops (no face detection); None: yes for an auto_avsr .csv manifest
    detector: str = "sfd"  # face detector when roi is off: sfd | blazeface
    # -- model -----------------------------------------------------------------------------------------------------
    model: str = "tiny"  # backbone preset (tiny | mome-1b | mome-3b | mome-8b) or a folder from mome_cli.pretrain
    rates: list = field(default_factory=lambda: list(DEFAULT_RATES))  # (audio, video) rate pairs, trained jointly
    compression: str = "avgpool"  # avgpool | stack: how r frames become one token
    projector_hidden: int | None = None  # projector hidden width; None: the preset's (2048; 64 for tiny)
    experts: int = 23  # routed experts N_r per layer
    shared: int = 1  # shared experts N_s per layer
    top_k: int = 4  # routed experts per token
    bottleneck: int = 12  # hidden units per expert
    position: str = "mhsa"  # mhsa | ffn | layer: what each MoME module runs beside
    lb_coef: float = 0.01  # weight of the load-balancing loss
    init: str | None = None  # safetensors file of initial trainable tensors (e.g. a backbones folder's projectors)
    # -- optimisation ----------------------------------------------------------------------------------------------
    steps: int | None = None  # optimiser steps in all; or:
    epochs: int | None = None  # passes over the training set (exactly one of steps, epochs)
    batch_frames: int = 1000  # padded video frames (25 fps) per batch and process: count x longest
    bucket: int = 400  # utterances sorted by length within shuffled buckets of this many
    lr: float = 1e-3  # peak learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.98])  # AdamW betas
    weight_decay: float = 0.1  # AdamW weight decay (every trainable tensor)
    warmup_steps: int | None = None  # linear warmup steps; None: warmup_fraction of all steps
    warmup_fraction: float = 0.05  # warmup as a fraction of all steps, when warmup_steps is None
    min_lr_ratio: float = 0.0  # the cosine decays to lr * min_lr_ratio
    grad_clip: float = 10.0  # max gradient norm (0: no clipping)
    precision: str = "bf16"  # bf16 autocast on CUDA | fp32; the CPU trains in fp32; frozen backbones: bf16 on CUDA
    # whatever this says (as transcribe runs them)
    seed: int = 0  # model init, batch order, augmentation
    device: str = "auto"  # auto | cpu | cuda (under torchrun: the process's LOCAL_RANK GPU)
    # -- augmentation of the raw inputs (any of it on: every step encodes its batch again) ------------------------
    mask_audio: bool = False  # zero random spans of audio samples
    mask_video: bool = False  # zero random spans of ROI frames
    crop_video: bool = False  # a random 88 x 88 window of each utterance's ROIs (one offset a clip), not the centre
    mask_max_seconds: float = 0.4  # longest masked span
    mask_every_seconds: float = 1.0  # one span per this much of an utterance (at least one)
    babble_prob: float = 0.0  # chance that an utterance gets babble noise (other training utterances summed)
    babble_speakers: int = 4  # utterances summed into one babble
    babble_snr: list[float] = field(default_factory=lambda: [-5, 0, 5, 10, 15, 20])  # dB; one SNR drawn per utterance
    # -- features --------------------------------------------------------------------------------------------------
    feature_cache: str = "memory"  # memory | disk ($MOME_HOME/cache): where encoded utterances (and, augmenting, the
    # raw clips) are kept
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
        self._check_types()
        self.betas = [float(b) for b in self.betas]
        self.babble_snr = [float(s) for s in self.babble_snr]
        if self.train is None:
            raise ConfigError("no training manifest: give --train MANIFEST (or train = ... in the config)")
        if self.output is None:
            raise ConfigError("no output directory: give -o/--output DIR (or output = ... in the config)")
        unknown = [m for m in self.modes if m not in MODES]
        if not self.modes or unknown or len(set(self.modes)) != len(self.modes):
            raise ConfigError(f"mode must be one of {', '.join(MODES)} or several of them, comma-separated, got "
                              f"{self.mode!r}")
        if self.model not in TRAINABLE_MODELS and not (Path(self.model) / BACKBONES_NAME).is_file():
            raise ConfigError(f"model must be one of {', '.join(TRAINABLE_MODELS)} or a folder of backbones written by "
                              f"`python -m mome_cli.pretrain` (with {BACKBONES_NAME}), got {self.model!r}")
        choices = {"position": POSITIONS, "precision": PRECISIONS,
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
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"lr must be > 0 and finite, got {self.lr}")
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
        if not all(math.isfinite(s) for s in self.babble_snr):  # nan: NaN audio, the run died on its gradients
            raise ConfigError(f"babble_snr must be finite numbers (dB), got {self.babble_snr}")
        if self.babble_prob > 0 and not self.babble_snr:
            raise ConfigError("babble_prob > 0 needs at least one SNR in babble_snr")
        if self.mask_audio and "a" not in self.data_mode or self.mask_video and "v" not in self.data_mode:
            raise ConfigError(f"mask_audio/mask_video need their modality in mode, got mode={self.mode!r}")
        if self.crop_video and "v" not in self.data_mode:
            raise ConfigError(f"crop_video needs video in mode, got mode={self.mode!r}")
        if self.babble_prob > 0 and "a" not in self.data_mode:
            raise ConfigError(f"babble noise needs audio, got mode={self.mode!r}")
        try:
            self.mome_config()
        except ValueError as e:
            raise ConfigError(f"MoME: {e} (experts={self.experts}, shared={self.shared}, top_k={self.top_k})") from e

    def _check_types(self) -> None:
        """Each value of the kind its field says (a recipe's lr = "1e-3" or roi = "false" is refused, not crashed on
        or read as true), and each item of a list[kind] field of its kind (betas = ["a", 0.9] crashed in float())."""
        kinds = {"str": (str,), "bool": (bool,), "int": (int,), "float": (int, float), "list": (list, tuple)}
        names = {"str": "text", "bool": "true or false", "int": "a whole number", "float": "a number", "list": "a list"}
        items = {"float": "numbers"}  # what a list[kind] holds, as said

        def fits(value, kind: str) -> bool:
            return isinstance(value, kinds[kind]) and not (kind in ("int", "float") and isinstance(value, bool))

        for f in fields(self):
            allowed = str(f.type).replace(" ", "").split("|")  # "list[float]", "int", "None"
            value = getattr(self, f.name)
            if value is None and "None" in allowed:
                continue
            outer = [k.split("[")[0] for k in allowed if k.split("[")[0] in kinds]
            if not any(fits(value, k) for k in outer):
                raise ConfigError(f"{f.name} must be {' or '.join(names[k] for k in outer)}, got {value!r}")
            inner = [k[len("list["):-1] for k in allowed if k.startswith("list[")]
            if inner and isinstance(value, (list, tuple)) and not all(fits(v, inner[0]) for v in value):
                raise ConfigError(f"{f.name} must be a list of {items[inner[0]]}, got {value!r}")
        if not 0 <= self.seed < 2**32:  # numpy's generator takes no other
            raise ConfigError(f"seed must be in 0..{2**32 - 1}, got {self.seed}")

    # -- derived ---------------------------------------------------------------------------------------------------

    @property
    def modes(self) -> list[str]:
        """The modes trained, in the order given; the first is the model's default."""
        return [m.strip() for m in self.mode.split(",") if m.strip()]

    @property
    def data_mode(self) -> str:
        """What each utterance is read as: av when any mode trained needs audio and any needs video."""
        joined = "".join(self.modes)
        return "".join(m for m in "av" if m in joined)

    @property
    def mouth_crops(self) -> bool:
        return self.roi if self.roi is not None else str(self.train).endswith(".csv")

    @property
    def augmenting(self) -> bool:
        return self.mask_audio or self.mask_video or self.crop_video or self.babble_prob > 0

    def mome_config(self) -> MoMEConfig:
        return MoMEConfig(num_routed=self.experts, num_shared=self.shared, top_k=self.top_k,
                          bottleneck=self.bottleneck, position=self.position, lb_coef=self.lb_coef)

    def model_config(self) -> ModelConfig:
        from .presets import preset_config, tiny_config

        if self.model == "tiny":
            base = tiny_config()
        elif self.model in TRAINABLE_MODELS:
            base = preset_config(self.model)
        else:
            try:
                base = backbones_config(self.model)
            except CheckpointError as e:
                raise ConfigError(str(e)) from e
        return dataclasses.replace(base, rates=list(self.rates), compression=self.compression,
                                   projector_hidden=self.projector_hidden or base.projector_hidden,
                                   mome=self.mome_config(), modes=self.modes)

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


NEVER_SAVED = {CONFIG_NAME, LOG_NAME, SNAPSHOTS}  # what a run that stopped before its first save ended leaves


def save_leftover(name: str) -> bool:
    """Whether a file name in a run folder is a temporary file of a save that was killed (files.atomic_write's)."""
    return name.endswith(".tmp") and any(name.startswith(f".{saved}.") for saved in (
        *NEVER_SAVED, STATE_NAME, "config.json", "model.safetensors"))


def left_by_a_run(path: Path) -> bool:
    """Whether an entry of an output folder is what a run that stopped before its first save left there, which a new
    run replaces: the lock, a save's temporary file, or one of NEVER_SAVED as mome writes it. A file or folder of the
    user's by one of those names is not (a log.jsonl of their own, photos in a snapshots folder)."""
    if path.name == LOCK_NAME or save_leftover(path.name):
        return True
    try:
        if path.name == SNAPSHOTS:
            return path.is_dir() and not path.is_symlink() and all(
                re.fullmatch(r"step-\d+", step.name) and step.is_dir() and not step.is_symlink() and all(
                    f.name in ("config.json", "model.safetensors") or save_leftover(f.name) for f in step.iterdir())
                for step in path.iterdir())
        if path.name == LOG_NAME:
            lines = path.read_text(encoding="utf-8").splitlines()
            return all(isinstance(r := json.loads(line), dict) and {"kind", "step"} <= r.keys() for line in lines)
        if path.name == CONFIG_NAME:
            saved = json.loads(path.read_text(encoding="utf-8"))
            return isinstance(saved, dict) and saved.keys() <= {f.name for f in fields(TrainConfig)}
    except (OSError, ValueError):  # unreadable, not UTF-8, not JSON: not mome's
        return False
    return False


def _built(values: dict, from_recipe: set[str], config_file) -> TrainConfig:
    """TrainConfig(**values); a ConfigError about a setting the recipe gave (the one its message begins with, as each
    does) names the recipe, so that a value no flag on the command line shows is found."""
    try:
        return TrainConfig(**values)
    except ConfigError as e:
        words = str(e).removeprefix("MoME: ").split()
        if words and words[0] in from_recipe:
            raise ConfigError(f"{config_file}: {e}") from e
        raise


def resolve_config(config_file=None, overrides: dict | None = None, resume: bool = False) -> TrainConfig:
    """The TrainConfig of a run: [the saved run's config when resuming] < the TOML recipe < the flags.

    Refuses to start a new run in a directory that holds one, and to resume with settings that would make it a
    different run (only RESUMABLE settings may change)."""
    recipe = read_toml(config_file) if config_file else {}
    values = _layer(_layer({}, recipe, str(config_file)), overrides or {}, "flags")
    from_recipe = {k for k in recipe if k not in (overrides or {})}  # a value the flags left as the recipe has it
    if values.get("output") is None:
        raise ConfigError("no output directory: give -o/--output DIR (or output = ... in the config)")
    # A folder of backbones is saved absolute; a preset's name stays one, even beside a folder of that name (a run
    # written to -o tiny).
    if values.get("model") is not None and (Path(values["model"]) / BACKBONES_NAME).is_file():
        values["model"] = str(Path(values["model"]).absolute())
    for name in ("train", "valid", "output"):  # relative to where mome runs; saved absolute, so resume can move
        if values.get(name) is not None:
            values[name] = str(Path(values[name]).absolute())
    out = Path(values["output"])
    saved_path = out / CONFIG_NAME
    if not resume:
        if (out / STATE_NAME).exists():
            raise ConfigError(f"{out} holds a training run already: pass --resume to continue it, or another -o")
        try:  # -o FILE, or FILE/sub (which failed only once the model was built, exit 1): as a run's other -o refusals
            refuse_file_in_the_way(out)
        except NotADirectoryError as e:
            raise ConfigError(f"-o {out}: {e.strerror}") from e
        if out.is_dir():  # never written over: a checkpoint there (a model's weights) or anything else of the user's
            try:
                theirs = sorted(p.name for p in out.iterdir() if not left_by_a_run(p))
            except OSError as e:
                raise ConfigError(f"-o {out}: cannot list it: {e.strerror or e}") from e
            if theirs:
                listed = ", ".join(theirs[:3]) + (", ..." if len(theirs) > 3 else "")
                raise ConfigError(f"-o {out} is not empty ({listed}): a new run is written to a new or empty folder "
                                  "(--resume continues a run)")
        return _built(values, from_recipe, config_file)
    if not (out / STATE_NAME).is_file() or not saved_path.is_file():
        raise ConfigError(f"--resume: {out} holds no run to continue (no {STATE_NAME} / {CONFIG_NAME})")
    try:
        saved = json.loads(saved_path.read_text(encoding="utf-8"))
        if not isinstance(saved, dict):
            raise ValueError("not a JSON object")
        before = TrainConfig(**saved).to_dict()
    except (OSError, ValueError, TypeError) as e:  # ConfigError too: a value the saved run could not have had
        raise ConfigError(f"--resume: {saved_path}: damaged or from another version of mome, the run cannot be "
                          f"resumed from it ({getattr(e, 'strerror', None) or e})") from e
    config = _built(_layer(_layer({}, saved, str(saved_path)), values, "flags and recipe"), from_recipe, config_file)
    changed = [k for k, v in config.to_dict().items() if k not in RESUMABLE and v != before[k]]
    if changed:
        detail = "; ".join(f"{k}: run {before[k]!r}, now {config.to_dict()[k]!r}" for k in changed)
        raise ConfigError(f"--resume: these settings differ from the run in {out} ({detail})")
    return config


__all__ = ["TrainConfig", "ConfigError", "save_leftover", "left_by_a_run", "parse_rates", "read_toml", "resolve_config",
           "STATE_NAME", "CONFIG_NAME", "LOG_NAME", "SNAPSHOTS", "LOCK_NAME", "RESUMABLE"]
