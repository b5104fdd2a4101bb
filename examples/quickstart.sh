#!/usr/bin/env bash
# The whole loop on a CPU in under a minute: three short clips made with ffmpeg, a tiny MoME trained on them with
# `mome train`, transcribed with `mome transcribe`, and scored at every rate pair and two noise levels with
# `mome evaluate`.
#
#   bash examples/quickstart.sh [OUT_DIR]          (needs mome installed, and ffmpeg)
#
# What it shows is the tool, not recognition: the tiny preset's backbones are random and frozen, so the model can only
# memorise clips that already look and sound different (test patterns and tones here), and the WER shown is on those
# clips. Real recognition needs real backbones: mome-1b/3b/8b with a trained adapter, or the demo model.
set -euo pipefail
out=$(realpath -m "${1:-quickstart}")
export OMP_NUM_THREADS=1  # tiny models: one thread per process is fastest
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p "$out/clips"

clip() {  # clip NAME VIDEO_SOURCE AUDIO_SOURCE SECONDS: a 96x96 25 fps mouth-crop-sized video with sound
    ffmpeg -nostdin -loglevel error -y -f lavfi -i "$2=size=96x96:rate=25:duration=$4" -f lavfi -i "$3:duration=$4" \
        -c:v libx264 -pix_fmt yuv420p -c:a aac -shortest "$out/clips/$1.mp4"
}
clip hello testsrc2 sine=frequency=300 1.2
clip morning rgbtestsrc anoisesrc=color=pink:amplitude=0.3:seed=7 1.8
clip thanks smptebars sine=frequency=900 1.5
cat > "$out/clips/train.jsonl" <<'JSON'
{"id": "hello", "video": "hello.mp4", "text": "hello world"}
{"id": "morning", "video": "morning.mp4", "text": "good morning"}
{"id": "thanks", "video": "thanks.mp4", "text": "thank you"}
JSON

rm -rf "$out/run"  # a fresh run (an existing run is only continued with --resume)
mome train --config recipes/tiny.toml --train "$out/clips/train.jsonl" --valid "$out/clips/train.jsonl" --roi \
    -o "$out/run" --steps 240 --batch-frames 100 --eval-every 240 --log-every 60
mome transcribe "$out/clips" --model "$out/run" --roi --stdout -o "$out/transcripts"
mome transcribe "$out/clips/morning.mp4" --model "$out/run" --roi --rate 16,5 --stdout -o "$out/transcripts-16-5"
mome evaluate --dataset "$out/clips/train.jsonl" --model "$out/run" --roi --snr clean,5 -o "$out/eval"
echo "transcripts in $out/transcripts, report.json and wer.png in $out/eval" >&2
