"""ONNX Runtime's side of the export tests: checks a model with ONNX's checker and runs it.

  onnx_run.py MODEL INPUT DTYPE N,D1,D2,D3 OUTPUT
      onnx.checker.check_model(MODEL, full_check=True); reads INPUT (raw float32 or uint8, in the
      given shape), runs MODEL on ONNX Runtime's CPU provider with every graph optimisation, and
      writes its first output as raw float32 to OUTPUT. Prints the model's metadata and the
      operators ONNX Runtime ran (from its optimised graph) as one JSON line.

Run with the project's .venv (scripts/venv), where onnxruntime comes from PyPI and onnx from
Debian's python3-onnx.
"""
import json
import os
import sys
import tempfile

import numpy
import onnx
import onnxruntime


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
    meta = {p.key: p.value for p in onnx.load(model_path).metadata_props}
    print(json.dumps({"metadata": meta, "ops": ran, "output_shape": list(y.shape)}))


if __name__ == "__main__":
    main()
