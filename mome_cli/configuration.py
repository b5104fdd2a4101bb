"""The model's configuration: ModelConfig (every architecture choice, config.json's "model") and MoMEConfig.

Apart from the modeling code, as transformers keeps its configuration_*.py files, and torch-free: what a checkpoint
is and which rates and modes it takes can be read without importing torch (a `mome transcribe` whose outputs all
exist checks its options against the model's config alone).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields

POSITIONS = ("mhsa", "ffn", "layer")  # where each MoME module sits inside its decoder layer
COMPRESSION_KINDS = ("avgpool", "stack")
MODES = ("a", "v", "av")
DEFAULT_PROMPTS = {
    "a": "Transcribe speech to text.",
    "v": "Transcribe video to text.",
    "av": "Transcribe speech and video to text.",
}
DEFAULT_RATES = [(4, 2), (4, 5), (16, 2), (16, 5)]  # (audio, video) pairs trained jointly
TINY_WIDTH = 32  # output width of the `tiny` encoders (encoders.TINY_WHISPER, AVHubertConfig.tiny): known without torch

Rate = tuple  # (audio rate or None, video rate or None)


@dataclass
class MoMEConfig:
    num_routed: int = 23  # N_r routed experts per layer
    num_shared: int = 1  # N_s always-active shared experts per layer
    top_k: int = 4  # K routed experts chosen per token
    bottleneck: int = 12  # b hidden units per expert
    position: str = "mhsa"  # mhsa | ffn | layer: which part of each decoder layer MoME runs beside
    lb_coef: float = 0.01  # weight of the load-balancing loss added to the LM loss

    def __post_init__(self):
        if self.num_routed < 1:
            raise ValueError(f"num_routed must be >= 1, got {self.num_routed}")
        if self.num_shared < 0:
            raise ValueError(f"num_shared must be >= 0, got {self.num_shared}")
        if not 1 <= self.top_k <= self.num_routed:
            raise ValueError(f"top_k must be in 1..num_routed={self.num_routed}, got {self.top_k}")
        if self.bottleneck < 1:
            raise ValueError(f"bottleneck must be >= 1, got {self.bottleneck}")
        if self.position not in POSITIONS:
            raise ValueError(f"position must be one of {', '.join(POSITIONS)}, got {self.position!r}")
        if not 0 <= self.lb_coef < math.inf:  # NaN too
            raise ValueError(f"lb_coef must be a finite number >= 0, got {self.lb_coef}")

    @property
    def num_experts(self) -> int:
        return self.num_shared + self.num_routed

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class ModelConfig:
    llm: str = "meta-llama/Llama-3.2-1B"  # hub id, local directory or tiny name (see llm.py)
    llm_revision: str | None = None  # hub revision (branch, tag or commit) of the LLM
    audio_encoder: str = "openai/whisper-medium.en"  # frozen audio encoder (50 Hz)
    audio_encoder_revision: str | None = None
    audio_dim: int = 1024  # audio encoder output width
    video_encoder: str = "avhubert-large"  # frozen lip encoder (25 Hz)
    video_encoder_revision: str | None = None
    video_dim: int = 1024  # video encoder output width
    rates: list = field(default_factory=lambda: list(DEFAULT_RATES))  # (audio, video) rate pairs trained
    compression: str = "avgpool"  # avgpool | stack
    projector_hidden: int = 2048  # hidden width of each projector
    mome: MoMEConfig = field(default_factory=MoMEConfig)
    modes: list = field(default_factory=lambda: ["av"])  # modes trained: any of a, v, av
    prompts: dict = field(default_factory=lambda: dict(DEFAULT_PROMPTS))  # instruction text per mode
    tags: dict = field(default_factory=lambda: {"audio": ["<audio>", "</audio>"], "video": ["<video>", "</video>"]})

    def __post_init__(self):
        # a config.json edited by hand or damaged: one line naming the field, not an error deep in the model's build
        for name in ("llm", "audio_encoder", "video_encoder", "compression"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name} must be text, got {getattr(self, name)!r}")
        for name in ("audio_dim", "video_dim", "projector_hidden"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        for name, kinds in (("mome", (dict, MoMEConfig)), ("rates", (list, tuple)), ("modes", (list, tuple)),
                            ("prompts", dict), ("tags", dict)):
            if not isinstance(getattr(self, name), kinds):
                raise ValueError(f"{name} must be a {'list' if list in kinds else 'mapping'}, got "
                                 f"{getattr(self, name)!r}")
        if isinstance(self.mome, dict):
            self.mome = MoMEConfig(**self.mome)
        whole = lambda r: isinstance(r, int) and not isinstance(r, bool) and r >= 1  # noqa: E731
        if not self.rates or not all(isinstance(p, (list, tuple)) and len(p) == 2 and all(map(whole, p))
                                     for p in self.rates):
            raise ValueError(f"rates must be a non-empty list of (audio, video) pairs of whole rates >= 1, got "
                             f"{self.rates}")
        self.rates = [tuple(pair) for pair in self.rates]
        if len(set(self.rates)) != len(self.rates):
            raise ValueError(f"rates has duplicate pairs: {self.rates}")
        if self.compression not in COMPRESSION_KINDS:
            raise ValueError(f"compression must be one of {', '.join(COMPRESSION_KINDS)}, got {self.compression!r}")
        unknown = [m for m in self.modes if m not in MODES]
        if not self.modes or unknown:
            raise ValueError(f"modes must be a non-empty subset of {', '.join(MODES)}, got {self.modes}")
        missing = [m for m in MODES if not isinstance(self.prompts.get(m), str)]
        if missing:
            raise ValueError(f"prompts has no text for mode(s) {', '.join(missing)}")
        for modality in ("audio", "video"):
            tag = self.tags.get(modality)
            if not (isinstance(tag, (list, tuple)) and len(tag) == 2 and all(isinstance(t, str) for t in tag)):
                raise ValueError(f"tags must give {modality} an opening and a closing text, got {tag!r}")

    @property
    def inputs(self) -> str:
        """What its modes read, "av", "a" or "v": the model has an encoder for each (a mode-a model reads no lips)."""
        return "".join(m for m in "av" if any(m in mode for mode in self.modes))

    def rates_for(self, mode: str) -> list[Rate]:
        """Trained rates in a mode: (a, v) pairs for av, (a, None) for a, (None, v) for v; first is the default."""
        if mode == "av":
            return list(self.rates)
        if mode == "a":
            return [(a, None) for a in dict.fromkeys(a for a, _ in self.rates)]
        if mode == "v":
            return [(None, v) for v in dict.fromkeys(v for _, v in self.rates)]
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["rates"] = [list(p) for p in self.rates]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown model config field(s): {', '.join(unknown)}")
        return cls(**d)


__all__ = ["POSITIONS", "COMPRESSION_KINDS", "MODES", "DEFAULT_PROMPTS", "DEFAULT_RATES", "TINY_WIDTH", "Rate",
           "MoMEConfig", "ModelConfig"]
