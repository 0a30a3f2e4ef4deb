#!/usr/bin/env python3
"""PyTorch's side of bench/gpu_check.sh: torchvision's ResNet50 trained as a PyTorch user trains it
fast on one GPU (channels-last, cudnn.benchmark, autocast; GradScaler for fp16; SGD with momentum
and weight decay), timed with CUDA events after a warm-up. Prints one JSON line.

  python3 bench/torch_gpu.py --precision bf16 --batch 256
  precision: fp32-strict (TF32 off), fp32 (TF32 on, PyTorch's default for convolutions), bf16, fp16

Memory is torch.cuda.max_memory_allocated(): what PyTorch's allocator handed out, without the CUDA
context and the allocator's cache, as `runner bench` counts tessera's `allocated_bytes`.
"""
import argparse
import json
import time

import torch
import torchvision


def train_step_rate(precision, batch, image_size, warmup, steps, windows):
    tf32 = precision != "fp32-strict"
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    device = torch.device("cuda")
    model = torchvision.models.resnet50().to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    criterion = torch.nn.CrossEntropyLoss()
    autocast_type = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    scaler = torch.amp.GradScaler("cuda", enabled=precision == "fp16")
    # Random images and labels, made once: the input pipeline is not what is timed.
    images = torch.randn(batch, 3, image_size, image_size, device=device).to(memory_format=torch.channels_last)
    labels = torch.randint(0, 1000, (batch,), device=device)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=autocast_type or torch.float32, enabled=autocast_type is not None):
            loss = criterion(model(images), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    seconds = []
    for _ in range(windows):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(steps):
            step()
        stop.record()
        torch.cuda.synchronize()
        seconds.append(start.elapsed_time(stop) / 1000.0 / steps)
    step_s = sorted(seconds)[len(seconds) // 2]  # the median window
    return {
        "peer": "torchvision.models.resnet50", "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(), "precision": precision, "channels_last": True,
        "batch": batch, "image_size": image_size, "step_s": round(step_s, 5),
        "train_img_per_s": round(batch / step_s, 1),
        "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--precision", default="bf16", choices=["fp32-strict", "fp32", "bf16", "fp16"])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--windows", type=int, default=3)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench/torch_gpu.py: no CUDA device for PyTorch")
    start = time.time()
    result = train_step_rate(args.precision, args.batch, args.image_size, args.warmup, args.steps, args.windows)
    result["wall_s"] = round(time.time() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
