"""Latency of one clip end to end on a GPU: encoders + prefill + N generated tokens, mome against transformers (#8).

    python benchmarks/latency.py                                  # mome-1b at 4,2 and mome-8b at 16,5, 23 s, 40 tokens
    python benchmarks/latency.py --preset mome-1b:4,2 --no-static-baseline

Each preset is built with random weights (realsize.py): a random LM never ends early, so every run generates exactly
--tokens tokens. One clip of --seconds: noise audio and random 96 x 96 mouth crops, already in memory (decoding the
media file is left out). Every row times the same work from those arrays to the tokens: Whisper features and encoder,
AV-HuBERT, compression and projection, the prefix, prefill and the tokens.

- mome: mome_cli.decoding.decode, greedy (StaticGreedy: static cache, decode step captured as a CUDA graph), with the
  LLM and Whisper on mome's own code (llama.py: fused q/k/v and gate/up projections, RMSNorm and rotary embedding in
  fewer kernels; whisper.py), as `mome transcribe` loads them; and the same on transformers' LlamaForCausalLM and
  WhisperEncoder (what mome ran before, and still runs with MOME_NATIVE=0), the same weights; and on mome's own code
  with the MoME modules as PyTorch operations (MOME_KERNELS=0) instead of mome_kernels.py's two Triton kernels;
- baseline: transformers `generate` on the same model and prefix (dynamic cache), greedy, min = max = --tokens;
- second baseline: `generate` with cache_implementation="static", which compiles the decode step with torch.compile.

"first" is the first call after the model is loaded (mome: graph capture; static baseline: compilation), "steady"
the median of --repeats calls after it. The calls alternate between the ways, so a load that comes and goes weighs
on all alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mome_cli, not an installed one

from mome_cli.decoding import DecodingOptions, _static_greedy, decode

from realsize import build_recognizer, clip, machine_line, native, sync

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
    if cuda:  # the same steps replayed as a CUDA graph: wall time a step, against the kernels' own time
        walls = {}
        for n in (tokens, 1):  # the runner made and captured for `tokens` serves 1 too: the same cache length
            options = DecodingOptions(max_new_tokens=n)
            decode(model, features, rate, "av", options)
            walls[n] = statistics.median(timed(lambda: decode(model, features, rate, "av", options))[0]
                                         for _ in range(5))
        wall_ms = 1e3 * (walls[tokens] - walls[1]) / (tokens - 1)
        print(f"graph replay: {wall_ms:.2f} ms a step of wall time for {gpu_ms:.2f} ms of kernel time: "
              f"{1e3 * (wall_ms - gpu_ms) / per_step:.1f} µs a kernel between kernels")
    print(table)


def profile_encoders(recognizer, audio, rois) -> None:
    """Kernels and GPU time of the encoders (features, Whisper, AV-HuBERT) for one clip, by operator."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    cuda = torch.cuda.is_available()
    recognizer.features([audio], [rois])  # warm
    sync()
    with torch_profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        recognizer.features([audio], [rois])
        sync()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    alone = {name: statistics.median(timed(lambda: recognizer.features(*inputs))[0] for _ in range(5))
             for name, inputs in (("audio", ([audio], None)), ("video", (None, [rois])))}
    print(f"profile of the encoders: {len(kernels)} kernels, "
          f"{sum(e.device_time_total for e in kernels) / 1e3:.1f} ms GPU time; wall time alone (median of 5): "
          f"audio (features + Whisper) {1e3 * alone['audio']:.1f} ms, video (AV-HuBERT) {1e3 * alone['video']:.1f} ms")
    print(prof.key_averages().table(sort_by="self_cuda_time_total" if cuda else "self_cpu_time_total", row_limit=12))


OURS = "mome (own Llama and Whisper code; static cache + CUDA graph)"
OURS_HF = "mome on transformers' Llama and Whisper (static cache + CUDA graph)"
OURS_NO_KERNELS = "mome (own code), no Triton kernels: MoME and decoding step as PyTorch operations (MOME_KERNELS=0)"
OURS_COMPILED = "mome (own code), step compiled with torch.compile before capture"
GENERATE = "transformers generate (baseline)"
GENERATE_STATIC = "transformers generate, static cache + compile"


