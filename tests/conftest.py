"""Shared helpers: tiny models and random encoder features built in the test, never downloaded."""

import pytest
import torch

from mome_cli.checkpoint import build_model
from mome_cli.model import Features, ModelConfig
from mome_cli.mome import MoMEConfig

AUDIO_DIM, VIDEO_DIM = 16, 12


def tiny_config(**overrides) -> ModelConfig:
    mome = overrides.pop("mome", {})
    base = dict(llm="tiny", audio_dim=AUDIO_DIM, video_dim=VIDEO_DIM, projector_hidden=32)
    return ModelConfig(**{**base, **overrides}, mome=MoMEConfig(**{**dict(num_routed=4, top_k=2, bottleneck=8), **mome}))


def tiny_model(seed: int = 0, perturb: bool = True, **overrides):
    """A tiny model; with perturb the zero-initialised up-projections get random values so MoME changes outputs."""
    torch.manual_seed(seed)
    model = build_model(tiny_config(**overrides)).eval()
    if perturb:
        for m in model.mome:
            torch.nn.init.normal_(m.up_weight, std=0.3)
            torch.nn.init.normal_(m.up_bias, std=0.1)
    return model


def random_features(audio_lengths=(50, 37, 21), seed: int = 0) -> Features:
    """Random audio (50 Hz) and video (25 Hz) features for clips of the given audio lengths, zero-padded."""
    g = torch.Generator().manual_seed(seed)
    a = torch.tensor(audio_lengths)
    v = (a + 1) // 2
    return Features(torch.randn(len(a), int(a.max()), AUDIO_DIM, generator=g), a,
                    torch.randn(len(a), int(v.max()), VIDEO_DIM, generator=g), v)


def clip(features: Features, i: int) -> Features:
    """Clip i alone, without padding."""
    a, v = int(features.audio_lengths[i]), int(features.video_lengths[i])
    return Features(features.audio[i : i + 1, :a], features.audio_lengths[i : i + 1],
                    features.video[i : i + 1, :v], features.video_lengths[i : i + 1])


@pytest.fixture
def model():
    return tiny_model()
