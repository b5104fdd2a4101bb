"""Checkpoint directories: config.json (every architecture choice) + model.safetensors (trainable tensors only).

The frozen backbones are referenced by id and revision in the config, not copied. Files are written to a temporary
name in the same directory and renamed into place, so a crash never leaves a half-written file under a final name;
the tensors are written first and the config last, so a directory with a config.json is complete.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .configuration import ModelConfig
from .files import atomic_write

if TYPE_CHECKING:  # torch is imported where it is used: reading a config needs none
    import torch

    from .model import AVSRModel

CONFIG_NAME = "config.json"
BACKBONES_NAME = "backbones.json"  # in a folder of backbones trained here (pretrain.py): their ModelConfig fields
BACKBONE_FIELDS = ("llm", "audio_encoder", "video_encoder")  # may be paths relative to the folder naming them
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1  # bumped when the layout of a checkpoint directory changes

# Fields that decide the shape or meaning of the trained tensors: an adapter fits a model only if they agree.
ARCHITECTURE_FIELDS = ("llm", "audio_dim", "video_dim", "rates", "compression", "projector_hidden", "mome", "tags")
# Fields a checkpoint's config must give (save_checkpoint writes them all): filled in from ModelConfig's defaults, a
# missing one would quietly name another model (a config without "llm" would ask for Llama-3.2-1B).
REQUIRED_FIELDS = ("llm", "audio_encoder", "audio_dim", "video_encoder", "video_dim", "rates", "compression",
                   "projector_hidden", "mome", "modes")


class CheckpointError(Exception):
    """A checkpoint directory that is missing, incomplete, or does not fit the model."""


def save_checkpoint(model: AVSRModel, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Write model.safetensors then config.json into directory (created if needed)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.trainable_state_dict().items()}
    atomic_write(directory / WEIGHTS_NAME, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    config = {"format_version": FORMAT_VERSION, "model": model.config.to_dict(), **(extra or {})}
    text = json.dumps(config, indent=2) + "\n"
    atomic_write(directory / CONFIG_NAME, lambda tmp: Path(tmp).write_text(text))
    return directory


def read_config(directory: str | os.PathLike) -> ModelConfig:
    """A checkpoint's ModelConfig; backbones it carries (relative paths under directory) come back absolute."""
    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: not a mome checkpoint (no {CONFIG_NAME})")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # not UTF-8 (UnicodeDecodeError) or not JSON
        raise CheckpointError(f"{path}: unreadable: {e}") from e
    if not isinstance(data, dict) or not isinstance(data.get("model"), dict):
        raise CheckpointError(f"{path}: not a mome checkpoint's config (a JSON object with a \"model\" object)")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {version}, this mome reads format {FORMAT_VERSION}")
    missing = [name for name in REQUIRED_FIELDS if name not in data["model"]]
    if missing:
        raise CheckpointError(f"{path}: invalid model config: no {', '.join(missing)}")
    try:
        config = ModelConfig.from_dict(data["model"])
    except (KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: invalid model config: {e}") from e
    return with_local_backbones(config, directory)


def with_local_backbones(config: ModelConfig, directory: str | os.PathLike) -> ModelConfig:
    """config with each backbone path that is relative and exists under directory made absolute (a checkpoint or a
    backbones folder that carries its own backbones, as the bundled demo model does)."""
    for name in BACKBONE_FIELDS:
        value = getattr(config, name)
        local = Path(directory) / value
        if value and not Path(value).is_absolute() and local.exists():
            setattr(config, name, str(local.absolute()))
    return config


def backbones_config(directory: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of a folder written by pretrain.py, its backbone paths made absolute."""
    path = Path(directory) / BACKBONES_NAME
    try:
        config = ModelConfig.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, json.JSONDecodeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable backbones description: {e}") from e
    return with_local_backbones(config, directory)


def load_weights(model: AVSRModel, directory: str | os.PathLike) -> None:
    """Load a checkpoint's tensors into a model built with a compatible config; any mismatch is an error."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    saved = read_config(directory)
    mine = model.config.to_dict()
    theirs = saved.to_dict()
    differ = [f for f in ARCHITECTURE_FIELDS if mine[f] != theirs[f]]
    if differ:
        detail = "; ".join(f"{f}: checkpoint {theirs[f]!r}, model {mine[f]!r}" for f in differ)
        raise CheckpointError(f"{directory}: checkpoint does not fit this model ({detail})")
    path = directory / WEIGHTS_NAME
    if not path.is_file():
        raise CheckpointError(f"{directory}: incomplete checkpoint (no {WEIGHTS_NAME})")
    try:
        tensors = load_file(path)
    except (OSError, SafetensorError) as e:
        raise CheckpointError(f"{path}: unreadable: {e}") from e
    expected = model.trainable_state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors) if expected[k].shape != tensors[k].shape)
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{path}: tensors do not match the model (missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"wrong shape {wrong[:5]})"
        )
    import torch

    with torch.no_grad():
        params = dict(model.named_parameters())
        for name, tensor in tensors.items():
            params[name].copy_(tensor)


def build_model(config: ModelConfig, device: str = "cpu", dtype: torch.dtype | None = None) -> AVSRModel:
    """A fresh model (frozen LLM loaded by id, new projectors and MoME modules) from a config."""
    from .llm import load_llm
    from .model import AVSRModel

    llm, tokenizer = load_llm(config.llm, config.llm_revision, dtype=dtype, device=device)
    return AVSRModel(config, llm, tokenizer).to(device)


def load_checkpoint(directory: str | os.PathLike, device: str = "cpu", dtype: torch.dtype | None = None) -> AVSRModel:
    """Rebuild the model a checkpoint directory describes and load its tensors."""
    model = build_model(read_config(directory), device=device, dtype=dtype)
    load_weights(model, directory)
    return model.eval()


__all__ = ["CONFIG_NAME", "WEIGHTS_NAME", "BACKBONES_NAME", "BACKBONE_FIELDS", "CheckpointError", "atomic_write",
           "save_checkpoint", "read_config", "with_local_backbones", "backbones_config", "load_weights",
           "build_model", "load_checkpoint"]
