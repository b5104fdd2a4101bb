"""Latency of one clip end to end on a GPU: encoders + prefill + N generated tokens, mome against transformers (#8).

    python benchmarks/latency.py                                  # mome-1b at 4,2 and mome-8b at 16,5, 23 s, 40 tokens
    python benchmarks/latency.py --preset mome-1b:4,2 --no-static-baseline

Each preset is built with random weights (realsize.py): a random LM never ends early, so every run generates exactly
--tokens tokens. One clip of --seconds: noise audio and random 96 x 96 mouth crops, already in memory (decoding the
media file is left out). Every row times the same work from those arrays to the tokens: Whisper features and encoder,
AV-HuBERT, compression and projection, the prefix, prefill and the tokens.

- mome: mome_cli.decoding.decode, greedy (StaticGreedy: static cache, decode step captured as a CUDA graph);
- baseline: transformers `generate` on the same model and prefix (dynamic cache), greedy, min = max = --tokens;
- second baseline: `generate` with cache_implementation="static", which compiles the decode step with torch.compile.

"first" is the first call after the model is loaded (mome: graph capture; static baseline: compilation), "steady"
the median of --repeats calls after it. The calls alternate between the ways, so a load that comes and goes weighs
on all alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from mome_cli.decoding import DecodingOptions, decode

from realsize import build_recognizer, clip, machine_line, sync

TARGETS = {"mome-1b": 0.10, "mome-8b": 0.35}  # issue #8: steady seconds for the whole clip, per preset
FIRST_TARGET = {"mome-1b": 5.0}  # the first transcript after loading


def timed(fn) -> tuple[float, object]:
    sync()
    start = time.perf_counter()
    out = fn()
    sync()
    return time.perf_counter() - start, out


def profile(model, features, rate: tuple, tokens: int) -> None:
    """Kernels a decode launches, from torch.profiler: per call of `tokens` tokens and of 1 token (the prefill), both
    on the static cache run eagerly (the graph replays the same kernels), and the top kernels by GPU time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cuda = torch.cuda.is_available()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    counts = {}
    for n in (1, tokens):
        options = DecodingOptions(max_new_tokens=n, cuda_graphs=False)
        decode(model, features, rate, "av", options, static=True)  # warm
        with torch_profile(activities=activities) as prof:
            decode(model, features, rate, "av", options, static=True)
            sync()
        kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
        counts[n] = (len(kernels), sum(e.device_time_total for e in kernels) / 1e3)  # (kernels, ms of GPU time)
        if n == tokens:
            table = prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total",
                                              row_limit=15)
    per_step = (counts[tokens][0] - counts[1][0]) / (tokens - 1)
    gpu_ms = (counts[tokens][1] - counts[1][1]) / (tokens - 1)
    print(f"profile: prefill + 1 token: {counts[1][0]} kernels, {counts[1][1]:.1f} ms GPU time; "
          f"each further step: {per_step:.0f} kernels, {gpu_ms:.2f} ms GPU time")
    print(table)


