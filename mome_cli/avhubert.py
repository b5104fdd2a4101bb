"""AV-HuBERT Large's video encoder in plain PyTorch, loaded from the official fairseq checkpoint without fairseq.

Lips in, features out, one per frame: (B, T, 88, 88) mouth crops at 25 fps, already normalised by the media stage
((x / 255 - 0.421) / 0.165), give (B, T, D) features at 25 Hz. The path is the official one for video-only input:

    frames -> 3-D conv stem -> ResNet-18 trunk per frame -> (B, T, 512) -> Linear -> video (B, T, D)
    [zeros (B, T, D) for the audio | video] -> LayerNorm(2D) -> Linear(2D, D)
    -> x + GELU(conv positional embedding(x)) -> pre-LN transformer layers -> LayerNorm -> (B, T, D)

Clips of a batch may differ in length: padded frames are zeroed before every step that mixes frames (the stem's
temporal kernel, the positional convolution) and masked as attention keys, so a clip gives the same features alone or
in a batch. Padded output frames are zero.

Checkpoints are read with torch's weights-only unpickler. The non-tensor objects a fairseq checkpoint holds (omegaconf
configs, argparse.Namespace, fairseq Dictionary, numpy scalars) are rebuilt as small stand-ins of ours that only keep
their pickled state as data; any other global (os.system, builtins.eval, ...) is refused before anything is read.
A file that is no checkpoint at all (empty, cut short, an error page saved in its place) is said to be that, not
refused: it is a wrong file, not a malicious one.

Notation for shapes: B clips, T frames, H x W crop, C channels, D encoder width (1024), F FFN width, h heads.

What was verified, and where (public sources, read; no code copied):
- facebookresearch/av_hubert avhubert/resnet.py: ResEncoder = `frontend3D` Sequential(Conv3d(1, 64, (5, 7, 7),
  stride (1, 2, 2), padding (2, 3, 3), bias=False), BatchNorm3d(64), PReLU(64) [relu_type prelu], MaxPool3d((1, 3, 3),
  (1, 2, 2), (0, 1, 1))) then `trunk` = ResNet(BasicBlock, [2, 2, 2, 2]) with layer1..layer4 (64/128/256/512, stride
  1/2/2/2), AdaptiveAvgPool2d(1), no stem conv of its own. BasicBlock: conv1 (3x3, stride, no bias), bn1, relu1, conv2
  (3x3), bn2, downsample added, relu2; relu1/relu2 are PReLU(planes). downsample = Sequential(Conv2d 1x1 stride s, no
  bias; BatchNorm2d) when stride != 1 or width changes (so layer2..4 block 0 only); `avg_pool_downsample` is off by
  default. The trunk runs on (B*T, 64, H', W') frames, output (B, 512, T).
- av_hubert avhubert/hubert.py: SubModel(resnet, proj = Linear(512, encoder_embed_dim), encoder=None because
  sub_encoder_layers = 0) as `feature_extractor_video`, and `feature_extractor_audio` = SubModel(proj = Linear(104, D)).
  modality_fuse 'concat': `torch.cat([audio, video], dim=1)` - audio first. With video only (extract_finetune) the audio
  features are `new_zeros(B, D, T)`. Then `layer_norm` = LayerNorm(2D) -> `post_extract_proj` Linear(2D, D) ->
  `encoder` (fairseq wav2vec2 TransformerEncoder). Other parameters: `mask_emb` (audio_feat_dim,), `final_proj`
  Linear(D, final_dim x labels when untie_final_proj), `label_embs_concat` (classes, final_dim) when dictionaries exist;
  `target_glu` only when cfg.target_glu (off). The model does not normalise its input: hubert_dataset.py scales by 255
  and normalises with image_mean 0.421 / image_std 0.165 (hubert_pretraining.py defaults), centre crop 88.
- av_hubert avhubert/conf/pretrain/large_vox_iter5.yaml: encoder_layers 24, encoder_embed_dim 1024, ffn 4096, heads 16,
  layer_norm_first true, audio_feat_dim 104, final_dim 256, untie_final_proj true, labels ["km"], modality_fuse concat,
  masking_type input, fp16 true (so the stored weights may be half precision; they are copied into float32 here).
  conv_pos 128 / conv_pos_groups 16 / resnet_relu_type prelu / activation gelu are hubert.py defaults.
- facebookresearch/fairseq fairseq/models/wav2vec/wav2vec2.py: TransformerEncoder.pos_conv = Sequential(Conv1d(D, D,
  conv_pos, padding conv_pos // 2, groups conv_pos_groups) under nn.utils.weight_norm(name="weight", dim=2), SamePad
  (drops the last frame when the kernel is even), nn.GELU()) -> keys `encoder.pos_conv.0.{bias,weight_g,weight_v}`.
  extract_features zeroes padded frames, adds pos_conv(x), applies `layer_norm` first only when not layer_norm_first;
  forward applies `encoder.layer_norm` after the layers when layer_norm_first. TransformerSentenceEncoderLayer (pre-LN):
  x + self_attn(self_attn_layer_norm(x)), then x + fc2(gelu(fc1(final_layer_norm(x)))). fairseq MultiheadAttention holds
  `k_proj`, `v_proj`, `q_proj`, `out_proj` (all with bias; no bias_k/bias_v), scales q by head_dim ** -0.5.
  fairseq's "gelu" is the exact (erf) GELU; LayerNorm eps 1e-5.
- fairseq checkpoint layout (trainer.state_dict / checkpoint_utils.save_state across versions): top-level "args"
  (argparse.Namespace before hydra, None after), "cfg" (an omegaconf DictConfig in some versions, a plain dict from
  OmegaConf.to_container(..., enum_to_str=True) in later ones), "model" (the state dict), "criterion",
  "optimizer_history" (list of dicts), "task_state" (av_hubert misc/fix_state.py puts fairseq Dictionary objects there),
  "extra_state" (metrics, train_iterator, previous_training_time), optionally "last_optimizer_state".
- torch 2.11 torch/_weights_only_unpickler.py: safe globals may be given as (object, "module.QualName") tuples; GLOBAL
  looks the name up among torch's and the user's allowed globals (modules sys/os/posix/nt are blocked outright); NEWOBJ
  calls cls.__new__(cls, *args) and REDUCE calls func(*args) only for allowed objects; BUILD calls __setstate__ or
  updates __dict__ only on instances of allowed classes; SETITEM(S) only on dict/OrderedDict/Counter.
"""

