#!/usr/bin/env bash
# The demo model's MoME stage (`mome train`, recipes/demo.toml) on the lent GPU machine, in one call of the device
# tool from the repository root, resumable across calls and sessions; with --baselines, the four per-rate baselines
# of scripts/make_demo.sh beside it on the same GPU:
#
#   bash scripts/device_demo.sh [--baselines] [--device cuda] [--budget SECONDS] [--steps N] [--utterances N]
#                                                                         (a device call with carry [".device"])
#
# Before the first call, here: `bash scripts/device_kit.sh` (the tools that machine lacks, into .device/: 27 MB) and
# the frozen backbones the recipe trains on, what `mome train` reads of the last folder of scripts/make_demo.sh (14 MB;
# the working tree, the kit and these must stay under the tool's 64 MiB):
#   mkdir -p .device/backbones
#   cp -rL work/backbones/{backbones.json,projectors.safetensors,audio_encoder,video_encoder,llm} .device/backbones/
# After a call, unpack what came back into .device (`for t in FILES_AT/*.tar; do tar -xf $t -C .device; done`): the
# runs land in .device/demo-run and .device/baseline-A-V, which the next call resumes. A finished run is bundled here
# as make_demo.sh bundles the one it trains on the CPU:
#   python -m mome_cli.pretrain bundle .device/demo-run --backbones work/backbones -o mome_cli/models/demo
#
# What it does there:
# 1. unpacks the kit (with Python: no xz needed): ffmpeg and ffprobe, libespeak-ng and the Python wheels (those not
#    importable already) into /tmp/mome-device, the fortunes into /usr/share/games/fortunes;
# 2. makes the corpus as scripts/make_demo.sh does (mome_cli.synth, seed 0, one process a core) and reads its
#    clips once in parallel into the clip cache, which `mome train` then reads;
# 3. trains (or resumes) the demo run with the recipe on the device; with --baselines, once the demo run has
#    prepared its data (features and clips cached for all), the four baselines in processes of their own beside it,
#    each from its own rates' projectors (`python -m mome_cli.pretrain projectors`). A run not finished 30 s before
#    --budget (default 500 s since the start) is stopped and saved (SIGINT); each run's files (config.json,
#    model.safetensors, train_config.json, trainer_state.pt, log.jsonl) and its output (NAME.log) go to $OUT as
#    NAME.tar, written as soon as the training ends;
# 4. if 100 s or more are left, `mome evaluate` of each finished run on the test split, all in parallel and stopped
#    at the budget: the demo run in modes av and a (clean, -5, 0, 5 dB) and v (clean), a baseline in each mode at
#    its own pair (clean); the reports that were written go to $OUT as evals.tar (6 files at most: the tool brings
#    back 8 of at most 16 MiB); a finished run resumed by a later call (no more steps) is evaluated then.
set -euo pipefail
start=$SECONDS
device=cuda budget=500 steps=() utterances=4000 baselines=0
while (( $# )); do
    case $1 in
        --device) device=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        --steps) steps=(--steps "$2"); shift 2 ;;
        --utterances) utterances=$2; shift 2 ;;  # a smaller corpus, to try the script out
        --baselines) baselines=1; shift ;;
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

