#!/usr/bin/python3
"""Reference pixels for tessera's image tests, from PIL and torchvision (Debian's python3-pil and
python3-torchvision).

    image_reference.py DIR

writes into DIR:
  images/           test images made here: sizes from 1x1 to 4000x3000, grayscale, CMYK, progressive
                    JPEG, a PNG named .JPEG, palette and RGBA PNGs, and damaged files
  decode.txt        "<file> ok <width> <height>" (reference pixels in <file>.rgb) or "<file> bad"
  resize.txt        "<file> <x> <y> <w> <h> <out_w> <out_h>": PIL's crop + resize(BILINEAR), in <file>.crop<n>.rgb
  val.txt           "<file> <resize> <crop>": torchvision Resize + CenterCrop, in <file>.val.rgb
  rrc.txt           "<width> <height> <x> <y> <w> <h>" per line: torchvision RandomResizedCrop.get_params
"""
import io
import os
import sys

import numpy as np
from PIL import Image


def smooth_rgb(width, height, seed):
    """A photograph-like image: smooth gradients plus noise, so JPEG has detail to keep."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    r = 128 + 100 * np.sin(x / max(width, 1) * 6.28 * 2 + seed)
    g = 128 + 100 * np.cos(y / max(height, 1) * 6.28 * 3)
    b = 128 + 60 * np.sin((x + y) / max(width + height, 1) * 6.28 * 5)
    img = np.stack([r, g, b], -1) + rng.normal(0, 12, (height, width, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def main(out):
    images = os.path.join(out, "images")
    os.makedirs(images, exist_ok=True)
    cases = []  # (name, bytes)

    def jpeg(name, array, **kw):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, "JPEG", **kw)
        cases.append((name, buf.getvalue()))

    for w, h in [(1, 1), (2, 3), (17, 9), (500, 375), (375, 500), (4000, 3000)]:
        jpeg(f"rgb_{w}x{h}.JPEG", smooth_rgb(w, h, w + h), quality=90)
    jpeg("q100_444.jpg", smooth_rgb(333, 250, 7), quality=100, subsampling=0)
    jpeg("progressive.JPEG", smooth_rgb(640, 480, 3), quality=85, progressive=True)
    jpeg("gray.JPEG", smooth_rgb(320, 240, 5)[:, :, 0], quality=90)
    buf = io.BytesIO()
    Image.fromarray(smooth_rgb(300, 200, 9)).convert("CMYK").save(buf, "JPEG", quality=92)
    cases.append(("cmyk.JPEG", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(smooth_rgb(120, 90, 11)).save(buf, "PNG")
    cases.append(("png_named.JPEG", buf.getvalue()))
    buf = io.BytesIO()
    Image.fromarray(smooth_rgb(64, 48, 13)).convert("P", palette=Image.ADAPTIVE).save(buf, "PNG")
    cases.append(("palette.png", buf.getvalue()))
    rgba = np.dstack([smooth_rgb(50, 40, 15), np.full((40, 50), 77, np.uint8)])
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    cases.append(("rgba.png", buf.getvalue()))
    good = dict(cases)
    bad = [("truncated.JPEG", good["rgb_500x375.JPEG"][: len(good["rgb_500x375.JPEG"]) // 2]),
           ("truncated.png", good["png_named.JPEG"][:300]),
           ("empty.JPEG", b""),
           ("text.JPEG", b"this is not an image\n"),
           ("jpeg_header_only.JPEG", good["rgb_17x9.JPEG"][:40])]

    with open(os.path.join(out, "decode.txt"), "w") as manifest:
        for name, data in cases:
            path = os.path.join(images, name)
            with open(path, "wb") as f:
                f.write(data)
            img = Image.open(path).convert("RGB")
            with open(path + ".rgb", "wb") as f:
                f.write(img.tobytes())
            manifest.write(f"{name} ok {img.width} {img.height}\n")
        for name, data in bad:
            with open(os.path.join(images, name), "wb") as f:
                f.write(data)
            manifest.write(f"{name} bad\n")

    rng = np.random.default_rng(0)
    with open(os.path.join(out, "resize.txt"), "w") as manifest:
        for name in ["rgb_500x375.JPEG", "progressive.JPEG", "q100_444.jpg", "rgb_17x9.JPEG"]:
            img = Image.open(os.path.join(images, name)).convert("RGB")
            for n in range(4):
                w = int(rng.integers(1, img.width + 1))
                h = int(rng.integers(1, img.height + 1))
                x = int(rng.integers(0, img.width - w + 1))
                y = int(rng.integers(0, img.height - h + 1))
                ow, oh = [(224, 224), (37, 61), (img.width * 2, img.height + 3), (5, 5)][n]
                out_img = img.crop((x, y, x + w, y + h)).resize((ow, oh), Image.BILINEAR)
                with open(os.path.join(images, f"{name}.crop{n}.rgb"), "wb") as f:
                    f.write(out_img.tobytes())
                manifest.write(f"{name} {x} {y} {w} {h} {ow} {oh}\n")

    try:
        import torch
        from torchvision import transforms
    except ImportError:
        print("torchvision is not installed: no val.txt or rrc.txt", file=sys.stderr)
        return
    with open(os.path.join(out, "val.txt"), "w") as manifest:
        for name, resize, crop in [("rgb_500x375.JPEG", 256, 224), ("rgb_375x500.JPEG", 256, 224),
                                   ("rgb_4000x3000.JPEG", 256, 224), ("progressive.JPEG", 160, 128),
                                   ("cmyk.JPEG", 232, 224)]:
            img = Image.open(os.path.join(images, name)).convert("RGB")
            out_img = transforms.CenterCrop(crop)(transforms.Resize(resize)(img))
            with open(os.path.join(images, name + ".val.rgb"), "wb") as f:
                f.write(out_img.tobytes())
            manifest.write(f"{name} {resize} {crop}\n")
    torch.manual_seed(0)
    with open(os.path.join(out, "rrc.txt"), "w") as manifest:
        for w, h in [(500, 375), (1000, 100), (64, 64)]:
            img = Image.new("RGB", (w, h))
            for _ in range(20000):
                i, j, ch, cw = transforms.RandomResizedCrop.get_params(img, (0.08, 1.0), (3 / 4, 4 / 3))
                manifest.write(f"{w} {h} {j} {i} {cw} {ch}\n")


if __name__ == "__main__":
    main(sys.argv[1])
