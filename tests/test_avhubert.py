"""AV-HuBERT video encoder: shapes, padding invariance, and loading fairseq checkpoints written here in the official
layout (omegaconf cfg, fairseq Dictionary, numpy metrics, fp16 weights) without fairseq; malicious pickles refused."""

import argparse
import dataclasses
import os
import subprocess
import sys
import types
import typing
from collections import OrderedDict, defaultdict

import numpy as np
import pytest
import torch

from mome_cli.avhubert import (
    AVHubertConfig,
    AVHubertVideoEncoder,
    CheckpointMismatch,
    CheckpointRefused,
    load_avhubert,
    read_fairseq_checkpoint,
)

TINY = AVHubertConfig.tiny()


def tiny_encoder(seed: int = 0) -> AVHubertVideoEncoder:
    """The tiny encoder with every parameter and BatchNorm statistic random, so a wrong mapping shows."""
    torch.manual_seed(seed)
    model = AVHubertVideoEncoder(TINY).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.5 if p.dim() == 1 else 0.2))
        for name, b in model.named_buffers():
            if name.endswith("running_mean"):
                b.copy_(torch.randn_like(b) * 0.1)
            elif name.endswith("running_var"):
                b.copy_(torch.rand_like(b) + 0.5)
    return model


def frames(B: int, T: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(B, T, 88, 88, generator=torch.Generator().manual_seed(seed))


# --- the model ------------------------------------------------------------------------------------------------------


def test_shapes_keep_25_hz():
    x, lengths = tiny_encoder()(frames(2, 7))
    assert x.shape == (2, 7, TINY.embed_dim)
    assert lengths.tolist() == [7, 7]
    assert torch.isfinite(x).all()


def test_padded_batch_equals_each_clip_alone():
    model = tiny_encoder()
    lengths = torch.tensor([9, 5, 2])
    batch = frames(3, 9, seed=1)
    batch[1, 5:] = 7.0  # whatever sits in the padding must not matter
    batch[2, 2:] = -3.0
    with torch.no_grad():
        x, out_lengths = model(batch, lengths)
        for i, n in enumerate(lengths.tolist()):
            alone, _ = model(batch[i : i + 1, :n])
            torch.testing.assert_close(x[i : i + 1, :n], alone, atol=1e-5, rtol=1e-5)
            assert (x[i, n:] == 0).all()
    assert out_lengths.tolist() == [9, 5, 2]


@pytest.mark.parametrize("bad, words", [
    (dict(embed_dim=30, num_heads=4), ["30", "4"]),
    (dict(stage_channels=(8, 16), stage_blocks=(2, 2, 2)), ["(8, 16)", "(2, 2, 2)"]),
    (dict(num_layers=0), ["num_layers", "0"]),
    (dict(conv_pos_groups=5), ["conv_pos_groups", "5"]),
])
def test_config_rejects_impossible_values(bad, words):
    with pytest.raises(ValueError) as e:
        dataclasses.replace(TINY, **bad)
    assert all(w in str(e.value) for w in words), str(e.value)


def test_a_batch_padded_or_not_reads_no_value_back_from_the_device():
    """On a GPU, a look at a device value from the host (a length check, a mask's any(), boolean indexing) waits for
    all the work before it. On the meta device, which holds shapes and no values, each of those raises: the encoder
    runs there with lengths given on the host, as the recognizer gives them (equal, or padding the second clip), and
    without them."""
    with torch.device("meta"):
        model = AVHubertVideoEncoder(TINY).eval()
        batch = torch.empty(2, 7, 88, 88)
    with torch.no_grad():
        for lengths in (torch.tensor([7, 7]), torch.tensor([7, 4]), None):
            x, out_lengths = model(batch, lengths)
            assert x.shape == (2, 7, TINY.embed_dim) and x.device.type == "meta"
            assert out_lengths.tolist() == (lengths.tolist() if lengths is not None else [7, 7])  # on the host


def test_bad_lengths_are_rejected():
    with pytest.raises(ValueError, match="lengths"):
        tiny_encoder()(frames(2, 4), torch.tensor([4, 5]))


def test_large_parameter_count_from_the_architecture():
    cfg = AVHubertConfig.large()
    with torch.device("meta"):
        model = AVHubertVideoEncoder(cfg)

    def conv(cin, cout, k):
        return cin * cout * k

    def bn(c):  # weight and bias; running statistics are buffers
        return 2 * c

    def block(cin, cout):  # conv1, bn1, PReLU, conv2, bn2, PReLU, optional 1x1 downsample + bn
        down = conv(cin, cout, 1) + bn(cout) if cin != cout else 0
        return conv(cin, cout, 9) + bn(cout) + cout + conv(cout, cout, 9) + bn(cout) + cout + down

    stem = conv(1, 64, 5 * 7 * 7) + bn(64) + 64
    trunk = sum(block(cin, cout) + block(cout, cout) for cin, cout in [(64, 64), (64, 128), (128, 256), (256, 512)])
    D, F = 1024, 4096
    front = 512 * D + D + 2 * (2 * D) + 2 * D * D + D  # proj, LayerNorm(2D), post_extract_proj
    pos_conv = D * (D // 16) * 128 + 128 + D  # v, g (one per kernel tap with dim=2), bias
    layer = 4 * (D * D + D) + 2 * (2 * D) + (D * F + F) + (F * D + D)
    expected = stem + trunk + front + pos_conv + 24 * layer + 2 * D
    assert sum(p.numel() for p in model.parameters()) == expected
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["feature_extractor_video.resnet.frontend3D.0.weight"] == (64, 1, 5, 7, 7)
    assert shapes["feature_extractor_video.resnet.trunk.layer4.0.downsample.0.weight"] == (512, 256, 1, 1)
    assert shapes["feature_extractor_video.proj.weight"] == (D, 512)
    assert shapes["layer_norm.weight"] == (2 * D,) and shapes["post_extract_proj.weight"] == (D, 2 * D)
    assert shapes["encoder.pos_conv.conv.parametrizations.weight.original0"] == (1, 1, 128)  # fairseq weight_g
    assert shapes["encoder.pos_conv.conv.parametrizations.weight.original1"] == (D, D // 16, 128)  # weight_v
    assert shapes["encoder.layers.23.fc1.weight"] == (F, D) and "encoder.layers.24.fc1.weight" not in shapes
    assert expected == 324_515_456  # ~325M, the size published for AV-HuBERT Large with its small audio/target heads


# --- a fairseq checkpoint written the way fairseq writes it ----------------------------------------------------------


def _as_module(monkeypatch, module: str, **objects):
    """Put objects in a fresh module at `module` (parents made if absent) so pickle records that path, as for the
    real classes; monkeypatch takes it all away after the test."""
    parts = module.split(".")
    for i in range(1, len(parts)):
        parent = ".".join(parts[:i])
        if parent not in sys.modules:
            monkeypatch.setitem(sys.modules, parent, types.ModuleType(parent))
    mod = types.ModuleType(module)
    monkeypatch.setitem(sys.modules, module, mod)
    for qualname, obj in objects.items():
        obj.__module__, obj.__qualname__, obj.__name__ = module, qualname, qualname
        setattr(mod, qualname, obj)


@pytest.fixture
def fairseq_classes(monkeypatch):
    """Throwaway classes shaped like omegaconf 2.0's and fairseq's, registered under their real module paths."""

    @dataclasses.dataclass
    class Metadata:
        ref_type: typing.Any
        object_type: typing.Any
        optional: bool
        key: typing.Any
        flags: dict = dataclasses.field(default_factory=dict)
        resolver_cache: dict = dataclasses.field(default_factory=lambda: defaultdict(dict, {"env": {}}))

    @dataclasses.dataclass
    class ContainerMetadata(Metadata):
        key_type: typing.Any = None
        element_type: typing.Any = None

    class AnyNode:
        def __init__(self, value, key, parent):
            self.__dict__.update(_metadata=Metadata(typing.Any, None, True, key), _parent=parent, _val=value)

    class DictConfig:
        def __init__(self, content: dict, key=None, parent=None):
            meta = ContainerMetadata(typing.Any, dict, True, key, key_type=typing.Any, element_type=typing.Any)
            nodes = {k: wrap(v, k, self) for k, v in content.items()}
            self.__dict__.update(_metadata=meta, _parent=parent, _content=nodes)

        def __getstate__(self):  # as omegaconf's containers
            return self.__dict__

    class ListConfig(DictConfig):
        def __init__(self, content: list, key=None, parent=None):
            meta = ContainerMetadata(typing.Any, list, True, key, key_type=int, element_type=typing.Any)
            nodes = [wrap(v, i, self) for i, v in enumerate(content)]
            self.__dict__.update(_metadata=meta, _parent=parent, _content=nodes)

    def wrap(value, key, parent):
        if isinstance(value, dict):
            return DictConfig(value, key, parent)
        if isinstance(value, list):
            return ListConfig(value, key, parent)
        return AnyNode(value, key, parent)

    class Dictionary:
        def __init__(self, symbols):
            self.bos_word, self.unk_word, self.pad_word, self.eos_word = "<s>", "<unk>", "<pad>", "</s>"
            self.symbols = ["<s>", "<pad>", "</s>", "<unk>"] + symbols
            self.count = [1] * len(self.symbols)
            self.indices = {s: i for i, s in enumerate(self.symbols)}
            self.bos_index, self.pad_index, self.eos_index, self.unk_index, self.nspecial = 0, 1, 2, 3, 4

    _as_module(monkeypatch, "omegaconf.base", Metadata=Metadata, ContainerMetadata=ContainerMetadata)
    _as_module(monkeypatch, "omegaconf.nodes", AnyNode=AnyNode)
    _as_module(monkeypatch, "omegaconf.dictconfig", DictConfig=DictConfig)
    _as_module(monkeypatch, "omegaconf.listconfig", ListConfig=ListConfig)
    _as_module(monkeypatch, "fairseq.data.dictionary", Dictionary=Dictionary)
    return types.SimpleNamespace(DictConfig=DictConfig, Dictionary=Dictionary)


def fairseq_state_dict(model: AVHubertVideoEncoder) -> OrderedDict:
    """Our weights under the official names, plus the official keys the video encoder does not use."""
    cfg, D = model.config, model.config.embed_dim
    official = {"encoder.pos_conv.conv.bias": "encoder.pos_conv.0.bias",
                "encoder.pos_conv.conv.parametrizations.weight.original0": "encoder.pos_conv.0.weight_g",
                "encoder.pos_conv.conv.parametrizations.weight.original1": "encoder.pos_conv.0.weight_v"}
    sd = OrderedDict((official.get(k, k), v.clone()) for k, v in model.state_dict().items())
    resnet = "feature_extractor_video.resnet."
    for key in (resnet + "frontend3D.0.weight", resnet + "frontend3D.1.running_mean", resnet + "frontend3D.2.weight",
                resnet + "trunk.layer1.0.relu1.weight", resnet + "trunk.layer2.0.downsample.0.weight",
                resnet + "trunk.layer2.0.downsample.1.weight", resnet + "trunk.layer4.1.bn2.running_var",
                "feature_extractor_video.proj.weight",
                "encoder.layers.1.self_attn.q_proj.weight", "encoder.layers.0.self_attn_layer_norm.bias",
                "encoder.layers.0.fc1.weight", "encoder.layers.0.final_layer_norm.weight", "encoder.layer_norm.weight",
                "layer_norm.weight", "post_extract_proj.weight", "encoder.pos_conv.0.weight_g"):
        assert key in sd, key  # the official names, spelled out
    assert resnet + "trunk.layer1.0.downsample.0.weight" not in sd  # stem width = stage 1 width: identity shortcut
    assert sd["encoder.pos_conv.0.weight_g"].shape == (1, 1, cfg.conv_pos)
    sd["feature_extractor_audio.proj.weight"] = torch.randn(D, 104)
    sd["feature_extractor_audio.proj.bias"] = torch.randn(D)
    sd["mask_emb"] = torch.rand(104)
    sd["final_proj.weight"], sd["final_proj.bias"] = torch.randn(16, D), torch.randn(16)
    sd["label_embs_concat"] = torch.rand(20, 16)
    return sd


def model_cfg(config: AVHubertConfig) -> dict:
    return dict(_name="av_hubert", encoder_layers=config.num_layers, encoder_embed_dim=config.embed_dim,
                encoder_ffn_embed_dim=config.ffn_dim, encoder_attention_heads=config.num_heads,
                conv_pos=config.conv_pos, conv_pos_groups=config.conv_pos_groups, layer_norm_first=True,
                modality_fuse="concat", resnet_relu_type="prelu", sub_encoder_layers=0, activation_fn="gelu",
                audio_feat_dim=104, final_dim=16, untie_final_proj=True, masking_type="input")


def write_checkpoint(path, classes, model_sd, cfg_model: dict, legacy_args: bool = False):
    """torch.save of what fairseq's trainer writes: hydra era (cfg DictConfig, args None) or legacy (args Namespace)."""
    sections = dict(model=cfg_model, task=dict(_name="av_hubert_pretraining", labels=["km"], sample_rate=25,
                                               image_mean=0.421, image_std=0.165, modalities=["video", "audio"]),
                    common=dict(fp16=True, seed=1337))
    checkpoint = {
        "args": argparse.Namespace(**cfg_model, arch="av_hubert") if legacy_args else None,
        "cfg": None if legacy_args else classes.DictConfig(sections),
        "model": model_sd,
        "criterion": None,
        "optimizer_history": [{"criterion_name": "AVHubertCriterion", "optimizer_name": "FP16Optimizer",
                               "lr_scheduler_state": {"best": np.float64(2.5)}, "num_updates": 600_000}],
        "task_state": {"dictionaries": [classes.Dictionary([str(i) for i in range(16)])]},
        "extra_state": {"metrics": {"train": [(0, "loss", "AverageMeter", {"val": np.float32(1.25), "sum": 3.0,
                                                                           "count": np.int64(4), "round": 3})]},
                        "previous_training_time": 1234.5,
                        "train_iterator": {"epoch": 7, "iterations_in_epoch": 0, "shuffle": True}},
    }
    torch.save(checkpoint, path)


def test_official_checkpoint_loads_and_matches_exactly(tmp_path, fairseq_classes):
    original = tiny_encoder(seed=3)
    with torch.no_grad():  # trained in fp16: keep the weights fp16-exact so the fp16 file holds them losslessly
        for t in original.state_dict().values():
            if t.is_floating_point():
                t.copy_(t.half().float())
    sd = OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in fairseq_state_dict(original).items())
    path = tmp_path / "large_vox_iter5.pt"
    write_checkpoint(path, fairseq_classes, sd, model_cfg(TINY))

    loaded = load_avhubert(path, TINY)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x, lengths = frames(2, 6, seed=4), torch.tensor([6, 3])
    with torch.no_grad():
        assert torch.equal(loaded(x, lengths)[0], original(x, lengths)[0])


def test_read_gives_plain_data(tmp_path, fairseq_classes):
    path = tmp_path / "ckpt.pt"
    write_checkpoint(path, fairseq_classes, fairseq_state_dict(tiny_encoder()), model_cfg(TINY))
    ckpt = read_fairseq_checkpoint(path)
    assert set(ckpt) == {"args", "cfg", "model", "criterion", "optimizer_history", "task_state", "extra_state"}
    assert ckpt["cfg"]["model"]["encoder_layers"] == TINY.num_layers
    assert ckpt["cfg"]["task"]["labels"] == ["km"] and ckpt["cfg"]["task"]["image_std"] == 0.165
    assert ckpt["task_state"]["dictionaries"][0]["symbols"][4:6] == ["0", "1"]
    assert ckpt["optimizer_history"][0]["lr_scheduler_state"]["best"] == 2.5
    meter = ckpt["extra_state"]["metrics"]["train"][0][3]
    assert meter["val"] == 1.25 and meter["count"] == 4


def test_legacy_checkpoint_with_argparse_namespace(tmp_path, fairseq_classes):
    original = tiny_encoder(seed=5)
    path = tmp_path / "legacy.pt"
    write_checkpoint(path, fairseq_classes, fairseq_state_dict(original), model_cfg(TINY), legacy_args=True)
    assert read_fairseq_checkpoint(path)["args"]["encoder_attention_heads"] == TINY.num_heads
    x = frames(1, 5, seed=6)
    with torch.no_grad():
        assert torch.equal(load_avhubert(path, TINY)(x)[0], original(x)[0])


def test_unknown_and_missing_keys_are_named(tmp_path, fairseq_classes):
    sd = fairseq_state_dict(tiny_encoder())
    sd["encoder.layers.0.self_attn.rotary.weight"] = torch.zeros(3)
    write_checkpoint(tmp_path / "extra.pt", fairseq_classes, sd, model_cfg(TINY))
    with pytest.raises(CheckpointMismatch, match=r"unexpected \['encoder\.layers\.0\.self_attn\.rotary\.weight'\]"):
        load_avhubert(tmp_path / "extra.pt", TINY)

    sd = fairseq_state_dict(tiny_encoder())
    del sd["encoder.layers.1.fc2.bias"], sd["encoder.pos_conv.0.weight_g"]
    write_checkpoint(tmp_path / "missing.pt", fairseq_classes, sd, model_cfg(TINY))
    with pytest.raises(CheckpointMismatch) as e:
        load_avhubert(tmp_path / "missing.pt", TINY)
    assert "encoder.layers.1.fc2.bias" in str(e.value) and "encoder.pos_conv.0.weight_g" in str(e.value)


def test_architecture_the_shapes_cannot_show_is_checked(tmp_path, fairseq_classes):
    cfg = dict(model_cfg(TINY), encoder_attention_heads=2)  # same shapes, other head count
    write_checkpoint(tmp_path / "heads.pt", fairseq_classes, fairseq_state_dict(tiny_encoder()), cfg)
    with pytest.raises(CheckpointMismatch, match="encoder_attention_heads=2"):
        load_avhubert(tmp_path / "heads.pt", TINY)


def test_wrong_config_names_the_shapes(tmp_path, fairseq_classes):
    write_checkpoint(tmp_path / "tiny.pt", fairseq_classes, fairseq_state_dict(tiny_encoder()), {})
    with pytest.raises(CheckpointMismatch, match=r"encoder\.pos_conv\.0\.weight_g \(1, 1, 8\) vs \(1, 1, 6\)"):
        load_avhubert(tmp_path / "tiny.pt", dataclasses.replace(TINY, conv_pos=6))


# --- malicious pickles ----------------------------------------------------------------------------------------------


class _Payload:
    def __init__(self, func, args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("make", [
    lambda f: _Payload(os.system, (f"echo pwned > {f}",)),
    lambda f: _Payload(eval, (f"open({str(f)!r}, 'w').write('pwned')",)),
    lambda f: _Payload(subprocess.Popen, (["touch", str(f)],)),
], ids=["os.system", "builtins.eval", "subprocess.Popen"])
def test_malicious_pickle_is_refused_unrun(tmp_path, make):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "extra_state": make(marker)}, path)
    with pytest.raises(CheckpointRefused) as e:
        load_avhubert(path, TINY)
    assert str(path) in str(e.value)
    assert any(name in str(e.value) for name in ("system", "eval", "Popen")), str(e.value)
    assert not marker.exists()


def test_not_a_fairseq_checkpoint(tmp_path):
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointMismatch, match="no 'model' state dict"):
        read_fairseq_checkpoint(tmp_path / "other.pt")



