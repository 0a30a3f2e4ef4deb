// runner quantize --checkpoint PATH --recipe RECIPE --out OUT.onnx: int8 post-training
// quantization, written as an ONNX QDQ model (onnx_model.hpp) for ONNX Runtime and TensorRT.
//
// BatchNorms are folded into their convolutions first. Calibration runs the folded graph in fp32
// over N images of the recipe's data (graph_runner.hpp) and takes, for every value, its largest
// |x| (minmax) or a percentile of |x| (percentile: a 2048-bin histogram over [0, max |x|], a
// second pass, as TensorRT's histogram calibrator); its scale is that over 127. Weights are
// quantized per output channel from their own range.
#include <algorithm>
#include <cmath>
#include <cstdio>

#include "deploy.hpp"
#include "tessera/recipe/run_spec.hpp"
#include "tessera/train/input.hpp"

namespace tessera::runner {

namespace {

/// Per value: the largest |x|, then (percentile) a histogram of |x| over [0, that].
class Calibrator {
public:
    static constexpr int bins = 2048;
    explicit Calibrator(std::size_t values) : amax_(values, 0.f), histogram_(values) {}

    void observe_range(int v, const Tensor& t) {
        float& m = amax_[std::size_t(v)];
        for (std::size_t i = 0; i < t.size(); ++i) m = std::max(m, std::fabs(t.data[i]));
    }
    void observe_histogram(int v, const Tensor& t) {
        auto& h = histogram_[std::size_t(v)];
        if (h.empty()) h.assign(bins, 0);
        const float m = amax_[std::size_t(v)];
        if (m <= 0) return;
        for (std::size_t i = 0; i < t.size(); ++i)
            ++h[std::min(std::size_t(std::fabs(t.data[i]) / m * bins), std::size_t(bins - 1))];
    }
    /// amax / 127 for each value; the last (the logits) stays in float.
    std::vector<float> scales(double percentile) const {
        std::vector<float> s(amax_.size());
        for (std::size_t v = 0; v + 1 < amax_.size(); ++v)
            s[v] = deploy::int8::scale_for(percentile > 0 ? clip(v, percentile) : amax_[v]);
        return s;
    }

private:
    double clip(std::size_t v, double percentile) const {
        const auto& h = histogram_[v];
        std::uint64_t total = 0;
        for (auto c : h) total += c;
        const double wanted = percentile / 100 * double(total);
        std::uint64_t seen = 0;
        for (int b = 0; b < bins; ++b)
            if (double(seen += h[std::size_t(b)]) >= wanted) return double(amax_[v]) * (b + 1) / bins;
        return amax_[v];
    }
    std::vector<float> amax_;
    std::vector<std::vector<std::uint64_t>> histogram_;
};

}  // namespace

std::unique_ptr<deploy::GraphRunner> open_int8_model(const std::string& path, const std::string& arch, int classes,
                                                     int channels) {
    onnx_model::QdqModel model = onnx_model::read_qdq(path);
    if (model.metadata.at("arch") != arch)
        throw user_error(path, "holds a " + model.metadata.at("arch") + ", but the recipe builds a " + arch,
                         "evaluate it with the recipe that trained it");
    // The graph that runner quantize wrote: the architecture traced and folded, its tensors the model's.
    deploy::InferenceGraph graph =
        deploy::fold_batchnorm(deploy::inference_graph(*make_cpu_network(arch, classes, channels)));
    for (auto& [name, values] : graph.tensors) {
        auto it = model.tensors.find(name);
        if (it == model.tensors.end() || it->second.size() != values.size())
            throw user_error(path, "has no " + name + " of " + std::to_string(values.size()) + " values",
                             "quantize the checkpoint again with runner quantize, for this recipe's model");
        values = std::move(it->second);
    }
    const std::vector<std::string> names = onnx_model::value_names(graph.nodes);
    std::vector<float> scales(names.size(), 0.f);
    for (std::size_t v = 0; v < names.size(); ++v)
        for (const std::string& name : v ? std::vector<std::string>{names[v]}
                                         : std::vector<std::string>{"input", "input:nchw", "preprocess:normalised"})
            if (model.scales.count(name)) scales[v] = model.scales.at(name);
    auto runner = std::make_unique<deploy::GraphRunner>(std::move(graph));
    runner->quantize_activations(std::move(scales));  // the weights are already the int8 model's
    return runner;
}

int quantize(const std::vector<std::string>& raw) {
    Args args(raw, {"dynamic-batch", "with-preprocessing", "nhwc"},
              {"checkpoint", "recipe", "out", "calibration", "method", "percentile", "split", "opset", "batch",
               "threads", "arch", "labels", "image-size", "resize"},
              {"set"});
    if (!args.value("checkpoint") || !args.value("recipe") || !args.value("out") || !args.positional().empty())
        throw user_error("runner quantize", "expected --checkpoint PATH --recipe RECIPE --out OUT.onnx",
                         "e.g. runner quantize --checkpoint runs/quickstart/best.safetensors --recipe "
                         "recipes/quickstart.toml --out quickstart.int8.onnx");
    onnx_model::require();
    const ModelCard card = read_model_card(args);
    const onnx_model::Options options = onnx_options(args);
    onnx_model::check(options, true);  // before calibrating, not after
    const std::string method = args.value("method").value_or("percentile");
    if (method != "minmax" && method != "percentile")
        throw user_error("--method", "\"" + method + "\" is not a calibration method", "use minmax or percentile");
    double percentile = 0;
    if (method == "percentile") {
        percentile = std::stod(args.value("percentile").value_or("99.99"));
        if (!(percentile > 50 && percentile <= 100))
            throw user_error("--percentile", "must be in (50, 100]", "e.g. --percentile 99.99");
    }
    const int wanted = args.integer("calibration", 512);
    const std::string split_name = args.value("split").value_or("train");
    if (split_name != "train" && split_name != "val")
        throw user_error("--split", "\"" + split_name + "\" is not a split", "use train or val");
    const plugin::Split split = split_name == "train" ? plugin::Split::train : plugin::Split::val;

    const recipe::RunSpec spec = recipe::open_run(*args.value("recipe"), args.values("set"));
    if (spec.arch() != card.arch || spec.num_classes != card.classes || spec.info.channels != card.channels)
        throw user_error(*args.value("recipe"),
                         "trains a " + spec.arch() + " of " + std::to_string(spec.num_classes) + " classes on " +
                             std::to_string(spec.info.channels) + "-channel images, but " + card.checkpoint +
                             " holds a " + card.arch + " of " + std::to_string(card.classes) + " classes on " +
                             std::to_string(card.channels),
                         "calibrate with the recipe that trained the checkpoint");

    const deploy::InferenceGraph graph = deploy::fold_batchnorm(load_inference_graph(card));
    deploy::GraphRunner runner(graph);
    const int threads = args.value("threads") ? thread_count(args) : ThreadPool::default_threads();
    auto ctx = make_context<cpu::Backend>(threads, "fp32", "runner quantize");
    ctx->training = false;
    Calibrator calibrator(runner.values());
    // The same images in each pass: the data's order and augmentation are functions of the plan.
    const train::Normalization normalization(spec.info);
    auto pass = [&](const deploy::GraphRunner::Observer& observe) {
        plugin::DataSource& data = *spec.data;
        data.start_epoch(split, train::epoch_plan(0, split, std::min(32, wanted), spec.train.seed, nullptr));
        plugin::Batch batch;
        int seen = 0;
        while (seen < wanted && data.next(batch)) {
            batch.count = std::min(batch.count, wanted - seen);
            ctx->arena.reset();
            runner.forward(*ctx, normalization.input<cpu::Backend>(*ctx, batch), observe);
            seen += batch.count;
        }
        return seen;
    };
    const int images = pass([&](int v, const Tensor& t) { calibrator.observe_range(v, t); });
    if (images == 0)
        throw user_error(*args.value("recipe"), "its " + split_name + " data has no images to calibrate on",
                         "point the recipe's data at a folder with images, or use --split val");
    if (percentile > 0) pass([&](int v, const Tensor& t) { calibrator.observe_histogram(v, t); });

    const onnx_model::Quantization q{calibrator.scales(percentile),
                                     method == "minmax" ? "minmax" : "percentile " + shortest_decimal(percentile),
                                     images};
    const std::string out = *args.value("out");
    const auto summary = onnx_model::write(graph, card, options, &q, out);
    std::printf(
        "%s: %s in int8 QDQ (opset %d), calibrated by %s on %d %s images; %zu nodes, %.1f MB; ONNX's "
        "checker passed\n",
        out.c_str(), card.arch.c_str(), options.opset, q.method.c_str(), images, split_name.c_str(), summary.nodes,
        double(summary.bytes) / 1e6);
    std::printf("its accuracy through tessera's fake-quant forward: runner eval %s --checkpoint %s\n",
                args.value("recipe")->c_str(), out.c_str());
    return 0;
}

}  // namespace tessera::runner
