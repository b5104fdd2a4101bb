"""Throughput of evaluation on many short clips on a GPU, per rate pair: mome's decoding against a plain loop (#8).

    python benchmarks/throughput.py                     # mome-1b, 512 clips of 1-6 s (mean 3 s), batches of 64
    python benchmarks/throughput.py --preset mome-8b --clips 256

As `mome evaluate` works (evaluate.py): clips sorted longest first and cut into batches; per batch the encoders run
once (Whisper features and encoder, AV-HuBERT) and the LLM decodes once per rate pair, greedy. Clip lengths are
LRS3-like, drawn from a triangular distribution on [1, 6] s with mode 2 s (mean 3 s), noise audio and random 96 x 96
mouth crops already in memory (media decoding left out). The model has random weights (realsize.py), so the text never
ends by itself: each batch generates what a real transcript of its longest clip would hold, --tokens-per-second x its
length + 1 (EOS), 4 by default (LRS3 speech is about 3 words a second, a Llama 3 token is about 0.75 of a word).

Ways, in the same run on the same batches:
- mome: mome_cli.decoding.decode (StaticGreedy: static cache, decode step captured as a CUDA graph, reused by batches
  whose prefix fits its cache), with the LLM and Whisper on mome's own code (llama.py, whisper.py) as `mome evaluate`
  loads them, and the same on transformers' classes (same weights; MOME_NATIVE=0);
- baseline: the same decode on transformers' dynamic cache, one eager forward per step (decode(..., static=False)).

x real time = seconds of audio / seconds taken. "encoders" are counted once per batch; "LLM" is one rate pair's
decoding; "one rate" = encoders + that rate's LLM, what `mome evaluate --rates A,V` costs. A second table splits
mome's LLM time: the sequence layout alone (AVSRModel.prefix), prefill with the first token (a decode of 1 token,
layout excluded) and the later steps (the rest), timed on the same batches in separate calls.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mome_cli, not an installed one

from mome_cli.decoding import DecodingOptions, decode

from realsize import build_recognizer, clip, machine_line, native, sync

TARGET = 2000.0  # issue #8: x real time with mome-1b at 4,2
MOME = "mome (own Llama and Whisper code; static cache + CUDA graph)"
MOME_HF = "mome on transformers' Llama and Whisper (static cache + CUDA graph)"
BASELINE = "baseline (transformers' backbones, dynamic cache, eager steps)"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="mome-1b")
    parser.add_argument("--rates", default="4,2;16,5", help="rate pairs, ';'-separated (default 4,2;16,5)")
    parser.add_argument("--clips", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--tokens-per-second", type=float, default=4.0)
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the script (slow)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    rates = [tuple(int(r) for r in pair.split(",")) for pair in args.rates.split(";")]

    recog = build_recognizer(args.preset, args.device)
    own = native(recog)
    rng = np.random.default_rng(0)
    seconds = np.sort(rng.triangular(1.0, 2.0, 6.0, size=args.clips))[::-1]  # longest first, as evaluate sorts
    clips = [clip(float(s), seed=i) for i, s in enumerate(seconds)]
    batches = [list(range(at, min(at + args.batch_size, len(clips)))) for at in range(0, len(clips), args.batch_size)]
    audio_seconds = float(seconds.sum())

    def tokens_for(batch):
        return math.ceil(args.tokens_per_second * seconds[batch[0]]) + 1

    codes = {"own": own, "transformers'": recog}  # which backbone code: its recogniser
    ways = {MOME: ("own", None), MOME_HF: ("transformers'", None), BASELINE: ("transformers'", False)}
    with torch.inference_mode():
        # Warm-up on the first batch: every way and rate once (mome's capture happens here).
        for code, static in ways.values():
            r = codes[code]
            feats = r.features([clips[i][0] for i in batches[0]], [clips[i][1] for i in batches[0]])
            for rate in rates:
                decode(r.model, feats, rate, "av", DecodingOptions(max_new_tokens=tokens_for(batches[0])),
                       static=static)
        enc_time, llm_time, generated = dict.fromkeys(codes, 0.0), {(w, r): 0.0 for w in ways for r in rates}, 0
        layout, first, steps = dict.fromkeys(rates, 0.0), dict.fromkeys(rates, 0.0), 0  # where mome's LLM time goes
        for batch in batches:
            feats = {}
            for code, r in codes.items():
                sync()
                start = time.perf_counter()
                feats[code] = r.features([clips[i][0] for i in batch], [clips[i][1] for i in batch])
                sync()
                enc_time[code] += time.perf_counter() - start
            options = DecodingOptions(max_new_tokens=tokens_for(batch))
            generated += options.max_new_tokens * len(batch)
            for way, (code, static) in ways.items():
                for rate in rates:
                    sync()
                    start = time.perf_counter()
                    decode(codes[code].model, feats[code], rate, "av", options, static=static)
                    sync()
                    llm_time[way, rate] += time.perf_counter() - start
            steps += options.max_new_tokens - 1
            for rate in rates:  # the parts of mome's decode: sequence layout alone, then layout + prefill + 1 token
                sync()
                start = time.perf_counter()
                own.model.prefix(feats["own"], rate, "av")
                sync()
                layout[rate] += time.perf_counter() - start
                start = time.perf_counter()
                decode(own.model, feats["own"], rate, "av", DecodingOptions(max_new_tokens=1))
                sync()
                first[rate] += time.perf_counter() - start

    print(machine_line(args.device))
    print(f"{args.preset}, random weights, bf16 backbones; {args.clips} clips of "
          f"{seconds.min():.1f}-{seconds.max():.1f} s (mean {seconds.mean():.2f} s, {audio_seconds:.0f} s in all), "
          f"batches of {args.batch_size}, {generated} tokens generated per rate and way")
    print("| rate | way | encoders, s | LLM, s | one rate, s | clips/s | x real time (one rate) | "
          "x real time (LLM only) |")
    print("|---|---|---|---|---|---|---|---|")
    one = lambda way, r: enc_time[ways[way][0]] + llm_time[way, r]  # noqa: E731 (encoders + one rate's LLM)
    for rate in rates:
        for way, (code, _) in ways.items():
            llm, total = llm_time[way, rate], one(way, rate)
            print(f"| {rate[0]},{rate[1]} | {way} | {enc_time[code]:.3f} | {llm:.3f} | {total:.3f} | "
                  f"{args.clips / total:.0f} | {audio_seconds / total:.0f} | {audio_seconds / llm:.0f} |")
    print()
    print("| rate | mome's LLM, s | sequence layout, s | prefill + first token, s | later steps, s | steps | "
          "ms a step |")
    print("|---|---|---|---|---|---|---|")
    for rate in rates:
        later, prefill = llm_time[MOME, rate] - first[rate], first[rate] - layout[rate]
        print(f"| {rate[0]},{rate[1]} | {llm_time[MOME, rate]:.3f} | {layout[rate]:.3f} | {prefill:.3f} | "
              f"{later:.3f} | {steps} | {1000 * later / max(steps, 1):.2f} |")
    print()
    for rate in rates:
        base, on_hf = llm_time[BASELINE, rate], llm_time[MOME_HF, rate]
        print(f"- {rate[0]},{rate[1]}: mome's LLM {base / llm_time[MOME, rate]:.1f}x the baseline's speed, "
              f"{on_hf / llm_time[MOME, rate]:.2f}x mome's on transformers' backbones")
    if len(rates) > 1:
        lo, hi = rates[0], rates[-1]
        print(f"- {hi[0]},{hi[1]} against {lo[0]},{lo[1]}: {one(MOME, lo) / one(MOME, hi):.2f}x the throughput "
              f"(one rate), {llm_time[MOME, lo] / llm_time[MOME, hi]:.2f}x (LLM only); target 2x")
    speed = audio_seconds / one(MOME, rates[0])
    share = enc_time["own"] / one(MOME, rates[0])
    every = audio_seconds / (enc_time["own"] + sum(llm_time[MOME, r] for r in rates))
    print(f"- {rates[0][0]},{rates[0][1]}: {speed:.0f}x real time (target {TARGET:g}x: "
          f"{'met' if speed >= TARGET else 'missed'}); encoders are {share:.0%} of it; every rate in one run "
          f"(encoders once): {every:.0f}x")


if __name__ == "__main__":
    main()
