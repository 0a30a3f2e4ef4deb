"""The PyTorch web demo that `runner serve` is measured against: what a PyTorch user writes to serve
a trained ResNet, with FastAPI, uvicorn and torchvision's transforms, on the same checkpoint.

  serve_torch.py CHECKPOINT [--arch A] [--port 8081] [--threads T]

It answers POST /v1/predict (the image as the body, ?topk=K) with runner serve's JSON:
[{"image": "body", "top": [{"class": c, "label": "c", "prob": p}, ...]}]. Each request runs the network
on its own image, on FastAPI's thread pool, which is how such demos are written; torch uses T
threads for each forward pass.

The network and its preprocessing are read from the checkpoint as runner serve reads them: the
architecture, input size, validation resize, mean and std from its metadata (ImageNet's where it
has none; --arch where it does not say), the weights by torchvision's names. Needs the project's
venv (scripts/venv), which adds FastAPI, uvicorn and python-multipart to Debian's torch.
"""
import argparse
import io
import json
import os
import struct
import sys

import torch
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image
from torchvision import transforms

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity"))
from torch_side import load_file, make_model  # noqa: E402


def metadata(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)).get("__metadata__", {})


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("checkpoint")
    parser.add_argument("--arch", help="for checkpoints that do not say (runner serve's --arch)")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    meta = metadata(args.checkpoint)
    weights = load_file(args.checkpoint)
    classes, channels = weights["fc.weight"].shape[0], weights["conv1.weight"].shape[1]
    model = make_model(args.arch or meta["arch"], channels, classes)
    model.load_state_dict({k: v for k, v in weights.items() if k in model.state_dict()}, strict=True)
    model.eval()
    numbers = lambda key, fallback: [float(x) for x in meta[key].split(",")] if meta.get(key) else fallback
    crop = int(meta.get("input_height", 224))
    resize = int(meta.get("val_resize", 0)) or (crop if "input_height" in meta else 256)
    preprocess = transforms.Compose([
        transforms.Resize(resize),
        transforms.CenterCrop(crop),
        transforms.ToTensor(),
        transforms.Normalize(numbers("mean", [0.485, 0.456, 0.406]), numbers("std", [0.229, 0.224, 0.225])),
    ])
    mode = "L" if channels == 1 else "RGB"

    app = FastAPI()

    def classify(body, topk):
        try:
            image = Image.open(io.BytesIO(body)).convert(mode)
        except Exception as e:
            raise HTTPException(400, f"not an image: {e}")
        with torch.inference_mode():
            probs = torch.softmax(model(preprocess(image).unsqueeze(0)).double(), dim=1)[0]
        top = torch.topk(probs, min(topk, classes))
        return [{"image": "body", "top": [{"class": int(c), "label": str(int(c)), "prob": float(p)}
                                          for p, c in zip(top.values, top.indices)]}]

    @app.post("/v1/predict")
    async def predict(request: Request, topk: int = 5):
        # The image is the body, as runner serve takes it; the network runs on the thread pool, so
        # the event loop keeps accepting while it does.
        return await run_in_threadpool(classify, await request.body(), topk)

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
