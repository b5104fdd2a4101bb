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
# --utterances N (other than the recipe's 4000) and --steps N make a trial, to try the script out: its corpus is
# synth-nN, and its runs, logs and evaluations lie in a folder of its own, trial-nN, in what comes back too
# (trial-nN-demo-run.tar holds trial-nN/demo-run/...): unpacked into .device, a trial is resumed by a trial of the
# same corpus, never as the real run (remove .device/trial-nN when done: the carry holds 64 MiB). A run the kit holds
# under the real run's name that was trained on another corpus or for other steps than the recipe's (a trial's, from
# before trials were kept apart) is refused (exit 2).
#
# What it does there:
# 1. unpacks the kit (with Python: no xz needed): ffmpeg and ffprobe, libespeak-ng and the Python wheels (those not
#    importable already) into /tmp/mome-device, the fortunes into /usr/share/games/fortunes;
# 2. makes the corpus as scripts/make_demo.sh does (mome_cli.synth, seed 0, one process a core), or goes on with the
#    one there if its corpus.json says it is that corpus (one of another size or seed, left by an older trial, is made
#    again), and reads its clips once in parallel into the clip cache, which `mome train` then reads;
# 3. trains (or resumes) the demo run with the recipe on the device; with --baselines, once the demo run has
#    prepared its data (features and clips cached for all), the four baselines in processes of their own beside it,
#    each from its own rates' projectors (`python -m mome_cli.pretrain projectors`). A run not finished 30 s before
#    --budget (default 500 s since the start) is stopped and saved (SIGINT); each run's files (config.json,
#    model.safetensors, train_config.json, trainer_state.pt, log.jsonl) and its output (NAME.log) go to $OUT as
#    NAME.tar, written as soon as the training ends;
# 4. if 100 s or more are left, `mome evaluate` of each finished run on the test split, all in parallel and stopped
#    at the budget: the demo run in modes av and a (clean, -5, 0, 5 dB) and v (clean), a baseline in each mode at
#    its own pair (clean); the reports this call wrote go to $OUT as evals.tar (6 files at most: the tool brings
#    back 8 of at most 16 MiB); a finished run resumed by a later call (no more steps) is evaluated then.
set -euo pipefail
start=$SECONDS
device=cuda budget=500 steps=() utterances=4000 baselines=0
while (( $# )); do
    case $1 in
        --device) device=$2; shift 2 ;;
        --budget) budget=$2; shift 2 ;;
        --steps) steps=(--steps "$2"); shift 2 ;;  # these two make a trial (above)
        --utterances) utterances=$2; shift 2 ;;
        --baselines) baselines=1; shift ;;
        -h|--help) sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) echo "device_demo.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
[[ $utterances =~ ^[1-9][0-9]*$ && ${steps[1]:-1} =~ ^[1-9][0-9]*$ ]] ||
    { echo "device_demo.sh: --utterances and --steps take a whole number above 0" >&2; exit 2; }
