"""One MoME module's cost per call, and the demo model's decoding step, against the module's previous dense form.

    python benchmarks/mome_module.py [--device cpu|cuda] [--repeats 200] [--threads 2] [--no-demo]

At decoding a step feeds one token per clip, so a MoME module multiplies a handful of rows by its weights: the
number of operations it runs, each a kernel launch on a GPU and a dispatch on a CPU, is its cost, not its
arithmetic. mome's module (mome_cli/mome.py) takes the gates from a softmax over the k largest router logits and
runs each projection as one addmm; the baseline in the same run is the form it had before (softmax over every
expert, top-k, renormalisation, gates scattered into a copy, both projections as einsum), written out below with the
same weights and checked to give the same output.

Table 1: the module alone, at the LLM widths of the demo model (192), mome-1b (2048) and mome-8b (4096), with the
paper's 23 routed + 1 shared experts, top 4, bottleneck 12; forward at decoding sizes (1 and 8 tokens) and forward +
backward at a training size (2048 tokens). Operations are the kernels a call launches (on a GPU: CUDA kernels from
the profiler; on a CPU: aten operations that do work, views and allocations left out). On a GPU the input is bf16
and the module fp32, as mome runs them.

Table 2 (CPU, unless --no-demo): the bundled demo model decoding examples/demo.mp4's segments (as `mome transcribe`
cuts them) at (4,2): 40 decoding steps after the prefill, timed, with each form of the module (the median over
rounds that interleave the two); both must give the same transcripts.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mome_cli, not an installed one

from mome_cli.mome import MoME, MoMEConfig

from realsize import machine_line, sync

REPO = Path(__file__).resolve().parent.parent
NOT_WORK = {"aten::view", "aten::reshape", "aten::_reshape_alias", "aten::transpose", "aten::unsqueeze",
            "aten::expand", "aten::slice", "aten::as_strided", "aten::t", "aten::narrow", "aten::permute",
            "aten::select", "aten::alias", "aten::lift_fresh", "aten::detach", "aten::empty", "aten::empty_like",
            "aten::empty_strided", "aten::resize_", "aten::_unsafe_view", "aten::squeeze", "aten::result_type",
            "aten::promote_types", "aten::to", "aten::_to_copy", "aten::contiguous", "aten::clone",
            "aten::resolve_conj", "aten::resolve_neg", "aten::new_empty", "aten::new_empty_strided"}
GEMMS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}  # a kernel of their own beside any copy they make


def dense_einsum(m: MoME, x: torch.Tensor) -> torch.Tensor:
    """The baseline: MoME's forward as it was written before (same weights, same output)."""
    shape = x.shape
    cfg = m.config
    x = x.reshape(-1, shape[-1]).to(m.down_weight.dtype)  # (N, D)
    N = x.shape[0]
    logits = m.router(x)
    probs = logits.to(torch.promote_types(logits.dtype, torch.float32)).softmax(dim=-1)  # (N, R)
    top_p, top_i = probs.topk(cfg.top_k, dim=-1)  # (N, K)
    top_g = top_p / top_p.sum(dim=-1, keepdim=True)
    gates = probs.new_zeros(N, cfg.num_experts)  # (N, E)
    gates[:, : cfg.num_shared] = 1.0
    gates[:, cfg.num_shared:] = gates[:, cfg.num_shared:].scatter(1, top_i, top_g)
    gates = gates.to(x.dtype)
    hidden = F.gelu(torch.einsum("nd,edb->neb", x, m.down_weight) + m.down_bias)  # (N, E, b)
    hidden = hidden * gates.unsqueeze(-1)
    out = torch.einsum("neb,ebd->nd", hidden, m.up_weight) + gates @ m.up_bias  # (N, D)
    return out.reshape(shape)