# --- files that are not a checkpoint, or a damaged one -------------------------------------------------------------


def torch_saved(path) -> bytes:
    torch.save({"model": {"w": torch.zeros(1000)}}, path)
    return path.read_bytes()


@pytest.mark.parametrize("make, said", [
    (lambda path: b"", "not a PyTorch checkpoint: the file is empty"),
    (lambda path: torch_saved(path)[:600], "a damaged one: PytorchStreamReader failed reading zip archive"),
    (lambda path: torch_saved(path)[:4200], "a damaged one: its zip archive cannot be read"),
    (lambda path: b"\x80\x02}", "a damaged one: it ends too soon"),  # a pickle's EMPTY_DICT, then nothing
    (lambda path: b"\x80\x02M\x01", "a damaged one: a garbled pickle (error: unpack requires"),  # BININT2, 1 byte
    (lambda path: b"\x80\x02h\x05", "a damaged one: a garbled pickle (KeyError: 5)"),  # BINGET of nothing
    (lambda path: b"<!DOCTYPE html><html><body>404 Not Found</body></html>\n", "an HTML or XML page"),
    (lambda path: __import__("pickle").dumps({"model": {}}), "a damaged one: Unsupported operand 149"),
    (lambda path: __import__("pickle").dumps({"model": {}}, protocol=2), "a damaged one: Invalid magic number"),
    (lambda path: b"hello world\n", "neither torch.save's zip archive nor a pickle"),
], ids=["empty", "zip-cut-short", "zip-cut-at-its-end", "pickle-cut-short", "pickle-cut-in-an-opcode",
        "pickle-garbled", "html", "pickle", "pickle-protocol-2", "text"])