# 3. train, or resume: the demo run, and the baselines beside it
ln -sfn "$kit/backbones" "$root/backbones"  # a fixed path: the runs' saved settings name it; the checkout may move
deadline=$(( budget - 30 ))
runs=(demo-run)
(( baselines )) && runs+=(baseline-4-2 baseline-4-5 baseline-16-2 baseline-16-5)
threads=$(( jobs / ${#runs[@]} > 0 ? jobs / ${#runs[@]} : 1 ))
declare -A pid status
launch() {  # NAME: its training (a new run, or the one carried in resumed) in the background until the deadline
    local name=$1 run=$work/$1 init=$root/backbones/projectors.safetensors rates=() command
    if [[ -f $kit/$name/trainer_state.pt && ! -f $run/trainer_state.pt ]]; then
        mkdir -p "$run" && cp -p "$kit/$name"/* "$run"/  # -p: its log.jsonl older than .launched
    fi
    if [[ -f $run/trainer_state.pt ]]; then
        command=(python3 -m mome_cli train -o "$run" --resume "${steps[@]}")
    else
        if [[ $name == baseline-* ]]; then  # baseline-A-V: rates (A, V) alone, from their own projectors
            rates=(--rates "$(sed 's/^baseline-//; s/-/,/' <<< "$name")")
            init=$work/$name.init.safetensors
            python3 -m mome_cli.pretrain projectors "$root/backbones/projectors.safetensors" "${rates[@]}" \
                -o "$init" > /dev/null
        fi
        command=(python3 -m mome_cli train --config "$repo/recipes/demo.toml" --model "$root/backbones" "${rates[@]}"
                 --init "$init" --train synth/train.jsonl --valid synth/valid.jsonl --device "$device" "${steps[@]}"
                 -o "$run")
    fi
    local left=$(( deadline - SECONDS + start ))
    if (( left < 30 )); then
        log "$name: no time left to train (${left} s): run again, the corpus is ready while the machine stays warm"
        status[$name]=124
        return
    fi
    log "$name: training for at most ${left} s: ${command[*]}"
    # SIGINT: mome train saves, then stops
    OMP_NUM_THREADS=$threads timeout --signal=INT --kill-after=60 "$left" "${command[@]}" > "$work/$name.log" 2>&1 &
    pid[$name]=$!
}
touch "$work/.launched"
launch demo-run
if (( baselines )); then  # once the demo run has cached every clip's features: the baselines read them
    while [[ -n ${pid[demo-run]:-} ]] && kill -0 "${pid[demo-run]}" 2> /dev/null \
        && ! [[ $work/demo-run/log.jsonl -nt $work/.launched ]]; do sleep 2; done
    for name in "${runs[@]:1}"; do launch "$name"; done
fi
finished=()
for name in "${runs[@]}"; do
    if [[ -n ${pid[$name]:-} ]]; then
        code=0
        wait "${pid[$name]}" || code=$?
        status[$name]=$code
    fi
    case ${status[$name]} in
        0) finished+=("$name"); log "$name: finished" ;;
        124) log "$name: stopped at the deadline: its last save comes back, and the next call resumes it" ;;
        *) log "$name: mome train failed (exit ${status[$name]}); its output:"; tail -n 20 "$work/$name.log" >&2 ;;
    esac
    files=()
    for file in config.json model.safetensors train_config.json trainer_state.pt log.jsonl; do
        [[ -f $work/$name/$file ]] && files+=("$name/$file")
    done
    [[ -f $work/$name.log ]] && files+=("$name.log")
    (( ${#files[@]} )) && tar -cf "$out/$name.tar" -C "$work" "${files[@]}"
done

# 4. evaluate the finished runs, if there is time
left=$(( budget - 10 - SECONDS + start ))
if (( ${#finished[@]} && left >= 100 )); then
    log "evaluating ${finished[*]} (at most ${left} s)"
    evaluations=()
    evaluate() {  # RUN MODE SNR
        OMP_NUM_THREADS=1 timeout --kill-after=10 "$left" python3 -m mome_cli evaluate --dataset synth/test.jsonl \
            --model "$work/$1" --roi --mode "$2" --snr "$3" --device "$device" -o "evals/$1/$2" \
            > "$work/eval-$1-$2.log" 2>&1 &
        evaluations+=($!)
    }
    for name in "${finished[@]}"; do
        if [[ $name == demo-run ]]; then
            evaluate "$name" av clean,-5,0,5; evaluate "$name" a clean,-5,0,5; evaluate "$name" v clean
        else
            for mode in av a v; do evaluate "$name" "$mode" clean; done
        fi
    done
    for p in "${evaluations[@]}"; do wait "$p" || true; done
    for report in "$work"/eval-*.log; do  # an evaluation that wrote no report: why
        name=$(basename "$report" .log); name=${name#eval-}
        [[ -f evals/${name%-*}/${name##*-}/report.json ]] || { log "$name: no report"; tail -n 3 "$report" >&2; }
    done
    reports=$(find evals -name report.json | sort)
    log "reports written: $(tr '\n' ' ' <<< "$reports")"
    [[ -n $reports ]] && tar -cf "$out/evals.tar" evals
elif (( ${#finished[@]} )); then
    log "not evaluated: too little time left (${left} s); the next call resumes the finished runs and evaluates them"
fi
log "done: finished: ${finished[*]:-none}; in \$OUT: $(ls "$out" | tr '\n' ' ')"
for name in "${runs[@]}"; do
    case ${status[$name]} in 0|124) ;; *) exit "${status[$name]}" ;; esac
done
