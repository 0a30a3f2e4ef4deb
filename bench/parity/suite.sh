#!/usr/bin/env bash
# The parity figures of the README's "Same training as PyTorch": runner parity on
#   - the quick start's recipe for one epoch (468 steps), test accuracy of both sides, seeds 1, 2, 3;
#   - the quick start's first 50 steps against PyTorch in fp32 and in fp64 (the run without rounding);
#   - each shipped ImageNet recipe's optimizer and schedule, 200 steps on synthetic 32 px data
#     (batch 32; the epochs shortened so that the 200 steps cover the whole schedule).
#   bench/parity/suite.sh [BUILD_DIR] [OUT_DIR]     (about an hour on two cores)
set -uo pipefail
cd "$(dirname "$0")/../.."
build=${1:-build}
out=${2:-runs/parity-suite}
runner="$build/runner/runner"
mkdir -p "$out"
run() {  # name, then runner parity's arguments
  local name=$1; shift
  echo "== $name: runner parity $*"
  "$runner" parity "$@" --out "$out/$name" | tee "$out/$name.txt"
}
run quickstart_50 recipes/quickstart.toml --steps 50
for seed in 1 2 3; do
  run quickstart_epoch_seed$seed recipes/quickstart.toml --set train.epochs=1 --set run.seed=$seed --steps 468 \
    --every 26 --eval
done
synthetic='data={plugin="synthetic", image_size=32, batch_size=32, num_classes=100, train_size=160, val_size=64}'
cpu=(--set train.device=cpu --set model.precision=fp32)
# 160 images of batch 32: 5 steps an epoch. 40 epochs = 200 steps; the warm-ups keep their epochs.
# The rates scaled to the batch of 32 by the linear rule (the tuned recipe does so itself, scale_lr):
# at the rates of batches of 256 and 3,264 the runs blow up, and then compare nothing.
run resnet50_imagenet recipes/resnet50_imagenet.toml --set "$synthetic" "${cpu[@]}" --set train.epochs=40 \
  --set scheduler.max_lr=0.021875 --steps 200 --every 50
run resnet50_imagenet_tuned recipes/resnet50_imagenet_tuned.toml --set "$synthetic" "${cpu[@]}" --set train.epochs=40 \
  --steps 200 --every 50
run resnet50_imagenet_lars recipes/resnet50_imagenet_lars.toml --set "$synthetic" "${cpu[@]}" --set train.epochs=40 \
  --set scheduler.decay_epochs=40 --set scheduler.lr=0.098 --steps 200 --every 50
echo "== summary"
for f in "$out"/*/parity.json; do echo "$(basename "$(dirname "$f")"): $(cat "$f")"; done
