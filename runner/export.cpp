// runner export --checkpoint PATH --onnx OUT.onnx: a trained network as a standard ONNX model, for
// ONNX Runtime, TensorRT or OpenVINO (onnx_model.hpp).
#include <cstdio>

#include "deploy.hpp"
#include "tessera/train/checkpoint.hpp"

namespace tessera::runner {

deploy::InferenceGraph load_inference_graph(const ModelCard& card) {
    auto net = make_cpu_network(card.arch, card.classes, card.channels);
    checkpoint::load(net->params(), card.checkpoint);
    return deploy::inference_graph(*net);
}

onnx_model::Options onnx_options(const Args& args) {
    onnx_model::Options o;
    o.opset = args.integer("opset", 17);
    if (args.flag("dynamic-batch") && args.value("batch"))
        throw user_error("--dynamic-batch", "and --batch exclude each other", "give one of them");
    o.batch = args.flag("dynamic-batch") ? 0 : args.integer("batch", 1);
    o.with_preprocessing = args.flag("with-preprocessing");
    o.nhwc = args.flag("nhwc");
    return o;
}

int export_onnx(const std::vector<std::string>& raw) {
    Args args(raw, {"fold-bn", "dynamic-batch", "with-preprocessing", "nhwc"},
              {"checkpoint", "onnx", "arch", "labels", "image-size", "resize", "opset", "batch"});
    if (!args.value("checkpoint") || !args.value("onnx") || !args.positional().empty())
        throw user_error("runner export", "expected --checkpoint PATH --onnx OUT.onnx",
                         "e.g. runner export --checkpoint runs/r/best.safetensors --onnx resnet50.onnx --fold-bn");
    onnx_model::require();
    const ModelCard card = read_model_card(args);
    const onnx_model::Options options = onnx_options(args);
    deploy::InferenceGraph graph = load_inference_graph(card);
    if (args.flag("fold-bn")) graph = deploy::fold_batchnorm(graph);
    const std::string out = *args.value("onnx");
    const auto summary = onnx_model::write(graph, card, options, nullptr, out);
    const std::string batch = options.batch ? "a fixed " + std::to_string(options.batch) + "-image" : "a dynamic";
    std::printf("%s: %s, opset %d, %s batch, %s input, %zu nodes, %.1f MB; ONNX's checker passed\n", out.c_str(),
                card.arch.c_str(), options.opset, batch.c_str(),
                options.with_preprocessing ? "uint8 NHWC" : (options.nhwc ? "float NHWC" : "float NCHW"), summary.nodes,
                double(summary.bytes) / 1e6);
    return 0;
}

}  // namespace tessera::runner
