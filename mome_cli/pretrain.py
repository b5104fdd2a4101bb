"""Small backbones trained from scratch on a corpus: what the `demo` preset stands on, where no pretrained ones exist.

    python -m mome_cli.pretrain backbones --train DATA/train.jsonl -o BACKBONES --steps 1500 --seed 0
    mome train --config recipes/demo.toml ...            # MoME on the frozen BACKBONES (recipes/demo.toml)
    python -m mome_cli.pretrain bundle CHECKPOINT --backbones BACKBONES -o mome_cli/models/demo

Real MoME models stand on Whisper, AV-HuBERT and Llama, pretrained on other data and frozen. None of them can be
fetched where this project is built, so the demo model's three backbones are trained here first, from random weights,
on the synthetic corpus (synth.py), and then frozen for `mome train --model BACKBONES`:

- audio: a Whisper encoder (encoders.DEMO_WHISPER: 128 wide, 3 layers, an 8 s window) with its real feature extractor;
- video: an AV-HuBERT encoder of the same structure as Large at small widths (AVHubertConfig.demo());
- LLM: a byte-level Llama (llm.DEMO_SHAPE: 192 wide, 3 layers).

They are trained together end to end, as one speech recogniser (AVSRModel with its own projectors and MoME modules,
thrown away afterwards): every step transcribes its batch in one of the modes a, v, av at one (audio, video) rate
pair, taken in turn so that every mode meets every pair, so the LM learns to read projected encoder tokens; both
encoders also carry a character CTC loss at every step (a linear head each, thrown away too), which makes them learn
their inputs much sooner than through the LM alone. The result is written as

    BACKBONES/audio_encoder/   WhisperEncoder + WhisperFeatureExtractor (save_pretrained: config.json, safetensors)
    BACKBONES/video_encoder/   config.json + model.safetensors (avhubert.save_avhubert)
    BACKBONES/llm/             LlamaForCausalLM + its byte tokenizer (save_pretrained)
    BACKBONES/backbones.json   the ModelConfig fields that describe them (paths relative to BACKBONES)
    BACKBONES/log.jsonl        losses per logged step
    BACKBONES/pretrain_state.safetensors   every trained tensor, heads included (--init BACKBONES continues from it)

each folder written under a temporary name and renamed into place. Same corpus, seed and settings: the same weights.

`bundle` makes a checkpoint directory that carries its backbones (what ships as the `demo` preset): the checkpoint's
tensors, its config with the backbone paths made relative (llm, audio_encoder, video_encoder), and the three folders.

Notation for shapes: B utterances, T frames, C characters (blank first), D encoder width.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import BACKBONES_NAME
from .model import DEFAULT_RATES, MODES, AVSRModel, Features, ModelConfig
from .mome import MoMEConfig

ALPHABET = " abcdefghijklmnopqrstuvwxyz'"  # CTC targets; index 0 is the blank, so characters are 1..28
PROJECTOR_HIDDEN = 256
STATE_NAME = "pretrain_state.safetensors"  # every tensor of Backbones, projectors and CTC heads too: what --init loads


def ctc_targets(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Character ids (concatenated, 1-based) and their lengths; characters outside ALPHABET are dropped."""
    ids = [[ALPHABET.index(ch) + 1 for ch in t.lower() if ch in ALPHABET] for t in texts]
    return torch.tensor([i for row in ids for i in row]), torch.tensor([len(row) for row in ids])


def ctc_loss(head: torch.nn.Linear, states: torch.Tensor, lengths: torch.Tensor, texts: list[str]) -> torch.Tensor:
    log_probs = head(states).float().log_softmax(-1).transpose(0, 1)  # (T, B, C)
    targets, target_lengths = ctc_targets(texts)
    return F.ctc_loss(log_probs, targets, lengths.cpu(), target_lengths, zero_infinity=True)


