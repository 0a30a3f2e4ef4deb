"""PyTorch's side of `runner parity`: the same training run as tessera's, in plain PyTorch.

  torch_side.py DIR [--fp64] [--steps K]

--fp64 trains in float64 instead, into DIR/torch_fp64/: the run without rounding to speak of, which
both fp32 sides can be measured against. --steps K stops after the first K steps.

DIR is what `runner parity` wrote before calling this:
  spec.json            the recipe mapped to PyTorch: model, optimizer, scheduler, loss, clipping,
                       accumulation, weight average, normalisation, steps
  initial.safetensors  tessera's initial weights, by torchvision's names (loaded with strict=True)
  batches.u8           every batch tessera trained on, after augmentation, mixup and cutmix:
                       uint8, (batches, N, H, W, C)
  labels.i32, lam.f32  their labels (batches, N), and each batch's mixing weight (1: not mixed;
                       a mixed batch pairs image i with image N-1-i, as timm's batch mode)
  val.u8, val_labels.i32  with spec["eval"]: the validation images, for the test accuracy

It writes DIR/torch/: steps.csv (step, lr, momentum, loss: the rate and momentum the step used and
its loss before the update), step_<K>.safetensors (state_dict after each step K of spec["snapshots"], and
ema_<K>.safetensors for the weight average) and result.json.

Everything below is what a PyTorch user writes: torchvision's ResNets, torch.optim,
torch.optim.lr_scheduler, nn.CrossEntropyLoss(label_smoothing=...), clip_grad_norm_. Two pieces
are not in torch: LARS (torch has none; this is the MLPerf reference's), and the weight average,
which is timm's ModelEmaV2 loop written out.
"""
import copy
import csv
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from torchvision.models.resnet import BasicBlock

# ---- safetensors, by the format's definition (the safetensors package is not in Debian 12) --------


def save_file(tensors, path):
    dtypes = {torch.float32: "F32", torch.int64: "I64"}
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header, offset, blobs = {}, 0, []
    for name in order:
        t = tensors[name].detach().cpu().contiguous()
        t = t.float() if t.dtype == torch.float64 else t  # an fp64 run's snapshots are written as fp32
        data = t.numpy().tobytes()
        header[name] = {"dtype": dtypes[t.dtype], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def load_file(path):
    types = {"F32": torch.float32, "I64": torch.int64}
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    return {name: torch.frombuffer(bytearray(data[i["data_offsets"][0]:i["data_offsets"][1]]),
                                   dtype=types[i["dtype"]]).reshape(i["shape"])
            for name, i in header.items() if name != "__metadata__"}


# ---- the models ------------------------------------------------------------------------------------


class CifarResNet(nn.Module):
    """He et al. 2016 section 4.2 (depth 6n + 2) from torchvision's BasicBlock, with torchvision's names."""

    def __init__(self, n, in_channels, num_classes):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu = nn.ReLU(inplace=True)
        self.inplanes = 16
        self.layer1 = self._make_layer(16, n, 1)
        self.layer2 = self._make_layer(32, n, 2)
        self.layer3 = self._make_layer(64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)

    def _make_layer(self, planes, blocks, stride):
        layers = []
        for i in range(blocks):
            downsample = None
            if i == 0 and (stride != 1 or self.inplanes != planes):
                downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes, 1, stride, bias=False),
                                           nn.BatchNorm2d(planes))
            layers.append(BasicBlock(self.inplanes, planes, stride if i == 0 else 1, downsample))
            self.inplanes = planes
        return nn.Sequential(*layers)

    def forward(self, x):
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def make_model(arch, in_channels, num_classes):
    cifar = {"resnet20": 3, "resnet32": 5, "resnet44": 7, "resnet56": 9, "resnet110": 18}
    if arch in cifar:
        return CifarResNet(cifar[arch], in_channels, num_classes)
    small = arch.endswith("_small")
    model = getattr(torchvision.models, arch.removesuffix("_small"))(num_classes=num_classes)
    if small:  # tessera's small-image stem: a 3x3/1 conv, no max-pool
        model.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


# ---- LARS: torch has none; the MLPerf ResNet-50 reference's, as tessera's lars plugin ----------------


class LARS(torch.optim.Optimizer):
    """trust = eeta |w| / (|g| + wd |w| + eps) (1 where |w| or |g| is 0); g += wd w;
    v = momentum v + lr trust g; w -= v. Groups with trust=False (BatchNorm, biases) skip both."""

    def __init__(self, params, lr, momentum, weight_decay, eeta, epsilon, nesterov):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eeta=eeta,
                                      epsilon=epsilon, nesterov=nesterov, trust=True))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                g, rate = p.grad, group["lr"]
                if group["trust"]:
                    w_norm, g_norm = torch.norm(p.double()), torch.norm(g.double())
                    if w_norm > 0 and g_norm > 0:
                        rate *= float(group["eeta"] * w_norm /
                                      (g_norm + group["weight_decay"] * w_norm + group["epsilon"]))
                    g = g.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                v = state.setdefault("momentum_buffer", torch.zeros_like(p))
                v.mul_(group["momentum"]).add_(g, alpha=rate)
                p.sub_(g * rate + v * group["momentum"] if group["nesterov"] else v)