from __future__ import annotations

import os
import pickle
import re
import struct
import warnings
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import TINY_WIDTH

FRAME_RATE = 25  # video frames per second in, features per second out
CROP_SIZE = 88  # mouth crop side the weights were trained on (other sizes run: the trunk pools globally)
IMAGE_MEAN, IMAGE_STD = 0.421, 0.165  # the media stage's normalisation of [0, 1] grey levels

STEM_KERNEL, STEM_STRIDE, STEM_PADDING = (5, 7, 7), (1, 2, 2), (2, 3, 3)  # (time, height, width): 88 -> 44
POOL_KERNEL, POOL_STRIDE, POOL_PADDING = (1, 3, 3), (1, 2, 2), (0, 1, 1)  # 44 -> 22, each frame on its own


@dataclass(frozen=True)
class AVHubertConfig:
    stem_channels: int = 64  # output channels of the 3-D conv stem (frontend3D)
    stage_channels: tuple[int, ...] = (64, 128, 256, 512)  # trunk width per stage; the last is the per-frame feature
    stage_blocks: tuple[int, ...] = (2, 2, 2, 2)  # BasicBlocks per stage (ResNet-18); stage 1 stride 1, then stride 2
    embed_dim: int = 1024  # D: transformer width, also the width of the zero audio features
    num_layers: int = 24  # pre-LN transformer layers
    num_heads: int = 16  # attention heads per layer
    ffn_dim: int = 4096  # F: hidden width of each layer's feed-forward block
    conv_pos: int = 128  # kernel of the convolutional positional embedding (even: its last output frame is dropped)
    conv_pos_groups: int = 16  # groups of that convolution
    layer_norm_eps: float = 1e-5  # every LayerNorm

    def __post_init__(self):
        for name in ("stage_channels", "stage_blocks"):  # lists from JSON become tuples
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if len(self.stage_channels) != len(self.stage_blocks) or not self.stage_channels:
            raise ValueError(f"stage_channels {self.stage_channels} and stage_blocks {self.stage_blocks} must be "
                             f"non-empty and of the same length")
        for name in ("stem_channels", "embed_dim", "num_layers", "num_heads", "ffn_dim", "conv_pos", "conv_pos_groups"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if min(self.stage_channels) < 1 or min(self.stage_blocks) < 1:
            raise ValueError(f"stage_channels {self.stage_channels} and stage_blocks {self.stage_blocks} must be >= 1")
        if self.embed_dim % self.num_heads:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}")
        if self.embed_dim % self.conv_pos_groups:
            raise ValueError(f"embed_dim {self.embed_dim} is not divisible by conv_pos_groups {self.conv_pos_groups}")
        if self.layer_norm_eps <= 0:
            raise ValueError(f"layer_norm_eps must be > 0, got {self.layer_norm_eps}")

    @classmethod
    def large(cls) -> AVHubertConfig:
        """AV-HuBERT Large, as in large_vox_iter5.pt."""
        return cls()

    @classmethod
    def demo(cls) -> AVHubertConfig:
        """The demo model's small encoder (trained on the synthetic corpus by pretrain.py): one block per stage."""
        return cls(stem_channels=8, stage_channels=(8, 16, 32, 64), stage_blocks=(1, 1, 1, 1), embed_dim=128,
                   num_layers=3, num_heads=4, ffn_dim=512, conv_pos=16, conv_pos_groups=16)

    @classmethod
    def tiny(cls) -> AVHubertConfig:
        """The same structure at toy widths with 2 layers, for tests."""
        return cls(stem_channels=8, stage_channels=(8, 16, 16, 32), embed_dim=TINY_WIDTH, num_layers=2, num_heads=4,
                   ffn_dim=64, conv_pos=8, conv_pos_groups=4)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d) -> AVHubertConfig:
        """From a config.json written by to_dict: every field, each a whole number (a list of them for the stages, a
        number for layer_norm_eps). ValueError naming the field otherwise: a hand-edited or damaged file, which would
        fail later with a TypeError deep in the model's build."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object of {cls.__name__}'s fields, got {type(d).__name__}")
        defaults = asdict(cls())
        unknown, missing = sorted(set(d) - set(defaults)), sorted(set(defaults) - set(d))
        if unknown or missing:
            raise ValueError("; ".join([f"unknown fields {unknown}"] * bool(unknown) + [f"no {', '.join(missing)}"] *
                                       bool(missing)))
        whole = lambda v: isinstance(v, int) and not isinstance(v, bool)  # noqa: E731
        for name, default in defaults.items():
            value = d[name]
            if isinstance(default, tuple):
                fits, kind = isinstance(value, (list, tuple)) and all(map(whole, value)), "a list of whole numbers"
            elif isinstance(default, float):
                fits, kind = whole(value) or isinstance(value, float), "a number"
            else:
                fits, kind = whole(value), "a whole number"
            if not fits:
                raise ValueError(f"{name} must be {kind}, got {value!r}")
        return cls(**d)


# ---------------------------------------------------------------------------------------------------------------------
# The model. Module names follow the fairseq state dict, so loading is a rename of the weight-normed conv only.
# ---------------------------------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block with PReLU: relu2(bn2(conv2(relu1(bn1(conv1(x))))) + downsample(x))."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu1 = nn.PReLU(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.relu2 = nn.PReLU(channels)
        self.downsample = None
        if stride != 1 or in_channels != channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.bn2(self.conv2(x))
        return self.relu2(x + residual)


class ResNetTrunk(nn.Module):
    """The 2-D ResNet run on every frame: (N, C, H', W') -> (N, C_out), global average pooled."""

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        in_channels = config.stem_channels
        for i, (channels, blocks) in enumerate(zip(config.stage_channels, config.stage_blocks)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(in_channels, channels, stride)] + [BasicBlock(channels, channels, 1)
                                                                   for _ in range(blocks - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))  # layer1, layer2, ... as in fairseq
            in_channels = channels
        self.num_stages = len(config.stage_channels)
        self.out_channels = in_channels
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return self.avgpool(x).flatten(1)  # (N, C_out)


class LipResNet(nn.Module):
    """fairseq's ResEncoder: the 3-D conv stem over time, then the trunk frame by frame. (B, T, H, W) -> (B, T, C)."""

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        c = config.stem_channels
        self.frontend3D = nn.Sequential(
            nn.Conv3d(1, c, STEM_KERNEL, stride=STEM_STRIDE, padding=STEM_PADDING, bias=False),
            nn.BatchNorm3d(c),
            nn.PReLU(c),
            nn.MaxPool3d(POOL_KERNEL, stride=POOL_STRIDE, padding=POOL_PADDING),
        )
        self.trunk = ResNetTrunk(config)

    def forward(self, frames: torch.Tensor, pad: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        """real: (N,) indices of the real frames among the B * T, on the device; None when every frame is real.
        (Indices, not the boolean pad: selecting by a mask makes the host wait for the GPU to learn the size.)"""
        B, T, H, W = frames.shape
        if real is not None:
            frames = frames.masked_fill(pad[:, :, None, None], 0.0)  # padded frames look like the stem's zero padding
        x = self.frontend3D(frames.unsqueeze(1))  # (B, C, T, H/4, W/4)
        x = x.transpose(1, 2).flatten(0, 1)  # (B*T, C, H/4, W/4)
        if real is None:
            return self.trunk(x).view(B, T, -1)  # (B, T, C_out)
        out = x.new_zeros(B * T, self.trunk.out_channels)  # (B*T, C_out)
        out.index_copy_(0, real, self.trunk(x.index_select(0, real)))  # each frame alone: padded ones are skipped
        return out.view(B, T, -1)


class VideoFeatureExtractor(nn.Module):
    """fairseq's SubModel for video: LipResNet then a Linear to D. (B, T, H, W) -> (B, T, D)."""

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        self.resnet = LipResNet(config)
        self.proj = nn.Linear(config.stage_channels[-1], config.embed_dim)

    def forward(self, frames: torch.Tensor, pad: torch.Tensor, real: torch.Tensor | None = None) -> torch.Tensor:
        return self.proj(self.resnet(frames, pad, real))


class ConvPositionalEmbedding(nn.Module):
    """GELU(weight-normed grouped Conv1d over time), same length out: (B, T, D) -> (B, T, D).

    The weight stays weight-normalised (g, v) as in fairseq, through torch's parametrization: the checkpoint's
    weight_g / weight_v load as they are and the weight is computed by the same torch._weight_norm fairseq's module
    calls, so outputs match fairseq's exactly rather than up to the rounding of a g * v / |v| folded at load time.
    """

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        D, k = config.embed_dim, config.conv_pos
        conv = nn.Conv1d(D, D, k, padding=k // 2, groups=config.conv_pos_groups)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.drop_last = k % 2 == 0  # an even kernel with padding k // 2 gives T + 1 frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x.transpose(1, 2))  # (B, D, T or T + 1)
        if self.drop_last:
            y = y[:, :, :-1]  # (B, D, T)
        return F.gelu(y).transpose(1, 2)  # (B, T, D)


class SelfAttention(nn.Module):
    """Multi-head self-attention with fairseq's projection names; padded keys are never attended."""

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        D = config.embed_dim
        self.num_heads = config.num_heads
        self.k_proj = nn.Linear(D, D)
        self.v_proj = nn.Linear(D, D)
        self.q_proj = nn.Linear(D, D)
        self.out_proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        B, T, D = x.shape
        h = self.num_heads
        q = self.q_proj(x).view(B, T, h, D // h).transpose(1, 2)  # (B, h, T, D/h)
        k = self.k_proj(x).view(B, T, h, D // h).transpose(1, 2)  # (B, h, T, D/h)
        v = self.v_proj(x).view(B, T, h, D // h).transpose(1, 2)  # (B, h, T, D/h)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)  # (B, h, T, D/h), scale (D/h) ** -0.5
        return self.out_proj(out.transpose(1, 2).reshape(B, T, D))  # (B, T, D)


class EncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(LN(x)), then x + fc2(GELU(fc1(LN(x))))."""

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        D, eps = config.embed_dim, config.layer_norm_eps
        self.self_attn = SelfAttention(config)
        self.self_attn_layer_norm = nn.LayerNorm(D, eps=eps)
        self.fc1 = nn.Linear(D, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, D)
        self.final_layer_norm = nn.LayerNorm(D, eps=eps)

    def forward(self, x: torch.Tensor, attend: torch.Tensor | None) -> torch.Tensor:
        x = x + self.self_attn(self.self_attn_layer_norm(x), attend)
        return x + self.fc2(F.gelu(self.fc1(self.final_layer_norm(x))))


class TransformerEncoder(nn.Module):
    """fairseq wav2vec2 TransformerEncoder with layer_norm_first: positional conv, layers, final LayerNorm."""

    def __init__(self, config: AVHubertConfig):
        super().__init__()
        self.pos_conv = ConvPositionalEmbedding(config)
        self.layers = nn.ModuleList(EncoderLayer(config) for _ in range(config.num_layers))
        self.layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, pad: torch.Tensor, padded: bool | None = None) -> torch.Tensor:
        """padded: whether pad has any True (None: look, a host sync on a GPU)."""
        padded = bool(pad.any()) if padded is None else padded
        if padded:
            x = x.masked_fill(pad.unsqueeze(-1), 0.0)  # (B, T, D): padding must look like the conv's zero padding
        x = x + self.pos_conv(x)
        attend = ~pad[:, None, None, :] if padded else None  # (B, 1, 1, T): the keys every query may see
        for layer in self.layers:
            x = layer(x, attend)
        return self.layer_norm(x)


def _queued(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on device, the copy queued like a kernel (from pinned memory) instead of waiting for the GPU."""
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


class AVHubertVideoEncoder(nn.Module):
    """(B, T, H, W) normalised mouth crops at 25 fps -> (B, T, D) AV-HuBERT features at 25 Hz, and lengths (B,)."""

    def __init__(self, config: AVHubertConfig | None = None):
        super().__init__()
        self.config = config = config or AVHubertConfig.large()
        D = config.embed_dim
        self.feature_extractor_video = VideoFeatureExtractor(config)
        self.layer_norm = nn.LayerNorm(2 * D, eps=config.layer_norm_eps)  # over [audio | video]
        self.post_extract_proj = nn.Linear(2 * D, D)
        self.encoder = TransformerEncoder(config)

    @property
    def dim(self) -> int:
        return self.config.embed_dim

    def forward(self, frames: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if frames.dim() != 4:
            raise ValueError(f"frames must be (B, T, H, W), got shape {tuple(frames.shape)}")
        B, T, H, W = frames.shape
        if lengths is None:
            lengths = torch.full((B,), T, dtype=torch.long)
        # Checked on the host (lengths usually come from there): on a GPU, a look at device values waits for them.
        host = lengths.to(device="cpu", dtype=torch.long)
        if host.shape != (B,) or int(host.min()) < 1 or int(host.max()) > T:
            raise ValueError(f"lengths must be (B,) = ({B},) with values in 1..{T}, got {host.tolist()}")
        padded = int(host.min()) < T  # some clip is shorter than the batch: masks are needed
        pad = torch.arange(T) >= host.unsqueeze(1)  # (B, T): True on padding
        real = (~pad).flatten().nonzero().squeeze(1) if padded else None  # (N,) flat indices of the real frames
        pad, real = _queued(pad, frames.device), (_queued(real, frames.device) if padded else None)
        frames = frames.to(self.post_extract_proj.weight.dtype)
        video = self.feature_extractor_video(frames, pad, real)  # (B, T, D)
        audio = torch.zeros_like(video)  # video only: fairseq fills the audio features with zeros
        x = self.layer_norm(torch.cat([audio, video], dim=-1))  # (B, T, 2D): audio first, as fairseq concatenates
        x = self.post_extract_proj(x)  # (B, T, D)
        x = self.encoder(x, pad, padded)  # (B, T, D)
        return (x.masked_fill(pad.unsqueeze(-1), 0.0) if padded else x), host  # (B, T, D), (B,) on the host


# ---------------------------------------------------------------------------------------------------------------------
# Reading fairseq checkpoints without fairseq and without running their pickles.
# ---------------------------------------------------------------------------------------------------------------------


class AVHubertCheckpointError(Exception):
    """A file that is not a usable AV-HuBERT checkpoint."""


class CheckpointRefused(AVHubertCheckpointError):
    """The checkpoint's pickle names a global outside our allowlist; nothing in it was run."""


class CheckpointMismatch(AVHubertCheckpointError):
    """The checkpoint's keys, shapes or architecture do not fit the config."""


class CheckpointUnreadable(AVHubertCheckpointError):
    """A file torch cannot read as a checkpoint at all: empty, cut short, or another kind of file."""


class _StandIn:
    """An object of a class we do not import, kept as the plain data its pickle holds (args and state)."""

    def __new__(cls, *args):  # NEWOBJ calls cls.__new__(cls, *args); REDUCE calls cls(*args)
        self = super().__new__(cls)
        self.args, self.state = args, None
        return self

    def __setstate__(self, state):  # BUILD
        self.state = state

    def fields(self) -> dict:
        """The pickled instance dict without omegaconf's bookkeeping (parents, metadata, caches)."""
        state = self.state[0] if isinstance(self.state, tuple) else self.state  # (dict, slots) form
        return {k: v for k, v in (state or {}).items() if not k.startswith("_")}

    def plain(self):
        return {k: _plain(v) for k, v in self.fields().items()}


class _OmegaConfContainer(_StandIn):
    """omegaconf DictConfig / ListConfig: its nodes are in state["_content"] (a dict, a list, or None / '???')."""

    def plain(self):
        content = (self.state or {}).get("_content")
        if isinstance(content, dict):
            return {k: _plain(v) for k, v in content.items()}
        if isinstance(content, list):
            return [_plain(v) for v in content]
        return content


class _OmegaConfValue(_StandIn):
    """omegaconf AnyNode, StringNode, ...: the value is state["_val"]."""

    def plain(self):
        return _plain((self.state or {}).get("_val"))


class _NumpyDtype(_StandIn):
    """numpy.dtype('f8', False, True) with state (version, byte order, ...)."""

    def struct_format(self) -> str | None:
        order = self.state[1] if isinstance(self.state, tuple) and len(self.state) > 1 else "<"
        code = {"f2": "e", "f4": "f", "f8": "d", "i1": "b", "i2": "h", "i4": "i", "i8": "q", "u1": "B", "u2": "H",
                "u4": "I", "u8": "Q", "b1": "?"}.get(str(self.args[0]) if self.args else "")
        return None if code is None else {">": ">", "|": "<", "=": "="}.get(order, "<") + code


class _NumpyScalar(_StandIn):
    """numpy.core.multiarray.scalar(dtype, raw bytes): decoded with struct for plain number types."""

    def plain(self):
        dtype, raw = (self.args + (None, None))[:2]
        fmt = dtype.struct_format() if isinstance(dtype, _NumpyDtype) else None
        if fmt is None or not isinstance(raw, bytes) or struct.calcsize(fmt) != len(raw):
            return self
        return struct.unpack(fmt, raw)[0]


class _TypeName:
    """A type that appears only as a value in a pickle (typing.Any, builtins.dict as an omegaconf ref_type)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self):
        return self.name


def _plain_defaultdict(default_factory=None, *rest):
    """collections.defaultdict(factory) -> a plain dict; its items arrive afterwards through SETITEMS."""
    return {}


# Every global a fairseq checkpoint may name, and what stands in for it. Nothing else is let through.
_SAFE_GLOBALS = {
    "omegaconf.dictconfig.DictConfig": _OmegaConfContainer,
    "omegaconf.listconfig.ListConfig": _OmegaConfContainer,
    **{f"omegaconf.nodes.{c}": _OmegaConfValue
       for c in ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode", "BytesNode", "PathNode")},
    "omegaconf.base.Metadata": type("Metadata", (_StandIn,), {}),
    "omegaconf.base.ContainerMetadata": type("ContainerMetadata", (_StandIn,), {}),
    "argparse.Namespace": type("Namespace", (_StandIn,), {}),
    "fairseq.data.dictionary.Dictionary": type("Dictionary", (_StandIn,), {}),
    "collections.defaultdict": _plain_defaultdict,
    "numpy.dtype": _NumpyDtype,
    "numpy.core.multiarray.scalar": _NumpyScalar,  # numpy 1.x
    "numpy._core.multiarray.scalar": _NumpyScalar,  # numpy 2.x
    **{name: _TypeName(name) for name in ("typing.Any", "builtins.object", "builtins.dict", "builtins.list",
                                          "builtins.tuple", "builtins.str", "builtins.int", "builtins.float",
                                          "builtins.bool", "builtins.bytes")},
}


def _plain(obj):
    """Stand-ins -> dicts, lists and numbers, all the way down; tensors and other data unchanged."""
    if isinstance(obj, _StandIn):
        return obj.plain()
    if isinstance(obj, _TypeName):
        return obj.name
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_plain(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_plain(v) for v in obj)
    return obj


def _not_a_torch_file(path: str) -> str | None:
    """What is wrong with a file read as a torch checkpoint, judged by its first bytes; None if it starts as one
    does (torch.save's zip archive, or a pickle for the legacy format). torch's own errors for other files are no
    help: an empty EOFError, which Click takes for Ctrl-D, an opcode number, a KeyError from inside its unpickler."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"cannot be read: {e.strerror or e}"
    if head.startswith((b"PK\x03\x04", b"\x80")):
        return None
    if not head:
        return "not a PyTorch checkpoint: the file is empty"
    if head.lstrip().startswith(b"<"):
        return "not a PyTorch checkpoint: an HTML or XML page (an error page saved in its place?)"
    return "not a PyTorch checkpoint: it starts as neither torch.save's zip archive nor a pickle"


# What torch raises for bytes it cannot read as a checkpoint: its unpickler's error, EOFError, RuntimeError or OSError
# (a zip archive cut short, a legacy file's magic number), and for a legacy pickle cut short or garbled, whatever the
# opcode at that point raises. Caught around its calls that read the file, and nowhere else.
_UNREADABLE = (pickle.UnpicklingError, EOFError, RuntimeError, OSError, struct.error, KeyError, IndexError, ValueError)


def _reason(error: Exception) -> str:
    """torch's reason for a file it cannot load, in a few words: the first sentence of its message (for the
    unpickler's, the one after its paragraph on weights_only)."""
    found = re.search(r"WeightsUnpickler error:\s*([^\n]+)", str(error))
    if found:
        text = found.group(1)
    elif isinstance(error, (pickle.UnpicklingError, EOFError, RuntimeError)):
        text = str(error)
    elif isinstance(error, OSError):  # torch's zip reader on an archive cut short
        text = f"its zip archive cannot be read ({error.strerror or error})"
    else:  # raised by an opcode's own code: the pickle is cut short or garbled there
        text = f"a garbled pickle ({type(error).__name__}: {error})"
    return " ".join(text.split()).split(". ")[0] or "it ends too soon"  # an empty EOFError: nothing left to read


def read_fairseq_checkpoint(path: str | os.PathLike) -> dict:
    """A fairseq checkpoint as plain data ("model" a state dict, "cfg"/"args" nested dicts), read weights-only.

    Raises CheckpointRefused when the pickle names any global outside _SAFE_GLOBALS (checked before loading, and the
    weights-only unpickler enforces the same list while loading), CheckpointUnreadable for a file torch cannot read
    as a checkpoint (empty, cut short, an error page, another program's pickle).
    """
    path = os.fspath(path)
    problem = _not_a_torch_file(path)
    if problem:
        raise CheckpointUnreadable(f"{path}: {problem}")
    allowed = [(stand_in, name) for name, stand_in in _SAFE_GLOBALS.items()]
    with torch.serialization.safe_globals(allowed):
        try:
            unsafe = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except _UNREADABLE:
            unsafe = []  # not a zip checkpoint, or unreadable here: the weights-only load below still guards it
        if unsafe:
            raise CheckpointRefused(f"refusing {path}: its pickle names {', '.join(unsafe)}, which is not a tensor nor "
                                    f"a config class a fairseq checkpoint holds; nothing was loaded")
        try:
            with warnings.catch_warnings():  # a pickle of another protocol is said below, as what it is
                warnings.filterwarnings("ignore", "Detected pickle protocol", UserWarning)
                checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        except _UNREADABLE as e:
            # module.name: a legacy pickle cut short inside a name stops at it too, and that is no refusal
            found = re.search(r"GLOBAL (\w[\w.]*\.\w+)\b", str(e)) if isinstance(e, pickle.UnpicklingError) else None
            if found:  # it asks for something to import (a function to run, perhaps): refused, never run
                raise CheckpointRefused(f"refusing {path}: its pickle names {found.group(1)}, which is not a tensor "
                                        f"nor a config class a fairseq checkpoint holds; nothing was loaded") from None
            # data torch.save does not write (a pickle of something else), or a file cut short: not malice
            raise CheckpointUnreadable(f"{path}: not a PyTorch checkpoint, or a damaged one: {_reason(e)}") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("model"), dict):
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise CheckpointMismatch(f"{path} is not a fairseq checkpoint: no 'model' state dict (found {keys})")
    return _plain(checkpoint)


# Official keys the video encoder does not use, dropped on purpose (large_vox_iter5.pt shapes in brackets).
UNUSED_FAIRSEQ_KEYS = (
    "feature_extractor_audio.proj.weight",  # [1024, 104] audio front end: 26 log-filterbanks x 4 stacked frames -> D
    "feature_extractor_audio.proj.bias",  # [1024]
    "mask_emb",  # [104] learned filler for masked audio input during pre-training
    "final_proj.weight",  # [256, 1024] projection to the k-means target space (untied: 256 x one label set)
    "final_proj.bias",  # [256]
    "label_embs_concat",  # [clusters, 256] embeddings of the k-means cluster targets
)

# Our names for fairseq's weight-normed positional conv. Newer fairseq / torch write the parametrization spelling.
_POS_CONV = "encoder.pos_conv.conv."
_FAIRSEQ_TO_OURS = {
    "encoder.pos_conv.0.bias": _POS_CONV + "bias",
    "encoder.pos_conv.0.weight_g": _POS_CONV + "parametrizations.weight.original0",
    "encoder.pos_conv.0.weight_v": _POS_CONV + "parametrizations.weight.original1",
    "encoder.pos_conv.0.parametrizations.weight.original0": _POS_CONV + "parametrizations.weight.original0",
    "encoder.pos_conv.0.parametrizations.weight.original1": _POS_CONV + "parametrizations.weight.original1",
}
_OURS_TO_FAIRSEQ = {ours: fs for fs, ours in reversed(_FAIRSEQ_TO_OURS.items())}  # errors use fairseq's usual names


def _expected_shapes(config: AVHubertConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):
        model = AVHubertVideoEncoder(config)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _some(items: list, most: int = 5) -> str:
    """The first few of a list, and how many there are in all: a file of other weights misses hundreds of keys."""
    if not items:
        return "none"
    return str(items[:most]) + (f" and {len(items) - most} more" if len(items) > most else "")


def convert_fairseq_state_dict(state_dict: dict, config: AVHubertConfig) -> dict[str, torch.Tensor]:
    """fairseq AV-HuBERT state dict -> AVHubertVideoEncoder's, checked key by key and shape by shape."""
    keys = set(state_dict)
    if any(k.startswith("encoder.w2v_model.") for k in keys):
        raise CheckpointMismatch("this is a fine-tuned AV-HuBERT (keys encoder.w2v_model.*); load the self-supervised "
                                 "checkpoint (large_vox_iter5.pt)")
    converted = {_FAIRSEQ_TO_OURS.get(k, k): v for k, v in state_dict.items() if k not in UNUSED_FAIRSEQ_KEYS}
    expected = _expected_shapes(config)
    missing = [_OURS_TO_FAIRSEQ.get(k, k) for k in expected if k not in converted]
    unexpected = sorted(k for k in keys if k not in UNUSED_FAIRSEQ_KEYS and _FAIRSEQ_TO_OURS.get(k, k) not in expected)
    if missing or unexpected:
        raise CheckpointMismatch(f"checkpoint does not fit the AV-HuBERT video encoder: missing {_some(missing)}; "
                                 f"unexpected {_some(unexpected)}")
    wrong = [f"{_OURS_TO_FAIRSEQ.get(k, k)} {tuple(converted[k].shape)} vs {shape}" for k, shape in expected.items()
             if tuple(converted[k].shape) != shape]
    if wrong:
        raise CheckpointMismatch(f"checkpoint shapes differ from the config (checkpoint vs model): "
                                 f"{'; '.join(wrong[:5])}{f' and {len(wrong) - 5} more' if len(wrong) > 5 else ''}")
    return converted


# fairseq cfg.model fields that the state dict's shapes cannot show, and the values this implementation assumes.
_CONFIG_FIELDS = {"encoder_layers": "num_layers", "encoder_embed_dim": "embed_dim", "encoder_ffn_embed_dim": "ffn_dim",
                  "encoder_attention_heads": "num_heads", "conv_pos": "conv_pos", "conv_pos_groups": "conv_pos_groups"}
_FIXED_FIELDS = {"layer_norm_first": True, "modality_fuse": "concat", "resnet_relu_type": "prelu",
                 "sub_encoder_layers": 0, "activation_fn": "gelu"}


def check_architecture(checkpoint: dict, config: AVHubertConfig) -> None:
    """Compare the checkpoint's own model config (cfg.model, or legacy args) with ours; fields it lacks are skipped."""
    cfg = checkpoint.get("cfg")
    model_cfg = cfg.get("model") if isinstance(cfg, dict) else None
    if not isinstance(model_cfg, dict):
        model_cfg = checkpoint.get("args") if isinstance(checkpoint.get("args"), dict) else {}
    wanted = {fs: getattr(config, ours) for fs, ours in _CONFIG_FIELDS.items()} | _FIXED_FIELDS
    wrong = [f"{k}={model_cfg[k]!r} (expected {v!r})" for k, v in wanted.items()
             if k in model_cfg and model_cfg[k] != v]
    if wrong:
        raise CheckpointMismatch(f"checkpoint model config differs from {config}: {', '.join(wrong)}")


NATIVE_CONFIG, NATIVE_WEIGHTS = "config.json", "model.safetensors"  # a folder written by save_avhubert


def save_avhubert(model: AVHubertVideoEncoder, directory: str | os.PathLike) -> None:
    """Our own format, for encoders trained here: config.json + model.safetensors, each written atomically."""
    import json
    from pathlib import Path

    from safetensors.torch import save_file

    from .files import atomic_write, atomic_write_text

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write(Path(directory) / NATIVE_WEIGHTS, lambda tmp: save_file(tensors, tmp, metadata={"format": "pt"}))
    atomic_write_text(Path(directory) / NATIVE_CONFIG, json.dumps(model.config.to_dict(), indent=2) + "\n")


def _load_native(directory: str) -> AVHubertVideoEncoder:
    """A folder written by save_avhubert; CheckpointUnreadable or CheckpointMismatch, naming the file, for one that
    lacks a file, holds one that cannot be read, or a config its tensors do not fit."""
    import json

    from safetensors import SafetensorError
    from safetensors.torch import load_file

    config_path, weights_path = os.path.join(directory, NATIVE_CONFIG), os.path.join(directory, NATIVE_WEIGHTS)
    for path in (config_path, weights_path):
        if not os.path.isfile(path):
            raise CheckpointUnreadable(f"{directory}: not an AV-HuBERT encoder folder (no {os.path.basename(path)})")
    try:
        with open(config_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise CheckpointUnreadable(f"{config_path}: unreadable ({e})") from e
    try:
        config = AVHubertConfig.from_dict(data)
    except ValueError as e:
        raise CheckpointMismatch(f"{config_path}: not an AV-HuBERT config: {e}") from e
    try:
        state = load_file(weights_path)
    except (OSError, SafetensorError) as e:
        raise CheckpointUnreadable(f"{weights_path}: unreadable ({e})") from e
    model = AVHubertVideoEncoder(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != expected[k])
    if missing or unexpected or wrong:
        raise CheckpointMismatch(f"{weights_path}: tensors do not fit {config} (missing {missing[:5]}, unexpected "
                                 f"{unexpected[:5]}, wrong shape {wrong[:5]})")
    model.load_state_dict(state)
    return model.eval().requires_grad_(False)


def load_avhubert(path: str | os.PathLike, config: AVHubertConfig = AVHubertConfig.large()) -> AVHubertVideoEncoder:
    """The video encoder, in float32, eval mode, every parameter frozen: from an official AV-HuBERT checkpoint (a
    fairseq .pt file of `config`'s shape), or from a folder written by save_avhubert (its own config)."""
    if os.path.isdir(path):
        return _load_native(os.fspath(path))
    checkpoint = read_fairseq_checkpoint(path)
    try:
        check_architecture(checkpoint, config)
        state = convert_fairseq_state_dict(checkpoint["model"], config)
    except CheckpointMismatch as e:  # said of the file, which these two do not know
        raise CheckpointMismatch(f"{os.fspath(path)}: {e}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}  # fp16-trained weights
    with torch.device("meta"):
        model = AVHubertVideoEncoder(config)  # no random init of ~300M parameters only to overwrite them
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


__all__ = ["FRAME_RATE", "CROP_SIZE", "IMAGE_MEAN", "IMAGE_STD", "AVHubertConfig", "BasicBlock", "ResNetTrunk",
           "LipResNet", "VideoFeatureExtractor", "ConvPositionalEmbedding", "SelfAttention", "EncoderLayer",
           "TransformerEncoder", "AVHubertVideoEncoder", "AVHubertCheckpointError", "CheckpointRefused",
           "CheckpointMismatch", "CheckpointUnreadable", "read_fairseq_checkpoint", "UNUSED_FAIRSEQ_KEYS",
           "convert_fairseq_state_dict", "check_architecture", "load_avhubert", "save_avhubert"]