def kernels(fn, device: str) -> int:
    """Kernels one call of fn launches (CUDA), or aten operations that do work (CPU)."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        sync()
    events = prof.events()
    if device == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if e.name.startswith("aten::") and e.name not in NOT_WORK
               and (e.name in GEMMS or not any(c.name.startswith("aten::") and c.name not in NOT_WORK
                                               for c in e.cpu_children)))


def seconds_per_call(fns: dict, device: str, repeats: int) -> dict:
    """Median over 5 rounds of the mean seconds per call of each fn over `repeats` calls; the rounds interleave."""
    def round_of(fn):
        sync()
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        sync()
        return (time.perf_counter() - start) / repeats

    for fn in fns.values():  # warm-up
        round_of(fn)
    times = {name: [] for name in fns}
    for _ in range(5):
        for name, fn in fns.items():
            times[name].append(round_of(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def module_table(device: str, repeats: int) -> list[str]:
    config = MoMEConfig(num_routed=23, num_shared=1, top_k=4, bottleneck=12)
    input_dtype = torch.bfloat16 if device == "cuda" else torch.float32
    lines = ["| LLM width | tokens | pass | way | operations | µs per call | vs baseline | max abs difference |",
             "|---|---|---|---|---|---|---|---|"]
    for dim in (192, 2048, 4096):
        torch.manual_seed(0)
        m = MoME(dim, config).to(device)
        with torch.no_grad():  # trained-looking weights: the zero-initialised up-projections would hide differences
            for p in (m.up_weight, m.up_bias, m.down_bias):
                p.normal_(0, 0.02)
        for tokens, backward in ((1, False), (8, False), (2048, True)):
            x = torch.randn(tokens, 1, dim, device=device, dtype=input_dtype)
            ways = {"dense einsum (baseline)": lambda x: dense_einsum(m, x), "mome": m}

            def call(way, x=x, backward=backward):
                if backward:
                    m.zero_grad(set_to_none=True)
                    way(x).float().square().mean().backward()
                else:
                    with torch.inference_mode():
                        way(x)

            with torch.no_grad():
                diff = (ways["mome"](x) - ways["dense einsum (baseline)"](x)).abs().max().item()
            calls = {name: (lambda way=way: call(way)) for name, way in ways.items()}
            n = max(10, repeats // (20 if backward else 1))
            times = seconds_per_call(calls, device, n)
            base = times["dense einsum (baseline)"]
            for name, fn in calls.items():
                fn()
                ops = kernels(fn, device)
                lines.append(f"| {dim} | {tokens} | {'forward + backward' if backward else 'forward'} | {name} | "
                             f"{ops} | {times[name] * 1e6:.1f} | {base / times[name]:.2f}x | "
                             f"{0.0 if name == 'dense einsum (baseline)' else diff:.1e} |")
    return lines


def demo_table(repeats: int) -> list[str]:
    from mome_cli.decoding import DecodingOptions, _Stepper, decode
    from mome_cli.preprocess import PreprocessOptions, Preprocessor
    from mome_cli.recognizer import load_recognizer, segments_of, slice_audio, slice_rois

    recognizer = load_recognizer("demo", device="cpu")
    model = recognizer.model
    clip = REPO / "examples" / "demo.mp4"
    media = Preprocessor(PreprocessOptions(mode="av", roi=True, device="cpu"), cache_dir=None)(clip)
    segments = [s for s in segments_of(media, recognizer.max_segment_seconds) if s.speech]
    features = recognizer.features([slice_audio(media, s) for s in segments], [slice_rois(media, s) for s in segments])
    forms = {"dense einsum (baseline)": dense_einsum, "mome": MoME.forward}
    texts, times, ops = {}, {name: [] for name in forms}, {}
    steps = 40  # decoding steps timed from a fresh cache, as many as a 10 s clip's longest segment takes

    @contextlib.contextmanager
    def using(name):
        """Every MoME module of the model runs forms[name] inside the block."""
        ours = MoME.forward
        MoME.forward = forms[name]
        try:
            yield
        finally:
            MoME.forward = ours

    def run(name, timed):
        """Prefill (not timed), then `steps` decoding steps; returns seconds per step (timed) or operations a step."""
        with using(name), torch.inference_mode():
            stepper = _Stepper(model, features, (4, 2), "av", any_rate=False)
            token = stepper.logprobs.argmax(-1)
            if not timed:
                return kernels(lambda: stepper.step(token), "cpu")
            start = time.perf_counter()
            for _ in range(steps):
                stepper.step(token)
            return (time.perf_counter() - start) / steps

    for name in forms:
        with using(name):
            texts[name] = [r.text for r in decode(model, features, (4, 2), "av", DecodingOptions())]
        ops[name] = run(name, timed=False)
        run(name, timed=True)  # warm-up
    rounds = max(5, repeats // 20)
    for _ in range(rounds):  # interleaved
        for name in forms:
            times[name].append(run(name, timed=True))
    times = {name: statistics.median(t) for name, t in times.items()}
    base = times["dense einsum (baseline)"]
    same = texts["mome"] == texts["dense einsum (baseline)"]
    lines = [f"Demo model, {len(segments)} segments of examples/demo.mp4 at (4,2), one decoding step "
             f"({model.config.mome.position} MoME beside each of {len(model.mome)} layers); same transcripts: "
             f"{'yes' if same else 'NO'}; median of {rounds} rounds of {steps} steps", "",
             "| way | operations per step | ms per step | vs baseline |", "|---|---|---|---|"]
    for name in forms:
        lines.append(f"| {name} | {ops[name]} | {times[name] * 1e3:.3f} | {base / times[name]:.2f}x |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="[cuda if any]")
    parser.add_argument("--repeats", type=int, default=200, help="calls per timed round [200]")
    parser.add_argument("--threads", type=int, default=2, help="torch threads on a CPU [2]")
    parser.add_argument("--no-demo", action="store_true", help="leave out table 2 (the demo model on the CPU)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is usable here")
    torch.set_num_threads(args.threads)
    print(machine_line(args.device))
    print()
    print("\n".join(module_table(args.device, args.repeats)))
    if not args.no_demo:
        print()
        print("\n".join(demo_table(args.repeats)))


if __name__ == "__main__":
    main()