class Backbones(torch.nn.Module):
    """The three backbones, trainable, with the throw-away AVSRModel and CTC heads that train them."""

    def __init__(self, seed: int):
        super().__init__()
        from .avhubert import AVHubertConfig, AVHubertVideoEncoder
        from .encoders import DEMO_WHISPER, DEMO_WINDOW, build_whisper
        from .llm import DEMO_SHAPE, build_byte_llm

        self.audio_encoder = build_whisper(DEMO_WHISPER, seed=seed, window=DEMO_WINDOW)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1)
            self.video_encoder = AVHubertVideoEncoder(AVHubertConfig.demo())
        llm, tokenizer = build_byte_llm("llama", DEMO_SHAPE, seed=seed + 2)
        D = DEMO_WHISPER["d_model"]
        self.config = ModelConfig(llm="llm", audio_encoder="audio_encoder", audio_dim=D, video_encoder="video_encoder",
                                  video_dim=self.video_encoder.dim, projector_hidden=PROJECTOR_HIDDEN,
                                  mome=MoMEConfig(num_routed=4, num_shared=1, top_k=2, bottleneck=8),
                                  modes=list(MODES))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 3)
            self.avsr = AVSRModel(self.config, llm, tokenizer)
            self.audio_ctc = torch.nn.Linear(D, len(ALPHABET) + 1)
            self.video_ctc = torch.nn.Linear(self.video_encoder.dim, len(ALPHABET) + 1)
        self.requires_grad_(True)

    def encode(self, audio: list, rois: list) -> Features:
        from .lips import centre_crop_normalise

        f = Features()
        f.audio, f.audio_lengths = self.audio_encoder(audio)
        crops = [torch.from_numpy(centre_crop_normalise(r)) for r in rois]  # (T_i, 88, 88) each
        frames = torch.nn.utils.rnn.pad_sequence(crops, batch_first=True)  # (B, T, 88, 88)
        f.video, f.video_lengths = self.video_encoder(frames, torch.tensor([len(c) for c in crops]))
        return f

    def forward(self, audio: list, rois: list, texts: list[str], mode: str, rate: tuple) -> dict[str, torch.Tensor]:
        f = self.encode(audio, rois)
        r = (rate[0] if "a" in mode else None, rate[1] if "v" in mode else None)
        return {"ctc_a": ctc_loss(self.audio_ctc, f.audio, f.audio_lengths, texts),
                "ctc_v": ctc_loss(self.video_ctc, f.video, f.video_lengths, texts),
                f"lm_{mode}": self.avsr(f, texts, [r], mode).lm_loss}

    def load(self, directory: Path) -> None:
        """An earlier run's weights: all of them from its state file, else its three backbones (heads stay new)."""
        from safetensors.torch import load_file, load_model

        if (directory / STATE_NAME).is_file():
            load_model(self, str(directory / STATE_NAME), strict=True)
            return
        self.audio_encoder.encoder.load_state_dict(load_file(directory / "audio_encoder" / "model.safetensors"))
        self.video_encoder.load_state_dict(load_file(directory / "video_encoder" / "model.safetensors"))
        missing, unexpected = self.avsr.llm.load_state_dict(load_file(directory / "llm" / "model.safetensors"),
                                                            strict=False)
        if unexpected or set(missing) - {"lm_head.weight"}:  # the head is tied to the embeddings
            raise ValueError(f"{directory / 'llm'}: weights do not fit ({missing[:3]}, {unexpected[:3]})")

    def save(self, directory: Path) -> None:
        """The three backbones into directory, written under a temporary name and renamed."""
        from safetensors.torch import save_model

        from .avhubert import save_avhubert

        tmp = directory.with_name(f".{directory.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        self.audio_encoder.encoder.save_pretrained(tmp / "audio_encoder")
        self.audio_encoder.feature_extractor.save_pretrained(tmp / "audio_encoder")
        save_avhubert(self.video_encoder, tmp / "video_encoder")
        save_model(self, str(tmp / STATE_NAME), metadata={"format": "pt"})  # heads too; tied LM head stored once
        self.avsr.llm.save_pretrained(tmp / "llm")
        self.avsr.tokenizer.save_pretrained(tmp / "llm")
        base = ModelConfig(llm="llm", audio_encoder="audio_encoder", audio_dim=self.config.audio_dim,
                           video_encoder="video_encoder", video_dim=self.config.video_dim,
                           projector_hidden=PROJECTOR_HIDDEN)
        (tmp / BACKBONES_NAME).write_text(json.dumps(base.to_dict(), indent=2) + "\n", encoding="utf-8")
        if (directory / "log.jsonl").exists():
            shutil.copy(directory / "log.jsonl", tmp / "log.jsonl")
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            directory.rename(old)
        tmp.rename(directory)
        shutil.rmtree(old, ignore_errors=True)


def _preprocess(job):
    preprocess, path = job
    from .media import MediaError

    try:
        return preprocess(path)
    except MediaError as e:
        return e


def load_clips(manifest: str, home: Path, say, workers: int = 2) -> tuple[list, list]:
    """(utterances, clips) of a manifest of mouth-crop videos, through the media stage (cached), in worker processes."""
    from concurrent.futures import ProcessPoolExecutor

    from .data import load_manifest
    from .preprocess import PreprocessOptions, Preprocessor

    preprocess = Preprocessor(PreprocessOptions(mode="av", roi=True, device="cpu"), cache_dir=home / "cache" / "clips")
    listed = load_manifest(manifest)
    utterances, clips, started = [], [], time.monotonic()
    with ProcessPoolExecutor(workers) as pool:
        for n, (u, clip) in enumerate(zip(listed, pool.map(_preprocess, [(preprocess, u.media) for u in listed],
                                                           chunksize=16)), 1):
            if isinstance(clip, Exception):
                say(f"warning: {u.id} skipped: {clip}")
            elif clip.mode == "av":
                utterances.append(u)
                clips.append(clip)
            if n % 500 == 0:
                say(f"{manifest}: {n}/{len(listed)} clips read, {time.monotonic() - started:.0f} s")
    return utterances, clips


def pretrain(args) -> None:
    from .data import frame_batches
    from .hub import mome_home
    from .train_data import clip_frames

    say = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads or torch.get_num_threads())
    utterances, clips = load_clips(args.train, mome_home(), say)
    lengths = [clip_frames(c) for c in clips]
    model = Backbones(args.seed)
    if args.init:
        model.load(Path(args.init))
        say(f"starting from {args.init}")
    model.train()
    say(f"{len(clips)} utterances, {sum(lengths) / 25 / 3600:.2f} h; "
        f"{sum(p.numel() for p in model.parameters()):,} parameters")
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=0.01)
    warmup = max(1, args.steps // 20)
    schedule = lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, s / args.steps))))  # noqa
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    (out / "log.jsonl").unlink(missing_ok=True)
    step, epoch, started, meter, counts = 0, 0, time.monotonic(), {}, {}
    while step < args.steps:
        for batch in frame_batches(lengths, args.batch_frames, shuffle=True, seed=args.seed + epoch, bucket=400):
            mode, rate = MODES[step % len(MODES)], DEFAULT_RATES[step // len(MODES) % len(DEFAULT_RATES)]
            losses = model([clips[i].audio for i in batch], [clips[i].rois for i in batch],
                           [utterances[i].text for i in batch], mode, rate)
            loss = sum(losses.values())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            for k, v in losses.items():
                meter[k] = meter.get(k, 0.0) + v.item()
                counts[k] = counts.get(k, 0) + 1
            if step % args.log_every == 0 or step == args.steps:
                mean = {k: round(v / counts[k], 4) for k, v in meter.items()}
                seconds = time.monotonic() - started
                with open(out / "log.jsonl", "a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": step, "epoch": epoch, "seconds": round(seconds, 1), **mean}) + "\n")
                say(f"step {step}/{args.steps}  " + "  ".join(f"{k} {v:.3f}" for k, v in mean.items())
                    + f"  {seconds:.0f} s")
                meter, counts = {}, {}
            if step % args.save_every == 0 or step == args.steps:
                model.save(out)
            if step == args.steps:
                break
        epoch += 1
    say(f"backbones written to {out}")


