"""Shared helpers: tiny models, random encoder features and face-alignment weights built in the test, never
downloaded."""

import os
import signal
import time

import numpy as np
import pytest
import torch

# face-alignment's heatmap decoding is numba-jitted; compiling it takes ~10 s per process on 2 cores, running the same
# Python code uncompiled on 2 small faces takes milliseconds. NUMBA_DISABLE_JIT=0 tests the compiled path.
os.environ.setdefault("NUMBA_DISABLE_JIT", "1")

# Tiny models on two shared cores run far faster with one thread (two threads fight over the cores for tiny
# matrices), and one thread rounds the same way on every machine. Subprocesses (mome, torchrun) inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Without a GPU, Triton kernels (mome_kernels.py) run in Triton's interpreter, on the CPU: set before anything
# imports triton (transformers' Llama does), which reads it then.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


from mome_cli.checkpoint import build_model
from mome_cli.lips import check_stop
from mome_cli.model import Features, ModelConfig
from mome_cli.mome import MoMEConfig

AUDIO_DIM, VIDEO_DIM = 16, 12


@pytest.fixture(autouse=True)
def ctrl_c_left_working():
    """A test that runs the CLI in-process must leave SIGINT as it found it: an ignored SIGINT would stay ignored in
    this process and in every process a later test starts (they inherit it), whose Ctrl-C tests would then hang."""
    before = signal.getsignal(signal.SIGINT)
    yield
    assert signal.getsignal(signal.SIGINT) is before, "this test left SIGINT's handler changed"


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


# File names face-alignment 1.5.0 looks for in $TORCH_HOME/hub/checkpoints (the basenames of its download URLs).
FAN_FILE = "2DFAN4-11f355bf06.pth.tar"
SFD_FILE = "s3fd-619a316812.pth"
BLAZEFACE_FILE, BLAZEFACE_ANCHORS = "blazeface.pth", "anchors.npy"


# -- face-alignment with random weights ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torch_home(tmp_path_factory):
    """A TORCH_HOME whose hub cache holds face-alignment's networks with random weights, in its own formats: plain
    state dicts saved by torch.save. The detectors' score heads are set to find no face anywhere."""
    from face_alignment.detection.blazeface.net_blazeface import BlazeFace
    from face_alignment.detection.sfd.net_s3fd import s3fd
    from face_alignment.models import FAN

    home = tmp_path_factory.mktemp("torch_home")
    checkpoints = home / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(FAN(4).state_dict(), checkpoints / FAN_FILE)  # 2DFAN-4: 4 stacked hourglasses

    sfd = s3fd()
    with torch.no_grad():
        for name, module in sfd.named_modules():
            if name.endswith("_mbox_conf"):  # class scores: background wins everywhere
                module.weight.zero_()
                module.bias.fill_(10.0)
                module.bias[-1] = -10.0
    torch.save(sfd.state_dict(), checkpoints / SFD_FILE)

    blaze = BlazeFace()
    with torch.no_grad():
        for module in (blaze.classifier_8, blaze.classifier_16):
            module.weight.zero_()
            module.bias.fill_(-100.0)  # sigmoid(-100): no face
    torch.save(blaze.state_dict(), checkpoints / BLAZEFACE_FILE)
    np.save(checkpoints / BLAZEFACE_ANCHORS, np.random.default_rng(0).uniform(0.1, 0.9, (896, 4)).astype(np.float32))
    return home


class FakeDetector:
    """Stands in for LandmarkDetector: the same landmarks every frame, NaN in the frames listed as missing."""

    def __init__(self, points, missing=()):
        self.points, self.missing = points, set(missing)
        self.trackers = []  # the FaceTracker given with each call

    def detect(self, frames, batch_size=16, boxes=None, tracker=None, stop=None):
        check_stop(stop)
        self.trackers.append(tracker)
        out = np.repeat(self.points[None].astype(np.float32), len(frames), axis=0)
        out[list(self.missing)] = np.nan
        return out


def wait_for(condition, seconds: float = 10.0) -> None:
    """Until condition() holds, failing after `seconds`: for what another thread is to do."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
