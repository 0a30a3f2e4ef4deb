"""PyTorch's side of the checkpoint interchange test.

  torch_interchange.py export ARCH DIR   torchvision ARCH (random init, BN statistics made
                                          non-trivial) -> DIR/weights.safetensors, an NHWC input
                                          batch and its logits in eval and training mode
  torch_interchange.py import ARCH DIR   loads DIR/from_tessera.safetensors with strict=True and
                                          checks it equals DIR/weights.safetensors
  torch_interchange.py predict ARCH DIR  the exported weights as above, three photographs of
                                          different sizes (DIR/*.jpg), and torchvision's class
                                          probabilities for each after Resize(256), CenterCrop(224),
                                          ToTensor and ImageNet's Normalize (DIR/expected.json)

safetensors files are written and read by the format's definition (8-byte little-endian header
length, JSON header, tensors sorted by dtype alignment then name, as save_file does), because the
safetensors package is not in Debian 12.
"""
import json
import os
import sys

import torch
import torchvision

# safetensors by the format's definition: runner parity's PyTorch side has the reader and writer.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "bench", "parity"))
from torch_side import load_file, save_file  # noqa: E402


def main():
    mode, arch, folder = sys.argv[1:4]
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    if mode in ("export", "predict"):
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                    m.num_batches_tracked.fill_(7)
            if mode == "predict":  # logits of a few units, so that the probabilities are not all 0 and 1
                model.fc.weight.mul_(0.03)
        save_file(model.state_dict(), f"{folder}/weights.safetensors")
        if mode == "predict":
            return predict(model, folder)
        x = torch.randn(2, 3, 64, 64)
        with torch.no_grad():
            model.eval()
            eval_logits = model(x)
            model.train()
            train_logits = model(x)
        x.permute(0, 2, 3, 1).contiguous().numpy().tofile(f"{folder}/input.f32")
        eval_logits.numpy().tofile(f"{folder}/logits_eval.f32")
        train_logits.numpy().tofile(f"{folder}/logits_train.f32")
        with open(f"{folder}/shape.txt", "w") as f:
            f.write("2 64 64 3\n")
    else:
        state = load_file(f"{folder}/from_tessera.safetensors")
        model.load_state_dict(state, strict=True)
        original = load_file(f"{folder}/weights.safetensors")
        for name, t in model.state_dict().items():
            if not torch.equal(t, original[name]):
                sys.exit(f"{name} differs after the round trip through tessera")


def predict(model, folder):
    import numpy as np
    from PIL import Image
    from torchvision import transforms
    preprocess = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                                     transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    rng = np.random.default_rng(1)
    expected = {}
    model.eval()
    for name, (w, h) in {"wide.jpg": (500, 375), "tall.jpg": (300, 400), "square.jpg": (224, 224)}.items():
        y, x = np.mgrid[0:h, 0:w]
        pixels = np.stack([128 + 90 * np.sin(x / (17 + c * 5) + y / (23 - c * 3)) for c in range(3)], -1)
        pixels = np.clip(pixels + rng.normal(0, 10, pixels.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(f"{folder}/{name}", quality=92)
        with torch.no_grad():
            probs = torch.softmax(model(preprocess(Image.open(f"{folder}/{name}").convert("RGB"))[None]), 1)[0]
        expected[name] = probs.tolist()
    with open(f"{folder}/expected.json", "w") as f:
        json.dump(expected, f)


if __name__ == "__main__":
    main()