def run_preset(preset: str, rate: tuple, args) -> list[tuple]:
    recog = build_recognizer(preset, args.device)
    recognizers = {OURS: native(recog), OURS_HF: recog}  # the same weights, on either code
    audio, rois = clip(args.seconds)
    options = DecodingOptions(max_new_tokens=args.tokens)

    def ours(r):
        return lambda: decode(r.model, r.features([audio], [rois]), rate, "av", options)[0].tokens

    def generate(cache: str | None):
        def fn():
            prefix = recog.model.prefix(recog.features([audio], [rois]), rate, "av")
            extra = {"cache_implementation": cache} if cache else {}
            out = recog.model.llm.generate(inputs_embeds=prefix.embeds, attention_mask=prefix.attention_mask,
                                           max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False,
                                           pad_token_id=recog.model.tokenizer.pad_token_id, **extra)
            return out[0].tolist()
        return fn

    ways = {name: ours(r) for name, r in recognizers.items()}
    unfused = native(recog)  # a copy whose MoME modules run as PyTorch operations (MOME_KERNELS=0) at every step

    def without_kernels():
        before = os.environ.get("MOME_KERNELS")
        os.environ["MOME_KERNELS"] = "0"
        try:
            return ours(unfused)()
        finally:
            if before is None:
                del os.environ["MOME_KERNELS"]
            else:
                os.environ["MOME_KERNELS"] = before

    ways[OURS_NO_KERNELS] = without_kernels
    if args.compile:  # a third copy (same weights), whose runner compiles its step before capturing it
        compiled = native(recog)
        with torch.inference_mode():
            prefix = compiled.model.prefix(compiled.features([audio], [rois]), rate, "av")
            _static_greedy(compiled.model, prefix, args.tokens, compiled.model.tokenizer.eos_token_id,
                           graphs=torch.cuda.is_available()).compile()
        ways[OURS_COMPILED] = ours(compiled)
    ways[GENERATE] = generate(None)
    if args.static_baseline:
        ways[GENERATE_STATIC] = generate("static")
    first, runs, tokens = {}, {name: [] for name in ways}, {}
    parts = {}
    with torch.inference_mode():
        for name, fn in list(ways.items()):  # first calls, in this order: each mome way's is its model's very first
            try:
                first[name], out = timed(fn)
            except Exception as e:  # the compiled step is an experiment: its failure is reported, not fatal
                print(f"{preset} {rate}, {name}: failed: {type(e).__name__}: {str(e)[:2000]}")
                del ways[name], runs[name]
                continue
            tokens[name] = len(out)
        for _ in range(args.repeats):
            for name, fn in ways.items():
                runs[name].append(timed(fn)[0])
        prefill_only = DecodingOptions(max_new_tokens=1)
        for name, r in recognizers.items():
            encoders = [timed(lambda: r.features([audio], [rois]))[0] for _ in range(args.repeats)]
            prefill = [timed(lambda: decode(r.model, r.features([audio], [rois]), rate, "av", prefill_only))[0]
                       for _ in range(args.repeats)]
            parts[name] = statistics.median(encoders), statistics.median(prefill)
    with torch.inference_mode():  # random weights put many logits near a tie: bf16 rounding may break them apart
        same = decode(recognizers[OURS].model, recognizers[OURS].features([audio], [rois]), rate, "av", options)[0]
        other = decode(recog.model, recog.features([audio], [rois]), rate, "av", options)[0]
        agree = next((i for i, (a, b) in enumerate(zip(same.tokens, other.tokens)) if a != b), len(same.tokens))
        print(f"{preset} {rate}: own code and transformers' agree on the first {agree} of {len(same.tokens)} tokens")
    if args.profile:
        for name, r in recognizers.items():
            print(f"{preset} {rate}, {name}:")
            with torch.inference_mode():
                profile(r.model, r.features([audio], [rois]), rate, args.tokens)
                profile_encoders(r, audio, rois)
    if args.bf16_adapters:  # last: it changes the model the other ways use (outside inference mode: it casts)
        model = recognizers[OURS].model
        for part in (model.mome, model.audio, model.video):
            part.to(torch.bfloat16)
        name = "mome, MoME modules and projectors in bf16"
        first[name], out = timed(ways[OURS])
        tokens[name] = len(out)
        runs[name] = [timed(ways[OURS])[0] for _ in range(args.repeats)]
        ways[name] = ways[OURS]
    rows = []
    for name in ways:
        rows.append((preset, rate, name, tokens[name], first[name], statistics.median(runs[name])))
    for name, (encoders, prefill) in parts.items():
        short = "own code" if name == OURS else "transformers'"
        rows.append((preset, rate, f"of which encoders (features, Whisper, AV-HuBERT), {short}", 0, None, encoders))
        rows.append((preset, rate, f"of which encoders + prefill + 1 token, {short}", 1, None, prefill))
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
    parser.add_argument("--compile", action="store_true",
                        help="also time mome with its decoding step compiled by torch.compile before capture")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("this benchmark needs a CUDA GPU (or --device cpu for a smoke run)")
    presets = args.preset or ["mome-1b:4,2", "mome-8b:16,5"]
    rows = []
    for spec in presets:
        name, rate = spec.split(":")
        rows += run_preset(name, tuple(int(r) for r in rate.split(",")), args)
        torch.cuda.empty_cache()  # the preset's models are gone with run_preset's frame

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
        ours, base, on_hf = mine[OURS], mine[GENERATE], mine[OURS_HF]
        line = (f"- {preset}: mome {ours[5]:.3f} s, {base[5] / ours[5]:.1f}x faster than generate, "
                f"{on_hf[5] / ours[5]:.2f}x faster than mome on transformers' backbones, "
                f"{mine[OURS_NO_KERNELS][5] / ours[5]:.2f}x faster than without the MoME kernels")
        static = mine.get(GENERATE_STATIC)
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