# ---- the recipe, mapped ---------------------------------------------------------------------------


def param_groups(model, weight_decay, exempt_bn_bias, **extra):
    """BatchNorm's weights and biases and every bias are the 1-d parameters."""
    if not exempt_bn_bias:
        return [dict(params=list(model.parameters()), weight_decay=weight_decay, **extra)]
    decay = [p for p in model.parameters() if p.ndim > 1]
    exempt = [p for p in model.parameters() if p.ndim <= 1]
    return [dict(params=decay, weight_decay=weight_decay, **extra),
            dict(params=exempt, weight_decay=0.0, **dict(extra, trust=False) if "trust" in extra else extra)]


def make_optimizer(model, o):
    if o["name"] == "sgd":
        return torch.optim.SGD(param_groups(model, o["weight_decay"], o["no_decay_bn_bias"]), lr=o["lr"],
                               momentum=o["momentum"], nesterov=o["nesterov"])
    if o["name"] == "adamw":
        return torch.optim.AdamW(param_groups(model, o["weight_decay"], o["no_decay_bn_bias"]), lr=o["lr"],
                                 betas=(o["beta1"], o["beta2"]), eps=o["eps"])
    if o["name"] == "lars":  # MLPerf: no decay and no trust ratio for BatchNorm and biases
        return LARS(param_groups(model, o["weight_decay"], True, trust=True), lr=o["lr"], momentum=o["momentum"],
                    weight_decay=o["weight_decay"], eeta=o["eeta"], epsilon=o["epsilon"], nesterov=o["nesterov"])
    raise SystemExit(f"torch_side.py: no optimizer {o['name']}")


def make_scheduler(optimizer, s, total_steps, steps_per_epoch):
    """Stepped once per optimizer step."""
    lr_sched = torch.optim.lr_scheduler
    if s["name"] == "onecycle":
        return lr_sched.OneCycleLR(optimizer, max_lr=s["max_lr"], total_steps=total_steps, pct_start=s["pct_start"],
                                   div_factor=s["div_factor"], final_div_factor=s["final_div_factor"],
                                   cycle_momentum=s["cycle_momentum"], base_momentum=s["base_momentum"],
                                   max_momentum=s["max_momentum"])
    if s["name"] == "cosine":  # linear warm-up from lr / warmup, then cosine to min_lr at the last step
        warmup = min(total_steps, int(s["warmup_epochs"] * steps_per_epoch))
        cosine = lr_sched.CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup), eta_min=s["min_lr"])
        if warmup == 0:
            return cosine
        linear = lr_sched.LinearLR(optimizer, start_factor=1 / warmup, end_factor=1.0, total_iters=max(1, warmup - 1))
        return lr_sched.SequentialLR(optimizer, [linear, cosine], milestones=[warmup])
    if s["name"] == "multistep":  # per epoch in the recipe; stepped per batch here
        return lr_sched.MultiStepLR(optimizer, milestones=[int(m * steps_per_epoch) for m in s["milestones"]],
                                    gamma=s["gamma"])
    if s["name"] == "constant":
        return lr_sched.LambdaLR(optimizer, lambda step: 1.0)
    if s["name"] == "poly":  # MLPerf's: linear warm-up, then (lr - end_lr) (1 - t)^power + end_lr
        warmup = min(total_steps, s["warmup_epochs"] * steps_per_epoch)
        end = s["decay_epochs"] * steps_per_epoch if s["decay_epochs"] > 0 else total_steps
        lr, end_lr, power = s["lr"], s["end_lr"], s["power"]

        def factor(step):
            if step < warmup:
                return (step + 1) / warmup
            left = max(0.0, 1 - (step - warmup) / max(1.0, end - warmup))
            return ((lr - end_lr) * left ** power + end_lr) / lr
        return lr_sched.LambdaLR(optimizer, factor)
    raise SystemExit(f"torch_side.py: no scheduler {s['name']}")


def initial_lr(spec):
    s = spec["scheduler"]
    return s["max_lr"] if s["name"] == "onecycle" else s["lr"]


# ---- the run --------------------------------------------------------------------------------------


