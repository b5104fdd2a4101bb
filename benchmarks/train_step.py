"""Training step with every rate pair in one batched LLM forward against one forward per rate pair, on a GPU (#8).

    python benchmarks/train_step.py                    # mome-1b, 8 clips of 3 s a step, the four rate pairs
    python benchmarks/train_step.py --preset mome-8b --clips 4

A step as `mome train` runs it (training.Trainer.train): bf16 autocast, forward, backward through the frozen LLM
into the MoME modules and projectors, gradient clipping, AdamW. The frozen encoders' features are given (random, of
the real widths and rates: 50 audio and 25 video frames a second), as the trainer's feature cache gives them; the
transcripts are random words of about 3 words a second (byte-level tokens here: realsize.py).

- batched: AVSRModel.forward with every rate pair (all rows padded into one LLM forward, as mome trains);
- baseline: one AVSRModel.forward per rate pair, each loss divided by their number and back-propagated in turn
  (gradients accumulate), the way a loop over rates would train.

Both compute the same loss (the mean over rate pairs of each pair's token-mean cross-entropy, plus lb_coef times the
load-balancing loss averaged over the pairs); the table shows both on the first step, from the same weights. Times are
medians of --steps steps after --warmup; peak memory is torch.cuda.max_memory_allocated over the timed steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mome_cli, not an installed one

from mome_cli.model import Features

from realsize import build_recognizer, machine_line

WORDS = "the of and to in a is that for it as was with be by on not he this are or his from at which".split()


def batch(clips: int, seconds: float, audio_dim: int, video_dim: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    Ta, Tv = round(seconds * 50), round(seconds * 25)
    features = Features(torch.randn(clips, Ta, audio_dim, generator=g).to(device), torch.full((clips,), Ta),
                        torch.randn(clips, Tv, video_dim, generator=g).to(device), torch.full((clips,), Tv))
    features.audio_lengths = features.audio_lengths.to(device)
    features.video_lengths = features.video_lengths.to(device)
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(WORDS, size=round(3 * seconds))) for _ in range(clips)]
    return features, texts


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mome-1b")
    parser.add_argument("--clips", type=int, default=8, help="clips per step (default 8)")
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length (default 3)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the script (slow)")
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")

    model = build_recognizer(args.preset, args.device).model
    cfg = model.config
    rates = list(cfg.rates)
    features, texts = batch(args.clips, args.seconds, cfg.audio_dim, cfg.video_dim, args.device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=1e-4, betas=(0.9, 0.98))
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
    model.train()
    model.llm.eval()

    def batched():
        with autocast:
            out = model(features, texts, rates)
        out.loss.backward()
        return out.loss.detach()

    def one_by_one():
        total = 0.0
        for rate in rates:
            with autocast:
                out = model(features, texts, [rate])
            (out.loss / len(rates)).backward()
            total = total + out.loss.detach() / len(rates)
        return total

    def step(fn):
        loss = fn()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    # The same loss from the same weights, before any step.
    losses = {}
    for name, fn in (("batched", batched), ("one forward per rate", one_by_one)):
        losses[name] = float(fn())
        optimizer.zero_grad(set_to_none=True)

    rows = {}
    for name, fn in (("batched (mome)", batched), ("one forward per rate (baseline)", one_by_one)):
        for _ in range(args.warmup):
            step(fn)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        times = []
        for _ in range(args.steps):
            start = time.perf_counter()
            step(fn)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else float("nan")
        rows[name] = (statistics.median(times), peak)

    print(machine_line(args.device))
    print(f"{args.preset}, random weights, bf16 autocast; {args.clips} clips of {args.seconds:g} s a step, rate pairs "
          f"{'; '.join(f'{a},{v}' for a, v in rates)}; median of {args.steps} steps after {args.warmup}")
    print("| way | step, s | clips/s | peak GPU memory, GiB |")
    print("|---|---|---|---|")
    for name, (seconds, peak) in rows.items():
        print(f"| {name} | {seconds:.4f} | {args.clips / seconds:.1f} | {peak:.2f} |")
    print()
    (ours, _), (base, _) = rows.values()
    print(f"- batched is {base / ours:.2f}x the speed of one forward per rate (target 1.5x: "
          f"{'met' if base / ours >= 1.5 else 'missed'})")
    a, b = losses.values()
    print(f"- loss on the first batch: batched {a:.5f}, one forward per rate {b:.5f} (difference {abs(a - b):.1e})")


if __name__ == "__main__":
    main()
