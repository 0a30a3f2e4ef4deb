#!/usr/bin/env bash
# The GPU check, in one call of at most 8 minutes on a machine with one GPU, everything it runs in
# this repository: the CUDA tests (correctness first), then `runner bench` for ResNet50 at 224 px,
# batch 256, in fp32, tf32, bf16 and fp16 beside PyTorch's torchvision ResNet50 on the same card
# (bench/torch_gpu.py), bf16 again on the card cut to 24 GiB (the seed's A10G), the bf16 step's
# per-operation profile, the fused kernels' GB/s against the card's copy rate, the one-GPU NCCL
# all-reduce, and a table last.
#   bench/gpu_check.sh [BUILD_DIR]            logs go to $OUT (or /tmp/gpu_check)
#   bench/gpu_check.sh BUILD_DIR parity       runner parity's bf16 run instead (about 4 minutes)
set -uo pipefail
build=${1:-build}
stage=${2:-check}
out=${OUT:-/tmp/gpu_check}
mkdir -p "$out"
batch=${TESSERA_CHECK_BATCH:-256}
python=${TESSERA_PYTHON:-python3}

if [[ $stage == parity ]]; then
  echo "== runner parity in bf16: ResNet50, batch 64, synthetic 32 px, 300 steps of the seed's OneCycle + SGD"
  # The loss curves must agree statistically (mean over the last 50 steps within 2%); PyTorch's side
  # is this machine's python3 (torch and torchvision), run with autocast(bfloat16).
  TESSERA_PYTHON=$python timeout 280 "$build/runner/runner" parity recipes/resnet50_imagenet.toml \
    --set 'data={plugin="synthetic", image_size=32, batch_size=64, num_classes=100, train_size=1280, val_size=64}' \
    --set train.device=cuda --set model.precision=bf16 --set train.epochs=15 --steps 300 --every 100 --no-fp64 \
    --out "$out/parity_bf16" --json > "$out/parity_bf16.json" 2> "$out/parity_bf16.err"
  tail -n 1 "$out/parity_bf16.json"; tail -n 3 "$out/parity_bf16.err"
  exit 0
fi

# Each stage has a time limit, so that the table is always printed (a stage that ran out shows n/a):
# tests 90 s, each benchmark 35 s, the profile 35 s, the fused kernels 40 s, NCCL 20 s: about 8
# minutes at most, usually 5.
echo "== CUDA tests"
timeout 90 "$build/tests/tessera_tests" --gtest_filter='Cuda.*' > "$out/gpu_tests.log" 2>&1
grep -E '^\[ +(OK|FAILED|SKIPPED) +\]|Failure|error' "$out/gpu_tests.log"

bench() {  # name, precision, then environment assignments
  local name=$1 precision=$2
  shift 2
  env "$@" timeout 35 "$build/runner/runner" bench --device cuda --precision "$precision" --arch resnet50 \
    --batch "$batch" --image-size 224 --steps 10 --warmup 3 --json > "$out/$name.json" 2> "$out/$name.err"
  tail -n 1 "$out/$name.json"; tail -n 5 "$out/$name.err"
}
echo "== tessera"
for precision in fp32 tf32 bf16 fp16; do bench "tessera_$precision" "$precision"; done
echo "== tessera bf16 on the card cut to 24 GiB (TESSERA_DEVICE_MEMORY_GIB)"
bench tessera_bf16_24gib bf16 TESSERA_DEVICE_MEMORY_GIB=24
echo "== tessera bf16, each operation timed (TESSERA_PROFILE synchronises after each: a split, not a speed)"
bench tessera_bf16_profile bf16 TESSERA_PROFILE=1

echo "== the fused kernels at batch 256 against the card's copy rate (tessera_bench)"
timeout 40 "$build/bench/tessera_bench" --benchmark_filter='BatchNormReLUTraining/cuda|StreamCopy/cuda' \
  --benchmark_min_time=0.2 --benchmark_format=json > "$out/fused.json" 2> "$out/fused.err"
tail -n 3 "$out/fused.err"

echo "== NCCL all-reduce of ResNet50's gradients on this one GPU (a local copy: no link is crossed)"
timeout 20 "$build/runner/runner" bench --allreduce --device cuda --json > "$out/nccl_allreduce.json" 2>&1
tail -n 2 "$out/nccl_allreduce.json"

