#pragma once
// What runner export, quantize and eval share: a checkpoint's traced graph, the ONNX options of the
// command line, and an int8 model read back as tessera's fake-quant forward.
#include <memory>
#include <string>

#include "classifier.hpp"
#include "onnx_model.hpp"
#include "runner.hpp"
#include "tessera/export/graph_runner.hpp"

namespace tessera::runner {

/// The checkpoint's network on the CPU, with its weights, traced (export.cpp).
deploy::InferenceGraph load_inference_graph(const ModelCard& card);

/// --opset, --batch / --dynamic-batch, --with-preprocessing and --nhwc (export.cpp).
onnx_model::Options onnx_options(const Args& args);

/// What runner quantize wrote (an int8 QDQ ONNX model) as tessera's fake-quant forward (quantize.cpp).
std::unique_ptr<deploy::GraphRunner> open_int8_model(const std::string& path, const std::string& arch, int classes,
                                                     int channels);

}  // namespace tessera::runner
