"""ONNX Runtime on the CPU, models side by side in one run: what runner export and runner quantize
wrote (or any classifier with one NCHW float input).

  .venv/bin/python bench/onnx_speed.py MODEL.onnx... [--threads 2] [--batch 64] [--seconds 10]
                                       [--fashion-mnist DIR] [--prune 0.5]

For each model: images per second at batch 1 and at --batch (median of repeated runs over
--seconds each, the models interleaved so that a drift of the machine's speed hits them alike),
the operators ONNX Runtime ran after its graph optimisations (QLinearConv: int8 kernels), and with
--fashion-mnist the top-1 on its test set (t10k-*-ubyte.gz), normalised by the model's metadata.
--prune F adds, for each fp32 model, a copy with the fraction F of each convolution's and the
classifier's weights of smallest magnitude set to zero (unstructured magnitude pruning), measured
beside it: whether sparsity alone makes the model faster in ONNX Runtime.
Prints a Markdown table. ONNX Runtime comes from PyPI into .venv (scripts/venv).
"""
import argparse
import collections
import gzip
import os
import statistics
import tempfile
import time

import numpy
import onnx
import onnx.numpy_helper
import onnxruntime


def session(path, threads, optimized=None):
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if optimized:
        options.optimized_model_filepath = optimized
    return onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def input_shape(s, batch):
    dims = s.get_inputs()[0].shape
    return [batch] + [int(d) for d in dims[1:]]


def rate(s, batch, seconds):
    """Images per second: the median over repeated runs of about 0.2 s each."""
    x = numpy.random.default_rng(0).standard_normal(input_shape(s, batch), dtype=numpy.float32)
    name = s.get_inputs()[0].name
    s.run(None, {name: x})  # warm-up
    rates, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end or len(rates) < 3:
        runs, start = 0, time.perf_counter()
        while runs == 0 or time.perf_counter() - start < 0.2:
            s.run(None, {name: x})
            runs += 1
        rates.append(runs * batch / (time.perf_counter() - start))
    return statistics.median(rates)


def fashion_mnist_top1(s, path, folder):
    meta = {p.key: p.value for p in onnx.load(path).metadata_props}
    mean, std = float(meta.get("mean", "0")), float(meta.get("std", "1"))
    with gzip.open(os.path.join(folder, "t10k-images-idx3-ubyte.gz")) as f:
        images = numpy.frombuffer(f.read()[16:], numpy.uint8).reshape(-1, 1, 28, 28)
    with gzip.open(os.path.join(folder, "t10k-labels-idx1-ubyte.gz")) as f:
        labels = numpy.frombuffer(f.read()[8:], numpy.uint8)
    x = ((images.astype(numpy.float32) * numpy.float32(1 / 255) - numpy.float32(mean)) * numpy.float32(1 / std))
    name, fixed = s.get_inputs()[0].name, s.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else 500
    logits = numpy.concatenate([s.run(None, {name: x[i:i + step]})[0] for i in range(0, len(x), step)])
    return float((logits.argmax(1) == labels).mean())


def pruned_copy(path, fraction, folder):
    """The model with the smallest `fraction` of each Conv and Gemm weight (by magnitude) set to 0."""
    model = onnx.load(path)
    weights = {n.input[1] for n in model.graph.node if n.op_type in ("Conv", "Gemm")}
    for t in model.graph.initializer:
        if t.name in weights and t.data_type == onnx.TensorProto.FLOAT:
            w = onnx.numpy_helper.to_array(t).copy()
            w[numpy.abs(w) <= numpy.quantile(numpy.abs(w), fraction)] = 0
            t.CopyFrom(onnx.numpy_helper.from_array(w, t.name))
    out = os.path.join(folder, f"pruned{int(100 * fraction)}_" + os.path.basename(path))
    onnx.save(model, out)
    return out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--fashion-mnist")
    parser.add_argument("--prune", type=float)
    a = parser.parse_args()
    sessions, ops, top1 = {}, {}, {}
    with tempfile.TemporaryDirectory() as folder:
        if a.prune:
            a.models = [p for m in a.models for p in (m, pruned_copy(m, a.prune, folder))]
        for m in a.models:
            optimized = os.path.join(folder, os.path.basename(m))
            sessions[m] = session(m, a.threads, optimized)
            counts = collections.Counter(n.op_type for n in onnx.load(optimized).graph.node)
            ops[m] = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()) if "Conv" in k or k.startswith("QLinear"))
            if a.fashion_mnist:
                top1[m] = fashion_mnist_top1(sessions[m], m, a.fashion_mnist)
    rates = {m: {} for m in a.models}
    for batch in (1, a.batch):
        for m in a.models:  # interleaved: each model measured in the same minute as the others
            if isinstance(sessions[m].get_inputs()[0].shape[0], int) and sessions[m].get_inputs()[0].shape[0] != batch:
                rates[m][batch] = None
                continue
            rates[m][batch] = rate(sessions[m], batch, a.seconds)
    print(f"ONNX Runtime {onnxruntime.__version__}, CPU provider, {a.threads} threads")
    header = f"| model | img/s, batch 1 | img/s, batch {a.batch} | convolutions as ONNX Runtime ran them |"
    if a.fashion_mnist:
        header += " Fashion-MNIST top-1 |"
    print(header)
    print("|---" * (header.count("|") - 1) + "|")
    for m in a.models:
        cells = [os.path.basename(m)] + [f"{rates[m][b]:.1f}" if rates[m][b] else "-" for b in (1, a.batch)] + [ops[m]]
        if a.fashion_mnist:
            cells.append(f"{100 * top1[m]:.2f}%")
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