echo "== PyTorch"
for precision in fp32-strict fp32 bf16 fp16; do
  timeout 35 "$python" bench/torch_gpu.py --precision "$precision" --batch "$batch" > "$out/torch_$precision.json" \
    2> "$out/torch_$precision.err"
  tail -n 1 "$out/torch_$precision.json"; tail -n 3 "$out/torch_$precision.err"
done

"$python" - "$out" "$batch" <<'PY'
import json, re, sys
out = sys.argv[1]
def load(name):
    try:
        with open(f"{out}/{name}.json") as f:
            return json.loads(f.read().strip().splitlines()[-1])
    except Exception:
        return None
def text(name):
    try:
        return open(f"{out}/{name}").read()
    except OSError:
        return ""

tests = text("gpu_tests.log")
passed, failed = len(set(re.findall(r"^\[ +OK +\] (\S+)", tests, re.M))), re.findall(r"^\[ +FAILED +\] (\S+)", tests, re.M)
skipped = len(set(re.findall(r"^\[ +SKIPPED +\] (\S+\.\S+)", tests, re.M)))
print(f"\nCUDA tests: {passed} passed, {len(set(failed))} failed, {skipped} skipped {sorted(set(failed)) if failed else ''}")

rows = [("fp32 (TF32 off)", "tessera_fp32", "torch_fp32-strict"), ("tf32", "tessera_tf32", "torch_fp32"),
        ("bf16 mixed", "tessera_bf16", "torch_bf16"), ("fp16 + loss scale", "tessera_fp16", "torch_fp16"),
        ("bf16, 24 GiB card", "tessera_bf16_24gib", None)]
gpu = next((t["gpu"] for _, _, p in rows if p and (t := load(p))), "?")
print(f"\nResNet50 training, 224x224, batch {sys.argv[2]}, {gpu}")
# Memory: what tessera allocated (arena, gradients, weights, optimizer state, cuDNN workspace), as
# PyTorch's max_memory_allocated counts; the device total in use (cudaMemGetInfo) in brackets.
print(f"{'configuration':<18} {'tessera img/s':>14} {'PyTorch img/s':>14} {'ratio':>7} {'tessera GiB':>16} {'PyTorch GiB':>12}")
for label, mine, theirs in rows:
    t, p = load(mine), load(theirs) if theirs else None
    ti = f"{t['train_img_per_s']:.0f}" if t else "n/a"
    pi = f"{p['train_img_per_s']:.0f}" if p else ("-" if not theirs else "n/a")
    ratio = f"{t['train_img_per_s'] / p['train_img_per_s']:.2f}" if t and p else "-"
    tm = f"{t.get('allocated_bytes', 0) / 2**30:.1f} ({t['peak_mem_bytes'] / 2**30:.1f})" if t else "-"
    pm = f"{p['peak_mem_gib']:.1f}" if p else "-"
    print(f"{label:<18} {ti:>14} {pi:>14} {ratio:>7} {tm:>16} {pm:>12}")

profile = [l for l in text("tessera_bf16_profile.err").splitlines() if l.startswith("profile:")]
if profile:
    print("\nbf16 step, per operation (TESSERA_PROFILE: every operation synchronised, so the split, not the speed):")
    for line in profile[:16]:
        print("  " + line[len("profile: "):])

try:
    fused = json.load(open(f"{out}/fused.json"))
except Exception:
    fused = None
if fused:
    marks = fused.get("benchmarks", [])
    copy = next((b["GB/s"] for b in marks if b["name"].startswith("StreamCopy") and "GB/s" in b), None)
    print(f"\nFused kernels, batch 256 (copy rate {copy:.0f} GB/s):" if copy else "\nFused kernels, batch 256:")
    for b in marks:
        if b["name"].startswith("BatchNormReLU") and "GB/s" in b:
            share = f"{100 * b['GB/s'] / copy:.0f}% of copy" if copy else ""
            print(f"  {b['name']:<62} {b['real_time']:8.3f} ms {b['GB/s']:7.0f} GB/s {share}")

nccl = load("nccl_allreduce")
if nccl:
    print(f"\nNCCL all-reduce, one GPU: {json.dumps(nccl)}")
PY