def main():
    folder, fp64 = sys.argv[1], "--fp64" in sys.argv[2:]
    limit = int(sys.argv[sys.argv.index("--steps") + 1]) if "--steps" in sys.argv else None
    with open(os.path.join(folder, "spec.json")) as f:
        spec = json.load(f)
    dtype = torch.float64 if fp64 else torch.float32
    out = os.path.join(folder, "torch_fp64" if fp64 else "torch")
    os.makedirs(out, exist_ok=True)
    torch.set_num_threads(spec["threads"])
    device = torch.device(spec["device"])
    if device.type == "cuda":  # tessera's fp32 on a GPU is true fp32; its tf32, TF32 convolutions and matmuls
        torch.backends.cuda.matmul.allow_tf32 = spec["precision"] == "tf32"
        torch.backends.cudnn.allow_tf32 = spec["precision"] == "tf32"
    bf16 = spec["precision"] == "bf16" and not fp64

    n, h, w, c = spec["batch_size"], spec["height"], spec["width"], spec["channels"]
    batches = np.fromfile(os.path.join(folder, "batches.u8"), dtype=np.uint8).reshape(-1, n, h, w, c)
    labels = np.fromfile(os.path.join(folder, "labels.i32"), dtype=np.int32).reshape(-1, n)
    lams = np.fromfile(os.path.join(folder, "lam.f32"), dtype=np.float32)
    mean = torch.tensor(spec["mean"], dtype=dtype, device=device).view(1, -1, 1, 1)
    std = torch.tensor(spec["std"], dtype=dtype, device=device).view(1, -1, 1, 1)

    def normalise(pixels):  # torchvision's ToTensor and Normalize, NHWC uint8 in
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(device).permute(0, 3, 1, 2).to(dtype).div(255)
        return ((x - mean) / std).contiguous(memory_format=torch.channels_last)

    model = make_model(spec["arch"], c, spec["num_classes"])
    model.load_state_dict(load_file(os.path.join(folder, "initial.safetensors")), strict=True)
    model = model.to(device, dtype, memory_format=torch.channels_last)
    ema = copy.deepcopy(model) if spec["ema"] > 0 else None

    o = dict(spec["optimizer"], lr=initial_lr(spec))
    optimizer = make_optimizer(model, o)
    scheduler = make_scheduler(optimizer, spec["scheduler"], spec["total_steps"], spec["steps_per_epoch"])
    criterion = nn.CrossEntropyLoss(label_smoothing=spec["label_smoothing"])
    accumulate, steps, snapshots = spec["accumulate"], spec["steps"], set(spec["snapshots"])
    steps = min(steps, limit) if limit else steps

    def snapshot(step):
        save_file(model.state_dict(), os.path.join(out, f"step_{step}.safetensors"))
        if ema is not None:
            save_file(ema.state_dict(), os.path.join(out, f"ema_{step}.safetensors"))

    start = time.perf_counter()
    rows = []
    snapshot(0)
    model.train()
    for step in range(steps):
        group = optimizer.param_groups[0]
        lr = group["lr"]
        momentum = group["betas"][0] if "betas" in group else group["momentum"]
        optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for k in range(accumulate):
            b = step * accumulate + k
            x, y = normalise(batches[b]), torch.from_numpy(labels[b].astype(np.int64)).to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                logits = model(x)
            logits = logits.to(dtype)
            lam = float(lams[b])
            loss = criterion(logits, y)
            if lam != 1.0:  # mixup / cutmix: the pair's labels, weighted as the pixels were
                loss = lam * loss + (1 - lam) * criterion(logits, y.flip(0))
            (loss / accumulate).backward()
            loss_sum += loss.item()
        if spec["grad_clip"] > 0:
            nn.utils.clip_grad_norm_(model.parameters(), spec["grad_clip"])
        optimizer.step()
        scheduler.step()
        if ema is not None:  # timm's ModelEmaV2: every floating state_dict tensor, after each step
            with torch.no_grad():
                for e, m in zip(ema.state_dict().values(), model.state_dict().values()):
                    if e.dtype.is_floating_point:
                        e.mul_(spec["ema"]).add_(m, alpha=1 - spec["ema"])
                    else:
                        e.copy_(m)
        rows.append((step + 1, lr, momentum, loss_sum / accumulate))
        if step + 1 in snapshots:
            snapshot(step + 1)
    seconds = time.perf_counter() - start

    with open(os.path.join(out, "steps.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", "lr", "momentum", "loss"])
        for row in rows:
            writer.writerow([row[0]] + [repr(float(v)) for v in row[1:]])

    result = {"seconds": seconds, "torch": torch.__version__}
    if spec["eval"] and steps == spec["steps"]:
        val = np.fromfile(os.path.join(folder, "val.u8"), dtype=np.uint8).reshape(-1, h, w, c)
        val_labels = torch.from_numpy(np.fromfile(os.path.join(folder, "val_labels.i32"), dtype=np.int32).astype(np.int64))
        for name, net in [("val", model)] + ([("ema_val", ema)] if ema is not None else []):
            net.eval()
            hits, loss_sum = 0, 0.0
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                for i in range(0, len(val), 500):
                    logits = net(normalise(val[i:i + 500])).to(dtype)
                    y = val_labels[i:i + 500].to(device)
                    hits += (logits.argmax(1) == y).sum().item()
                    loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
            result[name + "_top1"] = hits / len(val)
            result[name + "_loss"] = loss_sum / len(val)
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
