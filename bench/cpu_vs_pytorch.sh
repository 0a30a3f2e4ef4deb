#!/usr/bin/env bash
# tessera and PyTorch (Debian's python3-torch) on the same CPU, one after the other in one run, and the
# ratio table of the README's CPU section:
#   - the quick start's job (recipes/quickstart.toml): training time and top-1 after 2 epochs;
#   - ResNet50 at 224 px: training at batch 32, inference at batches 1 and 32.
# Each row compares tessera's best with PyTorch's best on this machine: PyTorch runs channels-last
# fp32 and, where the CPU has bf16 instructions (AVX512-BF16, AMX), bf16 autocast; tessera runs fp32
# and, on such CPUs, bf16 (mixed precision for training, as scripts/quickstart does there). A figure one
# side cannot give here is "-".
# PyTorch is Debian's (/usr/bin/python3 with python3-torch, python3-torchvision; scripts/deps test).
# Usage: bench/cpu_vs_pytorch.sh [BUILD_DIR] [--threads T] [--skip-quickstart]
# Logs go to $OUT (default: a folder under /tmp); the table goes to standard output.
set -euo pipefail
cd "$(dirname "$0")/.."
build=build
threads=2
quickstart=1
while (($#)); do
  case "$1" in
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
py=/usr/bin/python3

flags=$(grep -o -w -E 'avx2|fma|avx512f|avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')
precisions=fp32
if grep -q -w -E 'avx512_bf16|amx_bf16' <<<"$flags"; then precisions="fp32 bf16"; fi
echo "CPU: $(lscpu | sed -n 's/^Model name: *//p'), $(nproc) cores here, $threads threads used"
echo "flags: $flags"
echo "PyTorch $($py -c 'import torch; print(torch.__version__)'), logs in $out"

# field JSON KEY: the value, or "-" when the key is absent.
field() { $py -c "import json,sys; print(json.loads(sys.argv[1]).get(sys.argv[2], '-'))" "$1" "$2"; }
# best HIGHER|LOWER A B: the better of two figures, "-" ignored.
best() {
  $py -c "import sys; v=[float(x) for x in sys.argv[2:] if x != '-']; print((max if sys.argv[1] == 'higher' else min)(v) if v else '-')" "$@"
}
# percent FRACTION: "91.48%", or "-".
percent() { $py -c "import sys; print('-' if sys.argv[1] == '-' else f'{100 * float(sys.argv[1]):.2f}%')" "$1"; }
ratio() { $py -c "import sys; print('-' if '-' in sys.argv[1:] else f'{float(sys.argv[1]) / float(sys.argv[2]):.2f}x')" "$1" "$2"; }

printf '\n| work | tessera fp32 | tessera bf16 | PyTorch fp32 (channels-last) | PyTorch bf16 (autocast) | tessera best / PyTorch best |\n|---|---|---|---|---|---|\n'
if ((quickstart)); then
  declare -A t_time t_top1 p_time p_top1
  for p in fp32 bf16; do
    t_time[$p]=- t_top1[$p]=- p_time[$p]=- p_top1[$p]=-
    [[ " $precisions " == *" $p "* ]] || continue
    rm -rf "$out/runs"
    "$runner" recipes/quickstart.toml --fresh --threads "$threads" --set run.out_dir="$out/runs" \
      --set model.precision="\"$p\"" --set logger.0.mode=lines >"$out/tessera_quickstart_$p.log" 2>&1
    final=$(grep '^final:' "$out/tessera_quickstart_$p.log")
    t_time[$p]=$(sed -n 's/.*time_s=\([0-9.]*\).*/\1/p' <<<"$final")
    t_top1[$p]=$(percent "$(sed -n 's/.*val_top1=\([0-9.]*\).*/\1/p' <<<"$final")")
    $py bench/pytorch_cpu.py quickstart --precision "$p" --threads "$threads" >"$out/pytorch_quickstart_$p.log"
    line=$(tail -1 "$out/pytorch_quickstart_$p.log")
    p_time[$p]=$(field "$line" time_s)
    p_top1[$p]=$(percent "$(field "$line" top1)")
  done
  # Time: PyTorch's best over tessera's, so that above 1 means tessera is faster, as in the other rows.
  printf '| quick start, 2 epochs: seconds (top-1) | %s s (%s) | %s s (%s) | %s s (%s) | %s s (%s) | %s |\n' \
    "${t_time[fp32]}" "${t_top1[fp32]}" "${t_time[bf16]}" "${t_top1[bf16]}" "${p_time[fp32]}" "${p_top1[fp32]}" \
    "${p_time[bf16]}" "${p_top1[bf16]}" \
    "$(ratio "$(best lower "${p_time[fp32]}" "${p_time[bf16]}")" "$(best lower "${t_time[fp32]}" "${t_time[bf16]}")")"
fi

declare -A t_train t_b1 t_b32 p_r50
for p in fp32 bf16; do
  t_train[$p]='{}' t_b1[$p]='{}' t_b32[$p]='{}' p_r50[$p]='{}'
  [[ " $precisions " == *" $p "* ]] || continue
  tessera_bench() { "$runner" bench --arch resnet50 --image-size 224 --threads "$threads" --precision "$p" --json "$@"; }
  t_train[$p]=$(tessera_bench --batch 32 --steps 3 --warmup 1 | tee "$out/tessera_r50_train_$p.json")
  t_b1[$p]=$(tessera_bench --batch 1 --steps 30 --warmup 3 --inference | tee "$out/tessera_r50_infer_b1_$p.json")
  t_b32[$p]=$(tessera_bench --batch 32 --steps 3 --warmup 1 --inference | tee "$out/tessera_r50_infer_b32_$p.json")
  p_r50[$p]=$($py bench/pytorch_cpu.py resnet50 --precision "$p" --threads "$threads" | tee "$out/pytorch_r50_$p.json")
done
row() {  # row NAME TESSERA_KEY PYTORCH_KEY TESSERA_JSON_ARRAY_NAME
  local -n t=$4
  local t32 t16 p32 p16
  t32=$(field "${t[fp32]}" "$2") t16=$(field "${t[bf16]}" "$2")
  p32=$(field "${p_r50[fp32]}" "$3") p16=$(field "${p_r50[bf16]}" "$3")
  printf '| %s: img/s | %s | %s | %s | %s | %s |\n' "$1" "$t32" "$t16" "$p32" "$p16" \
    "$(ratio "$(best higher "$t32" "$t16")" "$(best higher "$p32" "$p16")")"
}
row "ResNet50 training, batch 32" train_img_per_s train_img_per_s_b32 t_train
row "ResNet50 inference, batch 1" infer_img_per_s infer_img_per_s_b1 t_b1
row "ResNet50 inference, batch 32" infer_img_per_s infer_img_per_s_b32 t_b32
echo
echo "tessera's kernels: $(field "${t_b32[fp32]}" kernels)"
