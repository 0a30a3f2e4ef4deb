"""PyTorch's side of the checkpoint interchange test.

  torch_interchange.py export ARCH DIR   torchvision ARCH (random init, BN statistics made
                                          non-trivial) -> DIR/weights.safetensors, an NHWC input
                                          batch and its logits in eval and training mode
  torch_interchange.py import ARCH DIR   loads DIR/from_tessera.safetensors with strict=True and
                                          checks it equals DIR/weights.safetensors

safetensors files are written and read by the format's definition (8-byte little-endian header
length, JSON header, tensors sorted by dtype alignment then name, as save_file does), because the
safetensors package is not in Debian 12.
"""
import json
import struct
import sys

import torch
import torchvision

DTYPES = {torch.float32: "F32", torch.int64: "I64"}
TORCH = {"F32": torch.float32, "I64": torch.int64}


def save_file(tensors, path):
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header, offset, blobs = {}, 0, []
    for name in order:
        t = tensors[name].contiguous()
        data = t.numpy().tobytes()
        header[name] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def load_file(path):
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    data = blob[8 + n :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        begin, end = info["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[begin:end]), dtype=TORCH[info["dtype"]]).reshape(info["shape"])
    return out


def main():
    mode, arch, folder = sys.argv[1:4]
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)()
    if mode == "export":
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.uniform_(-0.2, 0.2)
                    m.running_var.uniform_(0.5, 1.5)
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.uniform_(-0.2, 0.2)
                    m.num_batches_tracked.fill_(7)
        save_file(model.state_dict(), f"{folder}/weights.safetensors")
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


if __name__ == "__main__":
    main()
