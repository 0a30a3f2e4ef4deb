#pragma once
// A traced network (layers/graph.hpp) and its weights as an ONNX model, built with ONNX's own
// protobuf schema and checked by ONNX's checker: `runner export` writes it in fp32, `runner
// quantize` in int8 QDQ form.
#include <cstddef>
#include <string>
#include <vector>

#include "classifier.hpp"
#include <map>

#include "tessera/export/inference_graph.hpp"

namespace tessera::runner::onnx_model {

/// The oldest opsets the written graphs need: Conv, MaxPool, Gemm and BatchNormalization in the
/// forms ONNX Runtime and TensorRT take (11); QuantizeLinear's per-channel `axis` (13).
inline constexpr int min_opset = 11, min_qdq_opset = 13;

struct Options {
    int opset = 17;
    int batch = 1;                    // 0: a dynamic batch dimension, named "batch"
    bool with_preprocessing = false;  // uint8 NHWC in, tessera's normalisation inside the graph
    bool nhwc = false;                // NHWC float in, through a Transpose (with_preprocessing implies it)
};

/// int8 QDQ: one activation scale per graph value (index: the value, 0 the input; 0 = left in
/// float). Each reader of a quantized value gets a QuantizeLinear/DequantizeLinear pair of its
/// own, so each convolution's input has one, as TensorRT's explicit quantization asks; weights are
/// int8 per output channel, symmetric. BatchNorms are folded first.
struct Quantization {
    std::vector<float> scales;
    std::string method;  // recorded in the metadata: "minmax", "percentile 99.99"
    int calibration_images = 0;
};

struct Summary {
    std::size_t nodes = 0, initializers = 0, bytes = 0;
};

/// The ONNX name of each graph value: "input", then each node's output, named after where it was
/// traced ("layer1.0.conv1", "layer1.0:add"); the last is "logits".
std::vector<std::string> value_names(const std::vector<layers::GraphNode>& nodes);

/// Whether this runner was built with ONNX (libonnx-dev); require() is a user error saying how to
/// get it where not.
bool available();
void require();

/// The options' user errors: an opset this build's ONNX does not know, or older than the graph
/// needs (min_opset; min_qdq_opset when quantized), a batch below 1.
void check(const Options& options, bool quantized);

/// Writes the model to `path` after ONNX's checker has passed it. User errors name the option to
/// change (an opset this graph cannot be written in, a batch below 1).
Summary write(const deploy::InferenceGraph& graph, const ModelCard& card, const Options& options,
              const Quantization* quantization, const std::string& path);

/// What runner quantize wrote, read back for `runner eval`: its metadata, its activation scales by
/// value, and its weights as the int8 model computes with them (dequantized), by state_dict name
/// in PyTorch's layouts. A model that runner quantize did not write is a user error.
struct QdqModel {
    std::map<std::string, std::string> metadata;
    std::map<std::string, float> scales;  // by value name (value_names)
    std::map<std::string, std::vector<float>> tensors;
};
QdqModel read_qdq(const std::string& path);

}  // namespace tessera::runner::onnx_model
