#!/usr/bin/env bash
# Every GPU benchmark of RESULTS.md in one go, each printed and kept in OUT_DIR/NAME.txt:
#
#   bash benchmarks/run_gpu.sh [OUT_DIR [NAME ...]]   (OUT_DIR [gpu-results]; about 10 minutes on an H100)
#
# The order puts the issue #8 figures first; a benchmark that fails or overruns its time limit (seconds, below) is
# reported and the next one runs, and the script exits 1 at the end. NAMEs (the first words in BENCHMARKS below) run
# only those, so that the set can be split over calls shorter than the whole (the device tool allows 10 minutes a
# command, and the limits below add up to more). Record what is kept in RESULTS.md with the card, the date and these
# commands. -h or --help prints this and the NAMEs.
set -uo pipefail
# NAME SECONDS SCRIPT ARGS...: the benchmarks, in the order they run (a NAME ending in -quick, a shorter variant of
# the one before it, runs only when named)
BENCHMARKS=(
    "latency-1b 200 latency.py --preset mome-1b:4,2 --profile"
    "latency-1b-quick 150 latency.py --preset mome-1b:4,2 --profile --no-static-baseline"
    "latency-8b 150 latency.py --preset mome-8b:16,5 --no-static-baseline"
    "kernel-compile 60 kernel_compile.py"
    "throughput 240 throughput.py"
    "train-step 100 train_step.py"
    "mome-module 90 mome_module.py --device cuda --no-demo"
    "encoders 60 encoders.py --device cuda"
    "preprocess 300 preprocess.py --device cuda --budget-minutes 4"
)
known=" ${BENCHMARKS[*]%% *} "
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"
    echo "NAMEs:$known"
    exit 0
fi
out=$(realpath -m -- "${1:-gpu-results}")
shift $(( $# > 0 ? 1 : 0 ))
for name in "$@"; do
    [[ $known == *" $name "* ]] || { echo "run_gpu.sh: no benchmark named '$name' (known:$known)" >&2; exit 2; }
done
only=" $* "
failed=0
mkdir -p "$out"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # the device machine has mome uninstalled

run() {  # run NAME SECONDS ARGS...: one benchmark, its output shown and kept
    local name=$1 limit=$2
    shift 2
    echo "== $name: python benchmarks/$* ($(date -u '+%Y-%m-%d %H:%M:%S UTC'))"
    timeout "$limit" python "benchmarks/$@" 2>&1 | tee "$out/$name.txt"
    local status=${PIPESTATUS[0]}
    if [[ $status == 124 ]]; then
        echo "== $name: stopped, over its $limit s" | tee -a "$out/$name.txt"
        failed=1
    elif [[ $status != 0 ]]; then
        echo "== $name: failed, exit $status" | tee -a "$out/$name.txt"
        failed=1
    fi
}

for benchmark in "${BENCHMARKS[@]}"; do
    read -ra words <<< "$benchmark"
    if [[ ($only == "  " && ${words[0]} != *-quick) || $only == *" ${words[0]} "* ]]; then
        run "${words[@]}"
    fi
done
exit $failed