corpus=synth  # the recipe's corpus; a trial's smaller one beside it
(( utterances == 4000 )) || corpus=synth-n$utterances
trial=  # the folder of a trial's runs, logs and evaluations, in the work folder, the kit and $OUT (the real run: none)
(( utterances != 4000 || ${#steps[@]} )) && trial=trial-n$utterances
at=${trial:+$trial/}
runs=(demo-run)
(( baselines )) && runs+=(baseline-4-2 baseline-4-5 baseline-16-2 baseline-16-5)
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
kit=${MOME_DEVICE_KIT:-$repo/.device}
root=${MOME_DEVICE_ROOT:-/tmp/mome-device}  # fixed: the run's saved settings name the corpus by its path
out=${OUT:?device_demo.sh: OUT (the folder that comes back) is not set}
log() { printf '[device_demo %4ds] %s\n' "$((SECONDS - start))" "$*" >&2; }
for need in "$kit"/{ffmpeg,espeak,fortunes}.tar.xz "$kit/backbones/backbones.json"; do
    [[ -e $need ]] || { echo "device_demo.sh: $need is missing (see the top of this script)" >&2; exit 4; }
done
other_run() {  # RUN: why the run saved there is not this call's (another corpus; for the real run, other steps)
    python3 - "$1/train_config.json" "$corpus" "${trial:-real}" "$repo/recipes/demo.toml" <<'PY'
import json, sys
from pathlib import Path
try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

saved, corpus, call, recipe = map(Path, sys.argv[1:])
if not saved.is_file():
    sys.exit(print(f"it has no {saved.name}"))
saved = json.loads(saved.read_text())
trained_on = Path(saved.get("train") or "?").parent.name
steps = tomllib.loads(recipe.read_text())["optim"]["steps"]
if trained_on != corpus.name:
    print(f"it was trained on the corpus {trained_on}, not {corpus}")
elif call.name == "real" and saved.get("steps") != steps:  # a trial's --steps (a trial resumes with its own)
    print(f"it was trained for {saved.get('steps')} steps, not the recipe's {steps}")
PY
}
for name in "${runs[@]}"; do  # a run of another corpus or length in the kit under this call's name: not resumed
    run=$kit/$at$name
    [[ -f $run/trainer_state.pt ]] || continue
    why=$(other_run "$run")
    [[ -z $why ]] || { echo "device_demo.sh: $run is not this call's run: $why (a trial's, kept by an older" \
        "device_demo.sh?); move it out of $kit to start the run afresh" >&2; exit 2; }
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
mkdir -p "$work/$at"
cd "$work"
jobs=$(nproc)
made=$(python3 - "$corpus/corpus.json" "$utterances" <<'PY'
import json, sys
try:
    made = json.load(open(sys.argv[1]))
except FileNotFoundError:
    sys.exit()
if (made["utterances"], made["seed"]) != (int(sys.argv[2]), 0):
    print(f"other: {made['utterances']} clips of seed {made['seed']}")
elif made["hours"] is not None:  # written last
    print("whole")
PY
)
if [[ $made == other:* ]]; then  # an older trial's, under this name: it and the runs trained on it here go
    log "corpus: $corpus holds another corpus (${made#other: }), not $utterances clips of seed 0: made again"
    for name in "${runs[@]}"; do rm -rf -- "${work:?}/$at$name" "$work/$at$name.log"; done
    rm -rf -- "${work:?}/$corpus"
fi
[[ $made == whole ]] || python3 -m mome_cli.synth "$corpus" --utterances "$utterances" --seed 0 --jobs "$jobs"
log "corpus: $corpus, $(python3 -c 'import json, sys; c = json.load(open(sys.argv[1]))
print(c["utterances"], "clips,", round(c["hours"], 2), "h, espeak-ng", c["espeak_ng"])' "$corpus/corpus.json")"
python3 - "$jobs" "$corpus" <<'PY'
import sys
from mome_cli.hub import mome_home
from mome_cli.pretrain import load_clips

for split in ("train", "valid", "test"):
    load_clips(f"{sys.argv[2]}/{split}.jsonl", mome_home(), lambda message: print(message, file=sys.stderr),
               workers=int(sys.argv[1]))
PY
log "clips read"

# 3. train, or resume: the demo run, and the baselines beside it
ln -sfn "$kit/backbones" "$root/backbones"  # a fixed path: the runs' saved settings name it; the checkout may move
deadline=$(( budget - 30 ))
threads=$(( jobs / ${#runs[@]} > 0 ? jobs / ${#runs[@]} : 1 ))
declare -A pid status
launch() {  # NAME: its training (a new run, or the one carried in resumed) in the background until the deadline
    local name=$1 run=$work/$at$1 init=$root/backbones/projectors.safetensors rates=() command why
    if [[ -f $run/trainer_state.pt ]]; then  # left here by an earlier call on this machine
        why=$(other_run "$run")
        [[ -z $why ]] || { log "$name: the run here is not this call's ($why): started again"; rm -rf -- "$run"; }
    fi
    if [[ -f $kit/$at$name/trainer_state.pt && ! -f $run/trainer_state.pt ]]; then
        mkdir -p "$run" && cp -p "$kit/$at$name"/* "$run"/  # -p: its log.jsonl older than .launched
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
                 --init "$init" --train "$corpus/train.jsonl" --valid "$corpus/valid.jsonl" --device "$device"
                 "${steps[@]}" -o "$run")
    fi
    local left=$(( deadline - SECONDS + start ))
    if (( left < 30 )); then
        log "$name: no time left to train (${left} s): run again, the corpus is ready while the machine stays warm"
        status[$name]=124
        return
    fi
    log "$name: training for at most ${left} s: ${command[*]}"
    # SIGINT: mome train saves, then stops
    OMP_NUM_THREADS=$threads timeout --signal=INT --kill-after=60 "$left" "${command[@]}" > "$work/$at$name.log" 2>&1 &
    pid[$name]=$!
}
touch "$work/.launched"
launch demo-run
if (( baselines )); then  # once the demo run has cached every clip's features: the baselines read them
    while [[ -n ${pid[demo-run]:-} ]] && kill -0 "${pid[demo-run]}" 2> /dev/null \
        && ! [[ $work/${at}demo-run/log.jsonl -nt $work/.launched ]]; do sleep 2; done
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
        *) log "$name: mome train failed (exit ${status[$name]}); its output:"; tail -n 20 "$work/$at$name.log" >&2 ;;
    esac
    files=()
    for file in config.json model.safetensors train_config.json trainer_state.pt log.jsonl; do
        [[ -f $work/$at$name/$file ]] && files+=("$at$name/$file")
    done
    [[ -f $work/$at$name.log ]] && files+=("$at$name.log")
    (( ${#files[@]} )) && tar -cf "$out/${trial:+$trial-}$name.tar" -C "$work" "${files[@]}"
done

# 4. evaluate the finished runs, if there is time
left=$(( budget - 10 - SECONDS + start ))
if (( ${#finished[@]} && left >= 100 )); then
    log "evaluating ${finished[*]} (at most ${left} s)"
    evaluations=() evaluated=()
    evaluate() {  # RUN MODE SNR
        OMP_NUM_THREADS=1 timeout --kill-after=10 "$left" python3 -m mome_cli evaluate --dataset "$corpus/test.jsonl" \
            --model "$work/$at$1" --roi --mode "$2" --snr "$3" --device "$device" -o "${at}evals/$1/$2" \
            > "$work/${at}eval-$1-$2.log" 2>&1 &
        evaluations+=($!) evaluated+=("$1/$2")
    }
    for name in "${finished[@]}"; do
        rm -rf -- "${at}evals/$name"  # an earlier call's reports: not to come back as this one's
        if [[ $name == demo-run ]]; then
            evaluate "$name" av clean,-5,0,5; evaluate "$name" a clean,-5,0,5; evaluate "$name" v clean
        else
            for mode in av a v; do evaluate "$name" "$mode" clean; done
        fi
    done
    for p in "${evaluations[@]}"; do wait "$p" || true; done
    written=()  # this call's evaluations that wrote their report
    for name in "${evaluated[@]}"; do
        if [[ -f ${at}evals/$name/report.json ]]; then
            written+=("${at}evals/$name")
        else  # why not
            log "${name/\//-}: no report"; tail -n 3 "$work/${at}eval-${name/\//-}.log" >&2
        fi
    done
    log "reports written: ${written[*]/%//report.json}"
    (( ${#written[@]} )) && tar -cf "$out/${trial:+$trial-}evals.tar" "${written[@]}"
elif (( ${#finished[@]} )); then
    log "not evaluated: too little time left (${left} s); the next call resumes the finished runs and evaluates them"
fi
log "done: finished: ${finished[*]:-none}; in \$OUT: $(ls "$out" | tr '\n' ' ')"
for name in "${runs[@]}"; do
    case ${status[$name]} in 0|124) ;; *) exit "${status[$name]}" ;; esac
done
