#!/usr/bin/env bash
# tessera and PyTorch (Debian's python3-torch) on the same CPU, one after the other in one run, and the
# ratio table of the README's CPU section:
#   - the quick start's job (recipes/quickstart.toml): training time and top-1 after 2 epochs;
#   - ResNet50 at 224 px: training at batch 32, inference at batches 1 and 32.
# PyTorch is Debian's (/usr/bin/python3 with python3-torch, python3-torchvision; scripts/deps test).
# Usage: bench/cpu_vs_pytorch.sh [BUILD_DIR] [--precision fp32|bf16] [--threads T] [--skip-quickstart]
# Logs go to $OUT (default: a folder under /tmp); the table goes to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
precision=fp32
threads=2
quickstart=1
while (($#)); do
  case "$1" in
    --precision) precision=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --skip-quickstart) quickstart=0; shift ;;
    *) build=$1; shift ;;
  esac
done
runner="$build/runner/runner"
[[ -x $runner ]] || { echo "bench/cpu_vs_pytorch.sh: no $runner; build first (meson setup $build && ninja -C $build)" >&2; exit 2; }
export TESSERA_PLUGIN_PATH="$build/plugins"
out=${OUT:-$(mktemp -d /tmp/tessera-cpu-vs-pytorch.XXXXXX)}
mkdir -p "$out"

echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores here, $threads threads used"
echo "flags: $(grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "PyTorch $(/usr/bin/python3 -c 'import torch; print(torch.__version__)'), logs in $out"

field() { /usr/bin/python3 -c "import json,sys; print(json.loads(sys.argv[1])[sys.argv[2]])" "$1" "$2"; }
ratio() { /usr/bin/python3 -c "import sys; print(f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}x')" "$1" "$2"; }

printf '\n| work | tessera | PyTorch (%s, channels-last) | tessera'"'"'s speed / PyTorch'"'"'s |\n|---|---|---|---|\n' "$precision"
if ((quickstart)); then
  rm -rf "$out/runs"
  "$runner" recipes/quickstart.toml --fresh --threads "$threads" --set run.out_dir="$out/runs" \
    --set model.precision="$precision" --set logger.0.mode=lines >"$out/tessera_quickstart.log" 2>&1
  final=$(grep '^final:' "$out/tessera_quickstart.log")
  t_time=$(sed -n 's/.*time_s=\([0-9.]*\).*/\1/p' <<<"$final")
  t_top1=$(sed -n 's/.*val_top1=\([0-9.]*\).*/\1/p' <<<"$final")
  /usr/bin/python3 bench/pytorch_cpu.py quickstart --precision "$precision" --threads "$threads" >"$out/pytorch_quickstart.log"
  p_line=$(tail -1 "$out/pytorch_quickstart.log")
  p_time=$(field "$p_line" time_s)
  p_top1=$(field "$p_line" top1)
  # Time: PyTorch's over tessera's, so that above 1 means tessera is faster, as in the other rows.
  printf '| quick start, 2 epochs: seconds (top-1) | %s s (%s) | %s s (%s) | %s |\n' \
    "$t_time" "$t_top1" "$p_time" "$p_top1" "$(ratio "$p_time" "$t_time")"
fi

tessera_bench() { "$runner" bench --arch resnet50 --image-size 224 --threads "$threads" --precision "$precision" --json "$@"; }
t_train=$(tessera_bench --batch 32 --steps 3 --warmup 1 | tee "$out/tessera_r50_train.json")
t_b1=$(tessera_bench --batch 1 --steps 30 --warmup 3 --inference | tee "$out/tessera_r50_infer_b1.json")
t_b32=$(tessera_bench --batch 32 --steps 3 --warmup 1 --inference | tee "$out/tessera_r50_infer_b32.json")
p_r50=$(/usr/bin/python3 bench/pytorch_cpu.py resnet50 --precision "$precision" --threads "$threads" | tee "$out/pytorch_r50.json")
row() {
  printf '| %s | %.2f img/s | %.2f img/s | %s |\n' "$1" "$2" "$3" "$(ratio "$2" "$3")"
}
row "ResNet50 training, batch 32" "$(field "$t_train" train_img_per_s)" "$(field "$p_r50" train_img_per_s_b32)"
row "ResNet50 inference, batch 1" "$(field "$t_b1" infer_img_per_s)" "$(field "$p_r50" infer_img_per_s_b1)"
row "ResNet50 inference, batch 32" "$(field "$t_b32" infer_img_per_s)" "$(field "$p_r50" infer_img_per_s_b32)"
echo
echo "tessera's kernels: $(field "$t_train" kernels)"
