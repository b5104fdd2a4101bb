"""Forward time of the real-size frozen encoders on one 23 s clip: Whisper-medium.en's encoder and AV-HuBERT Large.

    python benchmarks/encoders.py [--device cuda] [--seconds 23] [--repeats 5]

Random weights of the real configurations (no download; timing does not depend on the values). Whisper always
encodes its 30 s window, so its cost is the same for any clip up to 30 s; AV-HuBERT's grows with the frames (25 per
second). The baseline in the same run is transformers' own WhisperEncoder called on precomputed mel features, so
the table also shows what mome's wrapper adds (feature extraction, trimming to the real frames).
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's mome_cli, not an installed one

from mome_cli.avhubert import AVHubertConfig, AVHubertVideoEncoder
from mome_cli.encoders import SAMPLE_RATE

from realsize import build_whisper_medium

def timed(fns: dict, device: str, repeats: int) -> dict:
    """Median seconds of each fn() after one warm-up call each; the repeats interleave the fns, so a load that comes
    and goes on the machine weighs on all of them alike."""
    def once(fn):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            times[name].append(once(fn))
    return {name: statistics.median(t) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seconds", type=float, default=23.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = args.device
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA GPU is usable here")
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    torch.manual_seed(0)
    whisper = build_whisper_medium(device, dtype)
    avhubert = AVHubertVideoEncoder(AVHubertConfig.large()).eval().requires_grad_(False).to(device=device, dtype=dtype)
    audio = np.random.default_rng(0).standard_normal(int(args.seconds * SAMPLE_RATE)).astype(np.float32) * 0.1
    frames = torch.randn(1, int(args.seconds * 25), 88, 88, device=device, dtype=dtype)
    mel = whisper.feature_extractor([audio], sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    mel = mel.to(device=device, dtype=dtype)

    with torch.inference_mode():
        rows = timed({
            "Whisper encoder, transformers on mel (baseline)": lambda: whisper.encoder(mel),
            "Whisper encoder, mome (features + encoder + trim)": lambda: whisper([audio]),
            "AV-HuBERT Large video encoder": lambda: avhubert(frames),
        }, device, args.repeats).items()

    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"device {device} ({name}), dtype {str(dtype).split('.')[-1]}, torch {torch.__version__}, "
          f"threads {torch.get_num_threads()}, clip {args.seconds:g} s, median of {args.repeats}")
    print(f"| {'stage':<52} | {'seconds':>8} | {'x real time':>11} |")
    print(f"|{'-' * 54}|{'-' * 10}|{'-' * 13}|")
    for stage, seconds in rows:
        print(f"| {stage:<52} | {seconds:8.3f} | {args.seconds / seconds:11.1f} |")


if __name__ == "__main__":
    main()
