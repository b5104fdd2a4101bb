#!/usr/bin/env bash
# The demo model's MoME stage (`mome train`, recipes/demo.toml) on the lent GPU machine, in one call of the device
# tool from the repository root, resumable across calls and sessions:
#
#   bash scripts/device_demo.sh [--device cuda] [--budget SECONDS] [--steps N] [--utterances N]
#                                                                         (a device call with carry [".device"])
#
# Before the first call, here: `bash scripts/device_kit.sh` (the tools that machine lacks, into .device/: 27 MB) and
# the frozen backbones the recipe trains on, what `mome train` reads of the last folder of scripts/make_demo.sh (14 MB;
# the working tree, the kit and these must stay under the tool's 64 MiB):
#   mkdir -p .device/backbones
#   cp -rL work/backbones/{backbones.json,projectors.safetensors,audio_encoder,video_encoder,llm} .device/backbones/
# After a call, copy what came back from $OUT into .device/demo-run: the next call resumes it. Once it has finished,
# it is bundled here as make_demo.sh bundles the run it trains on the CPU:
#   python -m mome_cli.pretrain bundle .device/demo-run --backbones work/backbones -o mome_cli/models/demo
#
# What it does there:
# 1. unpacks the kit (with Python: no xz needed): ffmpeg and ffprobe, libespeak-ng and the Python wheels (those not
#    importable already) into /tmp/mome-device, the fortunes into /usr/share/games/fortunes;
# 2. makes the corpus as scripts/make_demo.sh does (mome_cli.synth, seed 0, one process a core) and reads its
#    clips once in parallel into the clip cache, which `mome train` then reads;
# 3. trains (or resumes .device/demo-run) with the recipe on the device, stopped and saved after --budget seconds
#    (default: what is left of 7 minutes since the start) if it has not finished, and copies the run's files
#    (config.json, model.safetensors, train_config.json, trainer_state.pt, log.jsonl) to $OUT;
# 4. when the run has finished and 2 minutes are left of 9.5, `mome evaluate` on the test split in modes av, a and v
#    (clean), the reports to $OUT as evals.tar (6 files in all: the tool brings back 8 of at most 16 MiB); otherwise
#    the next call resumes the finished run (no more steps) and evaluates it.
set -euo pipefail
start=$SECONDS
device=cuda budget="" steps=() utterances=4000
while (( $# )); do
    case $1 in
        --device) device=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        --steps) steps=(--steps "$2"); shift 2 ;;
        --utterances) utterances=$2; shift 2 ;;  # a smaller corpus, to try the script out
        *) echo "device_demo.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kit=${MOME_DEVICE_KIT:-$repo/.device}
root=${MOME_DEVICE_ROOT:-/tmp/mome-device}  # fixed: the run's saved settings name the corpus by its path
out=${OUT:?device_demo.sh: OUT (the folder that comes back) is not set}
log() { printf '[device_demo %4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }
for need in "$kit"/{ffmpeg,espeak,fortunes}.tar.xz "$kit/backbones/backbones.json"; do
    [[ -e $need ]] || { echo "device_demo.sh: $need is missing (see the top of this script)" >&2; exit 4; }
done

# 1. tools
unpack() {  # unpack ARCHIVE FOLDER, with Python's tarfile: no xz program needed
    mkdir -p "$2"
    python3 -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter="data")' "$1" "$2"
}
[[ -x $root/bin/ffprobe ]] || unpack "$kit/ffmpeg.tar.xz" "$root/bin"
[[ -f $root/espeak/libespeak-ng.so.1 ]] || unpack "$kit/espeak.tar.xz" "$root/espeak"
[[ -d /usr/share/games/fortunes ]] || unpack "$kit/fortunes.tar.xz" /usr/share/games  # where synth reads them (root)
mkdir -p "$root/site"
export PATH=$root/bin:$PATH PYTHONPATH=$repo:$root/site${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
python3 -c 'import ffmpeg, jiwer, platformdirs' 2>/dev/null || python3 -m pip install -q --no-index --no-deps \
    --no-compile --no-cache-dir --target "$root/site" "$kit"/wheels/*.whl
export LD_LIBRARY_PATH=$root/espeak${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} ESPEAK_DATA_PATH=$root/espeak
export MOME_HOME=$root/home
log "tools ready: $(ffmpeg -version | head -1 | cut -d' ' -f1-3)," \
    "$(python3 -c 'import torch; print("torch", torch.__version__)')"

# 2. corpus, and its clips read once into the cache
work=$root/work
mkdir -p "$work"
cd "$work"
jobs=$(nproc)
[[ -f synth/test.jsonl ]] || python3 -m mome_cli.synth synth --utterances "$utterances" --seed 0 --jobs "$jobs"
log "corpus: $(python3 -c 'import json; c = json.load(open("synth/corpus.json"))
print(c["utterances"], "clips,", round(c["hours"], 2), "h, espeak-ng", c["espeak_ng"])')"
python3 - "$jobs" <<'PY'
import sys
from mome_cli.hub import mome_home
from mome_cli.pretrain import load_clips

for manifest in ("synth/train.jsonl", "synth/valid.jsonl", "synth/test.jsonl"):
    load_clips(manifest, mome_home(), lambda message: print(message, file=sys.stderr), workers=int(sys.argv[1]))
PY
log "clips read"

# 3. train, or resume
run=$work/demo-run
ln -sfn "$kit/backbones" "$root/backbones"  # a fixed path: the run's saved settings name it; the checkout may move
if [[ -f $kit/demo-run/trainer_state.pt && ! -f $run/trainer_state.pt ]]; then
    mkdir -p "$run" && cp "$kit"/demo-run/* "$run"/
fi
left=${budget:-$(( 420 - (SECONDS - start) ))}
if [[ -f $run/trainer_state.pt ]]; then
    command=(python3 -m mome_cli train -o "$run" --resume "${steps[@]}")
else
    command=(python3 -m mome_cli train --config "$repo/recipes/demo.toml" --model "$root/backbones"
             --init "$root/backbones/projectors.safetensors" --train synth/train.jsonl --valid synth/valid.jsonl
             --device "$device" "${steps[@]}" -o "$run")
fi
status=0
if (( left < 30 )); then
    log "no time left to train (${left} s): run again, the corpus is ready on this machine while it stays warm"
    exit 0
fi
log "training for at most ${left} s: ${command[*]}"
timeout --signal=INT --kill-after=60 "$left" "${command[@]}" || status=$?  # SIGINT: mome train saves, then stops
finished=0
case $status in
    0) finished=1 ;;
    124) status=0; log "stopped after ${left} s: its last save comes back, and the next call resumes it" ;;
    *) log "mome train failed (exit $status)" ;;
esac

for name in config.json model.safetensors train_config.json trainer_state.pt log.jsonl; do
    if [[ -f $run/$name ]]; then cp "$run/$name" "$out/"; fi
done

# 4. evaluate a finished run, if there is time
if (( finished && SECONDS - start <= 450 )); then
    for mode in av a v; do
        python3 -m mome_cli evaluate --dataset synth/test.jsonl --model "$run" --roi --mode "$mode" --device "$device" \
            -o "evals/$mode"
    done
    tar -cf "$out/evals.tar" evals
elif (( finished )); then
    log "not evaluated: too little time left; the next call resumes the finished run and evaluates it"
fi
state=$( (( finished )) && echo "run finished" || echo "run stopped at its last save")
log "done: $state ($(ls "$out" | tr '\n' ' '))"
exit "$status"