def bundle(checkpoint: str | Path, backbones: str | Path, output: str | Path) -> Path:
    """A self-contained checkpoint directory: checkpoint's tensors and config + the backbones it was trained on."""
    from .checkpoint import BACKBONE_FIELDS, CONFIG_NAME, WEIGHTS_NAME, backbones_config

    checkpoint, backbones, output = Path(checkpoint), Path(backbones), Path(output)
    data = json.loads((checkpoint / CONFIG_NAME).read_text(encoding="utf-8"))
    used = backbones_config(backbones)
    for name in BACKBONE_FIELDS:
        if Path(data["model"][name]).absolute() != Path(getattr(used, name)):
            raise SystemExit(f"{checkpoint} was trained on {data['model'][name]}, not on {getattr(used, name)}")
        data["model"][name] = name
    data.pop("training", None)  # the run's own bookkeeping; the bundle is a release
    tmp = output.with_name(f".{output.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name in BACKBONE_FIELDS:
        shutil.copytree(backbones / name, tmp / name)
    shutil.copy(checkpoint / WEIGHTS_NAME, tmp / WEIGHTS_NAME)
    (tmp / CONFIG_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    if output.exists():
        shutil.rmtree(output)
    tmp.rename(output)
    return output


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mome_cli.pretrain", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("bundle", help="a checkpoint directory that carries its backbones")
    packer.add_argument("checkpoint", help="output directory of `mome train --model BACKBONES`")
    packer.add_argument("--backbones", required=True, help="the BACKBONES folder it was trained on")
    packer.add_argument("-o", "--output", required=True, help="the directory to write (replaced if it exists)")
    trainer = commands.add_parser("backbones", help="train the three small backbones on a corpus")
    trainer.add_argument("--train", required=True, help="manifest of mouth-crop videos (e.g. from mome_cli.synth)")
    trainer.add_argument("-o", "--output", required=True, help="folder the backbones are written to")
    trainer.add_argument("--steps", type=int, default=1500, help="optimiser steps [1500]")
    trainer.add_argument("--batch-frames", type=int, default=400, help="padded video frames per batch [400]")
    trainer.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (warmup, then cosine) [2e-3]")
    trainer.add_argument("--seed", type=int, default=0, help="initial weights and batch order [0]")
    trainer.add_argument("--init", metavar="BACKBONES", help="start from an earlier run's weights (its "
                         f"{STATE_NAME}) instead of random ones; the schedule starts again")
    trainer.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    trainer.add_argument("--log-every", type=int, default=10, help="steps between log lines [10]")
    trainer.add_argument("--save-every", type=int, default=250, help="steps between saves [250]")
    args = parser.parse_args(argv)
    if args.command == "bundle":
        print(bundle(args.checkpoint, args.backbones, args.output))
    else:
        pretrain(args)


if __name__ == "__main__":
    main()