def run_preset(preset: str, rate: tuple, args) -> list[tuple]:
    recog = build_recognizer(preset, args.device)
    model = recog.model
    audio, rois = clip(args.seconds)
    options = DecodingOptions(max_new_tokens=args.tokens)

    def features():
        return recog.features([audio], [rois])

    def ours():
        return decode(model, features(), rate, "av", options)[0].tokens

    def generate(cache: str | None):
        def fn():
            prefix = model.prefix(features(), rate, "av")
            extra = {"cache_implementation": cache} if cache else {}
            out = model.llm.generate(inputs_embeds=prefix.embeds, attention_mask=prefix.attention_mask,
                                     max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                     pad_token_id=model.tokenizer.pad_token_id, **extra)
            return out[0].tolist()
        return fn

    ways = {"mome (static cache + CUDA graph)": ours, "transformers generate (baseline)": generate(None)}
    if args.static_baseline:
        ways["transformers generate, static cache + compile"] = generate("static")
    first, runs, tokens = {}, {name: [] for name in ways}, {}
    with torch.inference_mode():
        for name, fn in ways.items():  # first calls, in this order: mome's first is the model's very first
            first[name], out = timed(fn)
            tokens[name] = len(out)
        for _ in range(args.repeats):
            for name, fn in ways.items():
                runs[name].append(timed(fn)[0])
        encoders = [timed(features)[0] for _ in range(args.repeats)]
        prefill_only = DecodingOptions(max_new_tokens=1)
        prefill = [timed(lambda: decode(model, features(), rate, "av", prefill_only))[0] for _ in range(args.repeats)]
    if args.profile:
        profile(model, features(), rate, args.tokens)
    if args.bf16_adapters:  # last: it changes the model the other ways use (outside inference mode: it casts)
        for part in (model.mome, model.audio, model.video):
            part.to(torch.bfloat16)
        name = "mome, MoME modules and projectors in bf16"
        first[name], out = timed(ours)
        tokens[name] = len(out)
        runs[name] = [timed(ours)[0] for _ in range(args.repeats)]
        ways[name] = ours
    rows = []
    for name in ways:
        rows.append((preset, rate, name, tokens[name], first[name], statistics.median(runs[name])))
    rows.append((preset, rate, "of which encoders (features, Whisper, AV-HuBERT)", 0, None,
                 statistics.median(encoders)))
    rows.append((preset, rate, "of which encoders + prefill + 1 token", 1, None, statistics.median(prefill)))
    del recog, model
    torch.cuda.empty_cache()
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", action="append", metavar="NAME:A,V",
                        help="preset and rate pair (repeatable; default mome-1b:4,2 and mome-8b:16,5)")
    parser.add_argument("--seconds", type=float, default=23.0, help="clip length (default 23)")
    parser.add_argument("--tokens", type=int, default=40, help="tokens generated (default 40)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per way after the first (default 5)")
    parser.add_argument("--no-static-baseline", dest="static_baseline", action="store_false",
                        help="leave out generate with the static cache (its first call compiles for ~20-60 s)")
    parser.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke run of the script (slow)")
    parser.add_argument("--bf16-adapters", action="store_true",
                        help="also time mome with the MoME modules and projectors cast to bf16")
    parser.add_argument("--profile", action="store_true", help="count the kernels of a decode (torch.profiler)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    presets = args.preset or ["mome-1b:4,2", "mome-8b:16,5"]
    rows = []
    for spec in presets:
        name, rate = spec.split(":")
        rows += run_preset(name, tuple(int(r) for r in rate.split(",")), args)

    print(machine_line(args.device))
    print(f"clip {args.seconds:g} s, {args.tokens} tokens, greedy, bf16 backbones, random weights; "
          f"steady = median of {args.repeats}")
    print("| preset | rate | way | tokens | first call, s | steady, s | x real time |")
    print("|---|---|---|---|---|---|---|")
    for preset, rate, way, tokens, first, steady in rows:
        shown_first = "-" if first is None else f"{first:.3f}"
        print(f"| {preset} | {rate[0]},{rate[1]} | {way} | {tokens or '-'} | {shown_first} | {steady:.4f} | "
              f"{args.seconds / steady:.0f} |")
    print()
    for preset in dict.fromkeys(r[0] for r in rows):
        mine = {r[2]: r for r in rows if r[0] == preset}
        ours, base = mine["mome (static cache + CUDA graph)"], mine["transformers generate (baseline)"]
        line = f"- {preset}: mome {ours[5]:.3f} s, {base[5] / ours[5]:.1f}x faster than generate"
        static = mine.get("transformers generate, static cache + compile")
        if static:
            line += f", {static[5] / ours[5]:.1f}x faster than the static-cache generate (first call {static[4]:.1f} s)"
        target = TARGETS.get(preset)
        if target:
            line += f"; target {target:g} s: {'met' if ours[5] <= target else f'missed by {ours[5] - target:.3f} s'}"
        first_target = FIRST_TARGET.get(preset)
        if first_target:
            line += (f"; first transcript {ours[4]:.2f} s (target {first_target:g} s: "
                     f"{'met' if ours[4] <= first_target else 'missed'})")
        print(line)


if __name__ == "__main__":
    main()
