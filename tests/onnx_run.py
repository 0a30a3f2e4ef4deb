"""ONNX Runtime's side of the export tests: checks a model with ONNX's checker and runs it.

  onnx_run.py MODEL INPUT DTYPE N,D1,D2,D3 OUTPUT
      onnx.checker.check_model(MODEL, full_check=True); reads INPUT (raw float32 or uint8, in the
      given shape), runs MODEL on ONNX Runtime's CPU provider with every graph optimisation, and
      writes its first output as raw float32 to OUTPUT. Prints the model's metadata, the operators
      ONNX Runtime ran (from its optimised graph) and, for an int8 model, how many convolutions
      have the form TensorRT's explicit quantization asks for, as one JSON line.

Run with the project's .venv (scripts/venv), where onnxruntime comes from PyPI and onnx from
Debian's python3-onnx.
"""
import json
import os
import sys
import tempfile

import numpy
import onnx
import onnx.numpy_helper
import onnxruntime


def tensorrt_form(model):
    """Convolutions (and the Gemm) whose data input and weight both come from a DequantizeLinear, the
    weight's per output channel (axis 0), every zero point 0: [in that form, all]."""
    producer = {o: n for n in model.graph.node for o in n.output}
    init = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    good = total = 0
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm"):
            continue
        total += 1
        x, w = producer.get(n.input[0]), producer.get(n.input[1])
        if not (x and w and x.op_type == "DequantizeLinear" and w.op_type == "DequantizeLinear"):
            continue
        axis = {a.name: a.i for a in w.attribute}.get("axis", 1)
        zeros = all(not init[d.input[2]].any() for d in (x, w))
        per_channel = init[w.input[1]].shape == (init[w.input[0]].shape[0],) and axis == 0
        good += zeros and per_channel and init[w.input[0]].dtype == numpy.int8 and init[x.input[2]].dtype == numpy.int8
    return [good, total]


def main():
    model_path, input_path, dtype, shape, output_path = sys.argv[1:6]
    onnx.checker.check_model(model_path, full_check=True)
    shape = [int(d) for d in shape.split(",")]
    x = numpy.fromfile(input_path, dtype=numpy.float32 if dtype == "float32" else numpy.uint8).reshape(shape)
    with tempfile.TemporaryDirectory() as folder:
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = os.path.join(folder, "optimized.onnx")
        session = onnxruntime.InferenceSession(model_path, options, providers=["CPUExecutionProvider"])
        (y,) = session.run(None, {session.get_inputs()[0].name: x})
        ran = sorted({n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node})
    y.astype(numpy.float32).tofile(output_path)
    model = onnx.load(model_path)
    meta = {p.key: p.value for p in model.metadata_props}
    print(json.dumps({"metadata": meta, "ops": ran, "output_shape": list(y.shape), "tensorrt_form": tensorrt_form(model)}))


if __name__ == "__main__":
    main()
