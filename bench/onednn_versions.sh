#!/usr/bin/env bash
# Debian's oneDNN 2.x (libdnnl-dev: what tessera links, and python3-torch's) against PyPI's oneDNN 3.x
# (`onednn-cpu-gomp`, GNU OpenMP as Debian's), on the ResNet family's convolution shapes, in one run
# on this CPU: bench/onednn_versions/conv.cpp built against each, run one after the other, twice.
# Usage: bench/onednn_versions.sh [THREADS]   (default 2). Needs g++, libdnnl-dev and pip (PyPI).
# The wheels and builds go to $OUT (default: a folder under /tmp); the tables to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-2}
out=${OUT:-$(mktemp -d /tmp/tessera-onednn.XXXXXX)}
mkdir -p "$out/wheels" "$out/onednn3"
version=2023.2.0  # oneDNN 3.2, the newest build of the GNU-OpenMP wheels
python3 -m pip download --quiet --no-deps -d "$out/wheels" "onednn-cpu-gomp==$version" "onednn-devel-cpu-gomp==$version"
for w in "$out"/wheels/*.whl; do python3 -m zipfile -e "$w" "$out/unpacked"; done
cp -r "$out"/unpacked/*.data/data/. "$out/onednn3/"
g++ -O2 -std=c++20 bench/onednn_versions/conv.cpp -o "$out/conv-debian" -ldnnl
g++ -O2 -std=c++20 -I"$out/onednn3/include" bench/onednn_versions/conv.cpp -o "$out/conv-pypi" \
  -L"$out/onednn3/lib" -ldnnl -Wl,-rpath,"$out/onednn3/lib"
export OMP_NUM_THREADS=$threads  # OpenMP otherwise as tessera leaves it (select_cpu_kernels)
lscpu | grep -E '^Model name' || true
for precision in bf16 f32; do
  for round in 1 2; do
    "$out/conv-debian" "$precision"
    "$out/conv-pypi" "$precision"
  done
done | tee "$out/calls.txt"
# Each run's milliseconds summed over all three passes of ResNet-20's shapes (batch 128) and of
# ResNet50's (batch 32): one figure per version, precision and round.
echo
awk '/^dnnl/ { if (key) printf "%s: ResNet-20 shapes %.2f ms, ResNet50 shapes %.2f ms\n", key, r20, r50
               key = "oneDNN " $2 " " $3; r20 = r50 = 0; next }
     / fwd / { t = $7 + $9 + $11; if ($1 == 128) r20 += t; else r50 += t }
     END { printf "%s: ResNet-20 shapes %.2f ms, ResNet50 shapes %.2f ms\n", key, r20, r50 }' "$out/calls.txt"
