"""Checkpoint directories: trainable tensors only, atomic writes, bit-exact reload, refusal of a mismatch."""

import contextlib
import json
import os
import stat

import pytest
import torch
from safetensors.torch import load_file

from mome_cli.checkpoint import (CheckpointError, atomic_write, build_model, load_checkpoint, load_weights,
                                 save_checkpoint)
from mome_cli.decoding import DecodingOptions, decode

from conftest import random_features, tiny_config, tiny_model


def test_save_then_load_gives_identical_logits_and_text(tmp_path, model):
    save_checkpoint(model, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["config.json", "model.safetensors"]
    tensors = load_file(tmp_path / "ckpt" / "model.safetensors")
    assert set(tensors) == set(model.trainable_state_dict()) and not any(k.startswith("llm.") for k in tensors)
    loaded = load_checkpoint(tmp_path / "ckpt")
    assert loaded.config == model.config
    features = random_features()
    with torch.no_grad():
        a, b = model.prefix(features, (16, 2)), loaded.prefix(features, (16, 2))
        assert torch.equal(a.embeds, b.embeds)
        logits = [m.llm(inputs_embeds=p.embeds, attention_mask=p.attention_mask).logits for m, p in [(model, a),
                                                                                                     (loaded, b)]]
    assert torch.equal(*logits)
    options = DecodingOptions(max_new_tokens=8)
    assert decode(model, features, (4, 5), options=options) == decode(loaded, features, (4, 5), options=options)


def test_checkpoint_of_one_position_refuses_another(tmp_path):
    save_checkpoint(tiny_model(mome=dict(position="mhsa")), tmp_path)
    other = build_model(tiny_config(mome=dict(position="ffn")))
    with pytest.raises(CheckpointError, match="does not fit this model.*position.*'mhsa'.*'ffn'"):
        load_weights(other, tmp_path)


def test_missing_or_damaged_checkpoints_are_clear_errors(tmp_path, model):
    with pytest.raises(CheckpointError, match="not a mome checkpoint"):
        load_checkpoint(tmp_path)
    save_checkpoint(model, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 99, "model": {}}))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("damage, message", [
    (lambda c: bytes(range(128, 256)), "unreadable: 'utf-8' codec can't decode"),  # tracebacks before, each
    (lambda c: b"[1, 2]", 'not a mome checkpoint\'s config \\(a JSON object with a "model" object\\)'),
    (lambda c: json.dumps({**c, "model": {**c["model"], "mome": "x"}}).encode(), "mome must be a mapping, got 'x'"),
    (lambda c: json.dumps({**c, "model": {**c["model"], "projector_hidden": -3}}).encode(),
     "projector_hidden must be a whole number >= 1, got -3"),
    (lambda c: json.dumps({**c, "model": {**c["model"], "llm": 7}}).encode(), "llm must be text, got 7"),
    (lambda c: json.dumps({**c, "model": {**c["model"], "prompts": {"a": 1, "v": 2, "av": 3}}}).encode(),
     "prompts has no text for mode"),
    (lambda c: json.dumps({**c, "model": {**c["model"], "tags": {"audio": "x"}}}).encode(),
     "tags must give audio an opening and a closing text, got 'x'"),
    (lambda c: json.dumps({**c, "model": {**c["model"], "rates": [[4.7, 2]]}}).encode(),
     "rates must be a non-empty list of .* whole rates"),  # was cut to 4
    (lambda c: json.dumps({**c, "model": {**c["model"], "rates": [4]}}).encode(), "rates must be"),
    # a field left out was filled in from the defaults: the error was that Llama-3.2-1B was not downloaded
    (lambda c: json.dumps({**c, "model": {k: v for k, v in c["model"].items() if k not in ("llm", "mome")}}).encode(),
     "invalid model config: no llm, mome$"),
])
def test_a_damaged_config_json_is_one_clear_error(tmp_path, model, damage, message):
    save_checkpoint(model, tmp_path)
    path = tmp_path / "config.json"
    path.write_bytes(damage(json.loads(path.read_text())))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(tmp_path)


def test_atomic_write_leaves_nothing_behind_on_failure(tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"old")

    def crash(tmp):
        with open(tmp, "wb") as f:
            f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, crash)
    assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_write_gives_new_files_the_umask_mode_and_keeps_a_replaced_files_mode(tmp_path, umask, mode):
    # The temporary file is private (mkstemp): a checkpoint or transcript written through it must not stay so when
    # the user's umask would let the group read it (a model trained on a shared cluster, a subtitle for a web server).
    from mome_cli.files import atomic_write_text

    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "new.txt", "a")
        (tmp_path / "kept.txt").write_text("old")
        (tmp_path / "kept.txt").chmod(0o604)
        atomic_write_text(tmp_path / "kept.txt", "new")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "kept.txt").stat().st_mode) == 0o604
    assert (tmp_path / "kept.txt").read_text() == "new"


def test_atomic_write_syncs_the_bytes_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    """A power cut after the rename must not leave an empty trainer_state.pt: the data reaches the disk first."""
    from mome_cli import files

    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files.os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                       real_fsync(fd)))
    monkeypatch.setattr(files.os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    files.atomic_write_text(tmp_path / "state.txt", "x")
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert events[0][1].startswith(str(tmp_path / ".state.txt.")) and events[2][1] == str(tmp_path)


@pytest.mark.parametrize("handler", ["python", "ignored"])
def test_a_ctrl_c_inside_interrupt_after_comes_when_it_ends_as_it_would_have(handler):
    import signal

    from mome_cli.files import interrupt_after

    before = signal.signal(signal.SIGINT, signal.default_int_handler if handler == "python" else signal.SIG_IGN)
    done = []
    try:
        with pytest.raises(KeyboardInterrupt) if handler == "python" else contextlib.nullcontext():
            with interrupt_after():
                os.kill(os.getpid(), signal.SIGINT)
                done.append("the rest of the block")
        assert done == ["the rest of the block"]
        assert signal.getsignal(signal.SIGINT) == (signal.default_int_handler if handler == "python" else
                                                   signal.SIG_IGN)
    finally:
        signal.signal(signal.SIGINT, before)