def test_a_file_that_is_no_checkpoint_says_what_it_is_and_is_not_refused(tmp_path, make, said):
    """An empty file was an EOFError, which Click takes for Ctrl-D ("Aborted!"); a zip archive cut short a
    RuntimeError traceback; an error page or another program's pickle "refusing ... stopped at " with no reason,
    as if it were malicious."""
    from mome_cli.avhubert import CheckpointUnreadable

    path = tmp_path / "large_vox_iter5.pt"
    path.write_bytes(make(path))
    with pytest.raises(CheckpointUnreadable) as e:
        load_avhubert(path, TINY)
    assert not isinstance(e.value, CheckpointRefused)
    assert str(e.value).startswith(f"{path}: not a PyTorch checkpoint") and said in str(e.value), str(e.value)
    assert "\n" not in str(e.value)


def test_another_models_weights_are_named_with_the_file_in_a_few_words(tmp_path):
    torch.save({"model": {"w": torch.zeros(3)}}, tmp_path / "other.pt")
    with pytest.raises(CheckpointMismatch) as e:
        load_avhubert(tmp_path / "other.pt", TINY)
    assert str(e.value).startswith(f"{tmp_path / 'other.pt'}: checkpoint does not fit the AV-HuBERT video encoder: "
                                   "missing ['feature_extractor_video.resnet.frontend3D.0.weight', "), str(e.value)
    assert len(str(e.value)) < 500 and "more; unexpected ['w']" in str(e.value), str(e.value)


