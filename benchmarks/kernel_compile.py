"""What a machine's first use of mome's Triton kernels costs: each kernel's first call with an empty Triton cache
(compilation, then the run) against its next call (the run alone), at mome-1b's sizes (#8, first transcript).

    python benchmarks/kernel_compile.py [--cache-dir DIR]   (needs a CUDA GPU; DIR [a new temporary folder])

Triton keeps what it compiles in its cache (~/.triton/cache, or $TRITON_CACHE_DIR), so only a machine's first process
pays the first column; the first kernel's call also holds Triton's own start-up. The second column is one call from
Python, launch included (not the kernel's GPU time: see latency.py --profile).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mome_cli, not an installed one


def timed_twice(fn) -> tuple[float, float]:
    import torch

    times = []
    for _ in range(2):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return times[0], times[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache-dir", help="Triton cache folder to start from [a new, empty one]")
    args = parser.parse_args()
    os.environ["TRITON_CACHE_DIR"] = args.cache_dir or tempfile.mkdtemp(prefix="triton-cache-")  # before any compile

    import torch

    from mome_cli import llama_kernels as lk, mome_kernels as mk
    from mome_cli.mome import MoME, MoMEConfig

    if not torch.cuda.is_available():
        raise SystemExit("kernel_compile.py needs a CUDA GPU")
    cuda, bf16 = "cuda", torch.bfloat16
    B, N, K, d, S, H, F = 1, 32, 8, 64, 704, 2048, 8192  # Llama 3.2-1B, a cache of 704 slots (a 23 s clip at 4,2)
    rows = []
    with torch.inference_mode():
        qkv = torch.randn(B, 1, N + 2 * K, d, device=cuda, dtype=bf16)
        cos, sin = torch.randn(2, B, 1, 1, d, device=cuda, dtype=bf16)
        keys, values = torch.randn(2, B, K, S, d, device=cuda, dtype=bf16)
        slot = torch.tensor([300], device=cuda)
        rows.append(("rope_cache", timed_twice(lambda: lk.rope_cache(qkv, cos, sin, keys, values, slot, N))))
        q = torch.randn(B, N, 1, d, device=cuda, dtype=bf16)
        bias = torch.zeros(B, 1, 1, S, device=cuda, dtype=bf16)
        rows.append(("attend (split + join)", timed_twice(lambda: lk.attend(q, keys, values, bias))))
        gate_up = torch.randn(B, 1, 2 * F, device=cuda, dtype=bf16)
        rows.append(("silu_mul", timed_twice(lambda: lk.silu_mul(gate_up))))
        h, a = torch.randn(2, B, 1, H, device=cuda, dtype=bf16)
        weight = torch.randn(H, device=cuda, dtype=bf16)
        rows.append(("add_rms_norm", timed_twice(lambda: lk.add_rms_norm(h, a, weight, 1e-5))))
        module = MoME(H, MoMEConfig()).to(cuda)
        torch.nn.init.normal_(module.up_weight, std=0.02)
        x, out = torch.randn(2, B, 1, H, device=cuda, dtype=bf16)
        rows.append(("MoME (route_down + gate_up)", timed_twice(lambda: mk.add_mome(module, x, out))))
    print(f"device {torch.cuda.get_device_name()}, torch {torch.__version__}, "
          f"Triton cache {os.environ['TRITON_CACHE_DIR']}")
    print("| kernel | first call (compile + run), s | next call, µs |")
    print("|---|---|---|")
    for name, (first, then) in rows:
        print(f"| {name} | {first:.2f} | {1e6 * then:.0f} |")
    print(f"- in all: {sum(first for _, (first, _) in rows):.1f} s on a machine's first run, once")


if __name__ == "__main__":
    main()
