#!/usr/bin/env bash
# The GPU check, in one call of a few minutes on a machine with one GPU: the CUDA tests, then
# `runner bench` for ResNet50 at 224 px, batch 256, in fp32, tf32, bf16 and fp16, next to PyTorch's
# torchvision ResNet50 on the same card (torch_peer.py: channels-last, autocast, GradScaler for
# fp16), runner parity's bf16 run against PyTorch (issue: the same training as PyTorch), and a table
# last.
#   bench/gpu_check.sh [BUILD_DIR] [TORCH_PEER]      logs go to $OUT (or /tmp/gpu_check)
set -uo pipefail
build=${1:-build}
peer=${2:-.gpu/torch_peer.py}
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
batch=${TESSERA_CHECK_BATCH:-256}
# Each stage has a time limit, so that the whole check fits one 8-minute call and the table is
# always printed (a stage that ran out shows n/a): tests 100 s, each benchmark 40 s, NCCL 30 s,
# parity 240 s (about 11 minutes in all: give the call 600 s and it still prints the table).

echo "== CUDA tests"
timeout 100 "$build/tests/tessera_tests" --gtest_filter='Cuda*' 2>&1 | tee "$out/gpu_tests.log" | grep -E '^\[ +(OK|FAILED|SKIPPED) +\]|Failure|error'

echo "== tessera"
for precision in fp32 tf32 bf16 fp16; do
  timeout 40 "$build/runner/runner" bench --device cuda --precision "$precision" --arch resnet50 --batch "$batch" --image-size 224 \
    --steps 10 --warmup 3 --json > "$out/tessera_$precision.json" 2> "$out/tessera_$precision.err"
  cat "$out/tessera_$precision.json" "$out/tessera_$precision.err"
done

echo "== NCCL all-reduce of ResNet50's gradients on this one GPU (a local copy: no link is crossed)"
timeout 30 "$build/runner/runner" bench --allreduce --device cuda --json 2>&1 | tee "$out/nccl_allreduce.json"

echo "== runner parity in bf16: ResNet50, batch 64, synthetic 32 px, 300 steps of the seed's OneCycle + SGD"
# The loss curves must agree statistically (mean over the last 50 steps within 2%); PyTorch's side is
# this image's python3 (torch and torchvision), run with autocast(bfloat16).
TESSERA_PYTHON=${TESSERA_PYTHON:-python3} timeout 240 "$build/runner/runner" parity recipes/resnet50_imagenet.toml \
  --set 'data={plugin="synthetic", image_size=32, batch_size=64, num_classes=100, train_size=1280, val_size=64}' \
  --set train.device=cuda --set model.precision=bf16 --set train.epochs=15 --steps 300 --every 100 --no-fp64 \
  --out "$out/parity_bf16" --json > "$out/parity_bf16.json" 2> "$out/parity_bf16.err"
tail -n 1 "$out/parity_bf16.json"; tail -n 3 "$out/parity_bf16.err"

echo "== PyTorch"
for precision in fp32-strict fp32 bf16 fp16; do
  timeout 40 python3 "$peer" --precision "$precision" --batch "$batch" > "$out/torch_$precision.json" 2> "$out/torch_$precision.err"
  tail -n 1 "$out/torch_$precision.json"; tail -n 3 "$out/torch_$precision.err"
done

python3 - "$out" <<'PY'
import json, sys
out = sys.argv[1]
def load(name):
    try:
        with open(f"{out}/{name}.json") as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception:
        return None
rows = [("fp32 (TF32 off)", "tessera_fp32", "torch_fp32-strict"),
        ("tf32", "tessera_tf32", "torch_fp32"),
        ("bf16 mixed", "tessera_bf16", "torch_bf16"),
        ("fp16 + loss scale", "tessera_fp16", "torch_fp16")]
gpu = next((t["gpu"] for _, _, p in rows if (t := load(p))), "?")
print(f"\nResNet50 training, 224x224, batch per step as in each row, {gpu}")
# Memory: tessera's allocations (arena, gradients, weights, optimizer state, cuDNN workspace) as
# PyTorch's max_memory_allocated counts them; the device total (cudaMemGetInfo, with the CUDA
# context and library handles) in brackets.
print(f"{'configuration':<18} {'tessera img/s':>14} {'PyTorch img/s':>14} {'ratio':>7} {'tessera GiB':>16} {'PyTorch GiB':>12}")
for label, mine, theirs in rows:
    t, p = load(mine) if mine else None, load(theirs)
    ti = f"{t['train_img_per_s']:.0f}" if t else "n/a"
    pi = f"{p['train_img_per_s']:.0f}" if p else "n/a"
    ratio = f"{t['train_img_per_s'] / p['train_img_per_s']:.2f}" if t and p else "-"
    tm = f"{t.get('allocated_bytes', 0) / 2**30:.1f} ({t['peak_mem_bytes'] / 2**30:.1f})" if t else "-"
    pm = f"{p['peak_mem_gib']:.1f}" if p else "-"
    print(f"{label:<18} {ti:>14} {pi:>14} {ratio:>7} {tm:>16} {pm:>12}")
PY
