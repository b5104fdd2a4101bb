"""The bundled demo model transcribing one clip on the CPU: the whole `mome transcribe` command, and its parts.

    python benchmarks/cpu_transcribe.py [--clip examples/demo.mp4] [--runs 3] [--repeats 5] [--threads 2]

Two tables.

1. Whole processes, each started `--runs` times under /usr/bin/time (wall seconds and peak RSS, the median and the
   largest): the `mome transcribe` command the README shows (mouth crops as input, no preprocessing cache), on
   mome's own Llama and Whisper code (llama.py, whisper.py, the CPU default) and, as the baseline, on transformers'
   classes (MOME_NATIVE=0); and the start-up such commands pay before they read their input: Python importing torch
   alone, then torch and the transformers modules the demo model is made of (Llama and the Whisper encoder).
2. One process, after a warm-up: loading the model with each (the first load of each includes its imports; the
   native one is loaded first, before transformers is imported), reading the clip (media stage, no cache), the two
   encoders with each, and decoding at the fastest and the slowest rate pair: mome's decoder on the native LLM, on
   transformers' LLM, and transformers' `generate` on its LLM (greedy, dynamic cache, the same number of new
   tokens). The medians of `--repeats` runs, interleaved. Every way must give the same text.

The clip is cut into segments as `mome transcribe` cuts it (the demo audio encoder's window is 8 s), and both
decoders get the same batch of segments.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # this checkout's mome_cli, not an installed one (in the child processes too)
TARGET_SECONDS, TARGET_RSS_MIB = 2.0, 1024  # issue #8, point 5


def timed_process(argv: list[str], runs: int, env: dict[str, str]) -> tuple[list[float], list[float]]:
    """Wall seconds and peak RSS (MiB) of `runs` runs of argv in environment env, from /usr/bin/time -v."""
    walls, rss = [], []
    for _ in range(runs):
        with tempfile.NamedTemporaryFile("r", suffix=".txt") as report:
            started = time.perf_counter()
            done = subprocess.run(["/usr/bin/time", "-v", "-o", report.name, *argv], capture_output=True, text=True,
                                  env=env)
            walls.append(time.perf_counter() - started)
            if done.returncode != 0:
                sys.exit(f"{' '.join(argv)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
            line = next(line for line in report.read().splitlines() if "Maximum resident set size" in line)
            rss.append(int(line.split(":")[1]) / 1024)
    return walls, rss


def whole_processes(clip: Path, runs: int, threads: int) -> list[tuple[str, list[float], list[float]]]:
    python = sys.executable
    imports = ("import torch; from transformers.models.llama.modeling_llama import LlamaForCausalLM; "
               "from transformers.models.whisper.modeling_whisper import WhisperEncoder")
    with tempfile.TemporaryDirectory() as out:
        rows = [
            ("baseline: python -c 'import torch'", [python, "-c", "import torch"]),
            ("baseline: import torch + transformers' Llama and Whisper modules", [python, "-c", imports]),
        ]
        command = [python, "-m", "mome_cli", "transcribe", str(clip), "--roi", "--no-cache", "--overwrite", "-o", out,
                   "--stdout"]
        path = os.pathsep.join([str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])])
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "PYTHONPATH": path}  # the children's torch threads
        timed = [(name, *timed_process(argv, runs, env)) for name, argv in rows]
        timed.append((f"baseline: mome transcribe {clip.name} --roi, transformers' backbones (MOME_NATIVE=0)",
                      *timed_process(command, runs, {**env, "MOME_NATIVE": "0"})))
        timed.append((f"mome transcribe {clip.name} --roi (whole command, native backbones)",
                      *timed_process(command, runs, env)))
        return timed


def in_process(clip: Path, repeats: int) -> tuple[list[tuple], dict]:
    import torch

    from mome_cli.decoding import DecodingOptions, decode
    from mome_cli.preprocess import PreprocessOptions, Preprocessor
    from mome_cli.recognizer import load_recognizer, segments_of, slice_audio, slice_rois

    started = time.perf_counter()
    recognizer = load_recognizer("demo", device="cpu")  # native backbones, before transformers is imported
    native_load = time.perf_counter() - started
    os.environ["MOME_NATIVE"] = "0"
    started = time.perf_counter()
    theirs = load_recognizer("demo", device="cpu")  # transformers' backbones
    transformers_load = time.perf_counter() - started
    del os.environ["MOME_NATIVE"]
    options = DecodingOptions()
    preprocess = Preprocessor(PreprocessOptions(mode="av", roi=True, device="cpu"), cache_dir=None)
    media = preprocess(clip)
    segments = [s for s in segments_of(media, recognizer.max_segment_seconds) if s.speech]
    audio = [slice_audio(media, s) for s in segments]
    rois = [slice_rois(media, s) for s in segments]
    features = recognizer.features(audio, rois)
    their_features = theirs.features(audio, rois)
    tokenizer = theirs.model.tokenizer

    def generate(rate):  # transformers' own greedy loop on the prefix mome's decoder starts from
        with torch.inference_mode():
            prefix = theirs.model.prefix(their_features, rate, "av")
            ids = theirs.model.llm.generate(
                inputs_embeds=prefix.embeds, attention_mask=prefix.attention_mask,
                max_new_tokens=options.max_new_tokens, do_sample=False, num_beams=1,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        return [" ".join(tokenizer.decode(row, skip_special_tokens=True).split()) for row in ids.tolist()]

    def ours(rate, recog=recognizer, feats=features):
        return [r.text for r in decode(recog.model, feats, rate, "av", options)]

    jobs = {"media stage (probe, decode, crops)": lambda: preprocess(clip),
            "encoders (audio + video), transformers' Whisper (baseline)": lambda: theirs.features(audio, rois),
            "encoders (audio + video), native Whisper": lambda: recognizer.features(audio, rois)}
    for rate in ((4, 2), (16, 5)):
        r = f"{rate[0]},{rate[1]}"
        jobs[f"decode {r}: transformers generate (baseline)"] = lambda rate=rate: generate(rate)
        jobs[f"decode {r}: mome's decoder, transformers' Llama"] = (
            lambda rate=rate: ours(rate, theirs, their_features))
        jobs[f"decode {r}: mome's decoder, native Llama"] = lambda rate=rate: ours(rate)
    for fn in jobs.values():  # warm-up
        fn()
    times = {name: [] for name in jobs}
    for _ in range(repeats):
        for name, fn in jobs.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    same = {rate: ours(rate) == ours(rate, theirs, their_features) == generate(rate) for rate in ((4, 2), (16, 5))}
    tokens = {rate: max(len(r.tokens) for r in decode(recognizer.model, features, rate, "av", options)) + 1
              for rate in ((4, 2), (16, 5))}
    rows = [("model load, native backbones (first, imports included)", [native_load]),
            ("model load, transformers' backbones (first, imports included)", [transformers_load])]
    rows += [(n, t) for n, t in times.items()]
    facts = dict(duration=media.duration, segments=[(round(s.start, 2), round(s.end, 2)) for s in segments],
                 same=same, tokens=tokens)
    return rows, facts


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clip", type=Path, default=REPO / "examples" / "demo.mp4", help="[examples/demo.mp4]")
    parser.add_argument("--runs", type=int, default=3, help="starts of each whole process [3]")
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of each in-process stage [5]")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads [2]")
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    processes = whole_processes(args.clip, args.runs, args.threads)
    stages, facts = in_process(args.clip, args.repeats)
    import transformers

    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores, {args.threads} torch threads; torch {torch.__version__}, "
          f"transformers {transformers.__version__}, Python {platform.python_version()}")
    print(f"Clip: {args.clip.name}, {facts['duration']:.2f} s, decoded as segments {facts['segments']}; "
          f"tokens per segment (EOS included, longest): {facts['tokens']}\n")
    print("| whole process | runs | wall s, median | wall s, max | peak RSS MiB, max |")
    print("|---|---|---|---|---|")
    for name, walls, rss in processes:
        print(f"| {name} | {len(walls)} | {statistics.median(walls):.2f} | {max(walls):.2f} | {max(rss):.0f} |")
    print("\n| in one process, after warm-up | runs | seconds, median | x real time |")
    print("|---|---|---|---|")
    for name, seconds in stages:
        median = statistics.median(seconds)
        print(f"| {name} | {len(seconds)} | {median:.3f} | {facts['duration'] / median:.1f} |")
    medians = {name: statistics.median(s) for name, s in stages}
    print()
    for rate in ((4, 2), (16, 5)):
        a, v = rate
        base = medians[f"decode {a},{v}: transformers generate (baseline)"]
        ours = medians[f"decode {a},{v}: mome's decoder, native Llama"]
        transcribe = (medians["media stage (probe, decode, crops)"] + medians["encoders (audio + video), native Whisper"]
                      + ours)
        print(f"- ({a},{v}): mome's decoder on the native Llama {base / ours:.2f}x the speed of generate, same text "
              f"every way: {'yes' if facts['same'][rate] else 'NO'}; media + encoders + decode = {transcribe:.2f} s "
              f"(target {TARGET_SECONDS:g} s: {'met' if transcribe <= TARGET_SECONDS else 'missed'})")
    whole_wall, before = statistics.median(processes[-1][1]), statistics.median(processes[-2][1])
    whole_rss = max(processes[-1][2])
    print(f"- whole command: {whole_wall:.2f} s, {before / whole_wall:.2f}x faster than with transformers' backbones "
          f"({before:.2f} s) (target {TARGET_SECONDS:g} s: "
          f"{'met' if whole_wall <= TARGET_SECONDS else f'missed by {whole_wall - TARGET_SECONDS:.2f} s'}), "
          f"of which {statistics.median(processes[0][1]):.2f} s is importing torch; peak RSS {whole_rss:.0f} MiB "
          f"(target {TARGET_RSS_MIB} MiB: {'met' if whole_rss <= TARGET_RSS_MIB else 'missed'})")


if __name__ == "__main__":
    main()
