"""What an augmented training step spends on its inputs: encoding only what augmentation changed, against encoding
every clip of the batch afresh (what `mome train` did before).

    python benchmarks/augmented_inputs.py [--model demo] [--clip examples/demo.mp4] [--seconds 3]
                                          [--utterances 48] [--steps 6] [--device auto] [--threads 2]

A manifest of `--utterances` copies of the clip's first `--seconds` (LRS3's clips last 3 s on average; mouth crops,
as `--roi`), the demo model's frozen encoders (or any
checkpoint directory or preset `load_recognizer` takes), batches as `mome train` makes them (batch_frames 1000, the
default), and for each augmentation setting the median over `--steps` steps of:

- baseline: the step's augmented clips (babble drawn as `mome train` draws it) all encoded, audio and video;
- mome: `TrainingData.inputs`, which reads the stored features of what augmentation left unchanged and encodes the
  rest (babble: the audio of the utterances it hits; a time mask: its modality in every utterance).

Both give the same features within each utterance's length (tests/test_training.py checks it). Reading the clips and
encoding the store once are left out (they are the same as for a run without augmentation).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SETTINGS = [  # (name, TrainConfig augmentation fields)
    ("babble 0.25", {"babble_prob": 0.25}),
    ("babble 0.5", {"babble_prob": 0.5}),
    ("babble 1.0", {"babble_prob": 1.0}),
    ("babble 0.5 + video mask", {"babble_prob": 0.5, "mask_video": True}),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--clip", default=str(REPO / "examples" / "demo.mp4"))
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--utterances", type=int, default=48)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import numpy as np
    import torch
    import transformers

    from cpu_transcribe import cpu_name
    from mome_cli.recognizer import load_recognizer
    from mome_cli.train_config import TrainConfig
    from mome_cli.train_data import TrainingData

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        manifest = Path(tmp) / "train.jsonl"
        clip = Path(tmp) / "clip.mp4"
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", args.clip, "-t", str(args.seconds),
                        "-c:v", "libx264", "-c:a", "aac", str(clip)], check=True)
        row = {"video": str(clip), "text": "the clip"}
        manifest.write_text("".join(json.dumps({"id": f"u{i:03d}", **row}) + "\n" for i in range(args.utterances)))
        recognizer = load_recognizer(args.model, device=args.device, home=home)
        device = next(recognizer.model.parameters()).device
        print(f"device {device}, {cpu_name()}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}, {torch.get_num_threads()} threads; model {args.model}, "
              f"{args.utterances} x {args.seconds:g} s of {Path(args.clip).name}; median of {args.steps} steps\n")
        print("| augmentation | utterances a batch (mean) | audios encoded by mome (mean) | way | ms a step "
              "| vs baseline |")
        print("|---|---|---|---|---|---|")
        for name, fields in SETTINGS:
            config = TrainConfig(train=str(manifest), output=str(Path(tmp) / "o"), steps=1, roi=True,
                                 mode=recognizer.model.config.modes[0], **fields)
            data = TrainingData(config, home)
            data.prepare(recognizer, device)
            batches = data.epoch_batches(0)
            baseline, ours, encoded, sizes = [], [], [], []
            for step in range(args.steps):
                batch = batches[step % len(batches)]
                rng = np.random.default_rng([config.seed, step, 0])  # the step's augmentation, as inputs() draws it
                start = time.perf_counter()
                augmented = [data._augment(data.kept[j], rng) for j in batch]
                data._features([clip for clip, _ in augmented])
                if device.type == "cuda":
                    torch.cuda.synchronize()
                baseline.append(time.perf_counter() - start)
                encoded.append(sum("audio" in names for _, names in augmented))
                sizes.append(len(batch))
                start = time.perf_counter()
                data.inputs(batch, step)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                ours.append(time.perf_counter() - start)
            b, m = statistics.median(baseline), statistics.median(ours)
            size = f"{statistics.mean(sizes):.1f}"
            print(f"| {name} | {size} | - | encode every clip (baseline) | {1000 * b:.1f} | 1.00x |")
            print(f"| {name} | {size} | {sum(encoded) / len(encoded):.1f} | mome | {1000 * m:.1f} | {b / m:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
