#!/usr/bin/python3
"""PyTorch's side of bench/cpu_vs_pytorch: the same work as tessera's, on the same CPU.

  quickstart  ResNet-20 (projection shortcuts, as tessera's resnet20) on Fashion-MNIST: 2 epochs,
              batch 128, SGD with Nesterov momentum 0.9 and weight decay 5e-4, OneCycle to 0.2 with
              pct_start 0.25 (recipes/quickstart.toml). Prints the training time and the top-1.
  resnet50    torchvision's ResNet50 at 224 px: training images/s at batch 32, inference images/s at
              batches 1 and 32.

--precision fp32 runs channels-last fp32 (oneDNN's fast layout); bf16 runs under CPU autocast.
One JSON line per result. Debian's python3-torch, 2 threads unless --threads says otherwise.
"""
import argparse
import gzip
import json
import os
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    dims = data[3]
    shape = struct.unpack(">" + "I" * dims, data[4:4 + 4 * dims])
    return torch.frombuffer(bytearray(data[4 + 4 * dims:]), dtype=torch.uint8).reshape(shape)


def fashion_mnist(folder):
    def load(prefix):
        name = lambda kind: os.path.join(folder, f"{prefix}-{kind}")
        pick = lambda base: base + ".gz" if os.path.exists(base + ".gz") else base
        images = read_idx(pick(name("images-idx3-ubyte"))).float() / 255
        labels = read_idx(pick(name("labels-idx1-ubyte"))).long()
        return images.unsqueeze(1), labels
    train, test = load("train"), load("t10k")
    # As tessera's idx plugin: one mean and standard deviation over the training pixels.
    mean, std = train[0].mean(), train[0].std(unbiased=False)
    return ((train[0] - mean) / std, train[1]), ((test[0] - mean) / std, test[1])


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet20(nn.Module):
    """He et al. 2016 section 4.2 with n = 3, as tessera's CifarResNet<3>."""

    def __init__(self, channels, classes):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(3):
                blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(64, classes)
        for m in self.modules():  # tessera's initialisation: Kaiming normal, fan_out
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.blocks(F.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def autocast(precision):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")


def quickstart(args):
    (train_x, train_y), (test_x, test_y) = fashion_mnist(args.data)
    torch.manual_seed(1)
    model = ResNet20(1, 10).to(memory_format=torch.channels_last)
    epochs, batch = 2, 128
    steps = len(train_x) // batch  # whole batches, as tessera's epoch plan
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9, weight_decay=5e-4, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=0.2, total_steps=epochs * steps, pct_start=0.25)
    train_s, top1 = 0.0, 0.0
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train_x))
        start = time.perf_counter()
        for s in range(steps):
            idx = order[s * batch:(s + 1) * batch]
            x = train_x[idx].contiguous(memory_format=torch.channels_last)
            with autocast(args.precision):
                loss = F.cross_entropy(model(x), train_y[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        model.eval()
        hits = 0
        with torch.no_grad(), autocast(args.precision):
            for i in range(0, len(test_x), 500):
                x = test_x[i:i + 500].contiguous(memory_format=torch.channels_last)
                hits += (model(x).argmax(1) == test_y[i:i + 500]).sum().item()
        train_s += time.perf_counter() - start  # validation included, as tessera's time_s
        top1 = hits / len(test_x)
        print(json.dumps({"work": "quickstart", "epoch": epoch + 1, "top1": top1, "time_s": round(train_s, 1)}),
              flush=True)
    print(json.dumps({"work": "quickstart", "framework": "pytorch", "precision": args.precision,
                      "time_s": round(train_s, 1), "top1": top1}))


def resnet50(args):
    import torchvision
    torch.manual_seed(0)
    model = torchvision.models.resnet50().to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)

    def timed(batch, steps, train):
        x = torch.randn(batch, 3, 224, 224).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 1000, (batch,))
        model.train(train)
        elapsed = 0.0
        for s in range(steps + 1):  # the first is warm-up
            start = time.perf_counter()
            if train:
                with autocast(args.precision):
                    loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                with torch.no_grad(), autocast(args.precision):
                    model(x)
            if s:
                elapsed += time.perf_counter() - start
        return batch * steps / elapsed

    result = {"work": "resnet50", "framework": "pytorch", "precision": args.precision}
    result["train_img_per_s_b32"] = round(timed(32, args.steps, True), 3)
    result["infer_img_per_s_b1"] = round(timed(1, 10 * args.steps, False), 3)
    result["infer_img_per_s_b32"] = round(timed(32, args.steps, False), 3)
    print(json.dumps(result))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", choices=["quickstart", "resnet50"])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="timed steps for resnet50")
    parser.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    {"quickstart": quickstart, "resnet50": resnet50}[args.work](args)


if __name__ == "__main__":
    main()
