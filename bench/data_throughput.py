#!/usr/bin/python3
"""Data loading throughput: decode + RandomResizedCrop(224) + horizontal flip on ImageNet-like JPEGs
(500x375, quality 90), tessera's loader against PIL + torchvision doing the same work, per core.

    bench/data_throughput.py BUILD_DIR [--images N] [--threads T] [--dir DIR]

Makes N JPEGs in an ImageFolder layout (kept in DIR if given, else in a temporary folder), then:
  - `runner bench --data` on an imagefolder recipe, with 1 thread and with T threads, with DCT
    scaling (the default) and without it (torchvision's pixels exactly);
  - with shards recipes too, after `runner prepare` packed the same images as they are
    (--max-side 500) and pre-resized (--max-side 256, FFCV's approach: less to decode);
  - PIL (Image.open().convert("RGB"), torchvision's RandomResizedCrop and RandomHorizontalFlip) in
    this one process, where python3-pil and python3-torchvision are installed.
Prints a table last.
"""
import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np


def photo_like(rng, width, height):
    """Smooth shapes and texture, with about the entropy of a photograph at quality 90."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.zeros((height, width, 3), np.float32)
    for c in range(3):
        for _ in range(4):
            fx, fy, phase = rng.uniform(0.002, 0.03), rng.uniform(0.002, 0.03), rng.uniform(0, 6.3)
            img[:, :, c] += 40 * np.sin(x * fx * 6.28 + y * fy * 6.28 + phase)
    img += 120 + rng.normal(0, 9, (height, width, 1)) + rng.normal(0, 4, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_dataset(root, count):
    from PIL import Image
    rng = np.random.default_rng(0)
    classes = 8
    sizes = []
    for i in range(count):
        folder = os.path.join(root, "train", f"n{i % classes:08d}")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"img{i:05d}.JPEG")
        if not os.path.exists(path):
            Image.fromarray(photo_like(rng, 500, 375)).save(path, "JPEG", quality=90)
        sizes.append(os.path.getsize(path))
    for c in range(classes):  # a validation folder, as the recipe needs one
        folder = os.path.join(root, "val", f"n{c:08d}")
        os.makedirs(folder, exist_ok=True)
        src = os.path.join(root, "train", f"n{c:08d}", f"img{c:05d}.JPEG")
        dst = os.path.join(folder, "v.JPEG")
        if not os.path.exists(dst):
            with open(src, "rb") as s, open(dst, "wb") as d:
                d.write(s.read())
    return sum(sizes) / len(sizes)


def recipe(path, data_lines):
    with open(path, "w") as f:
        f.write('[run]\nname = "data-bench"\nseed = 1\n\n[model]\narch = "resnet50"\n\n[data]\n' + data_lines +
                '\nbatch_size = 64\n\n[optimizer]\nplugin = "sgd"\n\n[scheduler]\nplugin = "constant"\n')
    return path


def runner_bench(runner, recipe_path, threads, batches):
    out = subprocess.run([runner, "bench", "--data", recipe_path, "--threads", str(threads), "--batches", str(batches),
                          "--json"], check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["img_per_s"]


def pil_rate(files, seconds=8.0):
    from PIL import Image
    from torchvision import transforms
    crop, flip = transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip()
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        img = Image.open(files[done % len(files)]).convert("RGB")
        np.asarray(flip(crop(img)))
        done += 1
    return done / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("build")
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--dir")
    args = parser.parse_args()
    runner = os.path.join(args.build, "runner", "runner")
    os.environ.setdefault("TESSERA_PLUGIN_PATH", os.path.join(args.build, "plugins"))
    work = args.dir or tempfile.mkdtemp(prefix="tessera-data-bench-")
    mean_bytes = make_dataset(work, args.images)
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(os.path.join(work, "train")) for f in fs)
    batches = max(1, args.images // 64 - 2)
    folder = f'plugin = "imagefolder"\ntrain = "{work}/train"\nval = "{work}/val"'
    rows = []
    for name, lines in [("tessera imagefolder", folder),
                        ("tessera imagefolder, fast_decode = false", folder + "\nfast_decode = false")]:
        r = recipe(os.path.join(work, "recipe.toml"), lines)
        rows.append((name, 1, runner_bench(runner, r, 1, batches)))
        if args.threads > 1:
            rows.append((name, args.threads, runner_bench(runner, r, args.threads, batches)))
    for max_side in (500, 256):
        shards = os.path.join(work, f"shards-{max_side}")
        packed = [subprocess.run([runner, "prepare", os.path.join(work, split), os.path.join(shards, split),
                                  "--max-side", str(max_side)], capture_output=True).returncode == 0
                  for split in ("train", "val")]
        if not all(packed):
            print(f"runner prepare failed: no shards row for --max-side {max_side}", file=sys.stderr)
            continue
        r = recipe(os.path.join(work, f"recipe-shards-{max_side}.toml"),
                   f'plugin = "shards"\ntrain = "{shards}/train"\nval = "{shards}/val"')
        name = "tessera shards, same JPEGs" if max_side == 500 else f"tessera shards, --max-side {max_side}"
        rows.append((name, 1, runner_bench(runner, r, 1, batches)))
        if args.threads > 1:
            rows.append((name, args.threads, runner_bench(runner, r, args.threads, batches)))
    try:
        rows.append(("PIL + torchvision", 1, pil_rate(files)))
    except ImportError as e:
        print(f"PIL or torchvision missing ({e}): no PIL row", file=sys.stderr)
    pil = next((rate for name, threads, rate in rows if name.startswith("PIL")), None)
    print(f"\n{args.images} JPEGs of 500x375 at quality 90, {mean_bytes / 1024:.0f} KiB on average; "
          f"decode + RandomResizedCrop(224) + flip")
    print(f"{'loader':40s} {'threads':>7s} {'img/s':>9s} {'img/s/thread':>12s} {'vs PIL/core':>11s}")
    for name, threads, rate in rows:
        ratio = f"{rate / threads / pil:.2f}x" if pil else "-"
        print(f"{name:40s} {threads:7d} {rate:9.1f} {rate / threads:12.1f} {ratio:>11s}")


if __name__ == "__main__":
    main()