@pytest.fixture
def native_folder(tmp_path):
    from mome_cli.avhubert import save_avhubert

    save_avhubert(tiny_encoder(), tmp_path / "video_encoder")
    return tmp_path / "video_encoder"


def edit_config(folder, **changes):
    import json

    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in config.items() if v is not None}))


@pytest.mark.parametrize("damage, file, said", [
    (lambda f: os.truncate(f / "model.safetensors", 5000), "model.safetensors", "unreadable (Error while deserial"),
    (lambda f: (f / "model.safetensors").unlink(), None, "not an AV-HuBERT encoder folder (no model.safetensors)"),
    (lambda f: (f / "config.json").unlink(), None, "not an AV-HuBERT encoder folder (no config.json)"),
    (lambda f: (f / "config.json").write_text("{oops"), "config.json", "unreadable (Expecting property name"),
    (lambda f: (f / "config.json").write_text("[1, 2]"), "config.json",
     "not an AV-HuBERT config: expected a JSON object of AVHubertConfig's fields, got list"),
    (lambda f: edit_config(f, rotary=True), "config.json", "not an AV-HuBERT config: unknown fields ['rotary']"),
    (lambda f: edit_config(f, ffn_dim=None), "config.json", "not an AV-HuBERT config: no ffn_dim"),
    (lambda f: edit_config(f, embed_dim="32"), "config.json", "embed_dim must be a whole number, got '32'"),
    (lambda f: edit_config(f, stage_blocks=[2, "2", 2, 2]), "config.json", "stage_blocks must be a list of whole"),
    (lambda f: edit_config(f, ffn_dim=48), "model.safetensors", "tensors do not fit AVHubertConfig("),
], ids=["weights-cut-short", "no-weights", "no-config", "config-not-json", "config-a-list", "unknown-field",
        "missing-field", "text-for-a-number", "text-in-a-list", "shapes"])
def test_a_damaged_native_encoder_folder_names_the_file(native_folder, damage, file, said):
    """The folder form (the demo's video_encoder/) gave SafetensorError, FileNotFoundError and TypeError tracebacks."""
    from mome_cli.avhubert import AVHubertCheckpointError

    damage(native_folder)
    with pytest.raises(AVHubertCheckpointError) as e:
        load_avhubert(native_folder)
    assert str(e.value).startswith(f"{native_folder / file if file else native_folder}: ") and said in str(e.value), \
        str(e.value)
