#pragma once
// Runs an InferenceGraph (inference_graph.hpp) on the CPU backend's kernels, in evaluation mode,
// one value at a time. Two uses that the network's own forward cannot serve:
//   - calibration sees every value of the exported graph, including those a fused kernel never
//     writes (a folded conv's output before its ReLU);
//   - the fake-quant forward computes what an int8 QDQ model computes: each quantized value is
//     replaced by DequantizeLinear(QuantizeLinear(x)) before anything reads it, and the weights
//     are their int8 values times their scales (int8.hpp). tessera has no int8 kernels of its own.
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "tessera/backend/cpu/backend.hpp"
#include "tessera/core/layout.hpp"
#include "tessera/export/inference_graph.hpp"
#include "tessera/export/int8.hpp"

namespace tessera::deploy {

class GraphRunner {
public:
    using B = cpu::Backend;
    using Context = B::Context;
    using Op = layers::GraphNode::Op;
    /// Sees value v (0: the input) once computed, before it is quantized.
    using Observer = std::function<void(int value, const Tensor& t)>;

    /// Holds its own copy of the graph, its conv weights in the kernels' layout.
    explicit GraphRunner(InferenceGraph graph) : graph_(std::move(graph)) {
        for (auto& [name, dims] : graph_.dims)  // conv weights to the kernels' layout (OHWI)
            if (dims.size() == 4) {
                std::vector<float>& w = graph_.tensors.at(name);
                std::vector<float> ohwi(w.size());
                oihw_to_ohwi(w.data(), ohwi.data(), dims);
                w = std::move(ohwi);
            }
    }

    /// How many values the graph has (the input, then one per node): the length of a scale vector.
    std::size_t values() const { return graph_.nodes.size() + 1; }

    /// Fake-quantized activations from here on: one scale per value (0: left in float).
    void quantize_activations(std::vector<float> scales) {
        TESSERA_CHECK(scales.size() == values(), "GraphRunner: one activation scale per value");
        scales_ = std::move(scales);
    }

    /// Logits (N, 1, 1, classes) of normalised images x (N, H, W, C). The arena holds every value
    /// until the caller resets it.
    Tensor forward(Context& ctx, const Tensor& x, const Observer& observe = {}) {
        TESSERA_CHECK(!ctx.training, "GraphRunner runs in evaluation mode");
        std::vector<Tensor> values{x};
        finish(ctx, 0, values[0], observe);
        for (std::size_t i = 0; i < graph_.nodes.size(); ++i) {
            values.push_back(run(ctx, graph_.nodes[i], values));
            if (i + 1 < graph_.nodes.size()) finish(ctx, int(i + 1), values.back(), observe);
        }
        return values.back();
    }

private:
    Tensor run(Context& ctx, const layers::GraphNode& n, const std::vector<Tensor>& values) {
        const Tensor& x = values[std::size_t(n.inputs[0])];
        auto param = [&](const char* leaf) { return graph_.tensors.at(n.name + leaf).data(); };
        switch (n.op) {
            case Op::conv: {
                Tensor y = ctx.arena.tensor(n.conv.output_shape(x.shape), DType::f32);
                B::conv_forward(ctx, x, param(".weight"), n.conv, y);
                if (graph_.has(n.name + ".bias")) add_bias(y, param(".bias"));
                return y;
            }
            case Op::batchnorm: {
                Tensor y = ctx.arena.tensor(x.shape, DType::f32);
                B::batchnorm_forward(
                    ctx, x, {param(".weight"), param(".bias"), param(".running_mean"), param(".running_var"), n.eps},
                    {nullptr, nullptr}, y);
                return y;
            }
            case Op::relu: {
                Tensor y = ctx.arena.tensor(x.shape, DType::f32);
                B::relu_forward(ctx, x, y);
                return y;
            }
            case Op::add: {
                Tensor y = ctx.arena.tensor(x.shape, DType::f32);
                B::add(ctx, x, values[std::size_t(n.inputs[1])], y);
                return y;
            }
            case Op::max_pool: {
                Tensor y = ctx.arena.tensor(n.pool.output_shape(x.shape), DType::f32);
                auto* argmax = reinterpret_cast<std::int32_t*>(ctx.arena.allocate_floats(y.size()));
                B::maxpool_forward(ctx, x, n.pool, y, argmax);
                return y;
            }
            case Op::global_avg_pool: {
                Tensor y = ctx.arena.tensor({x.shape.n, 1, 1, x.shape.c}, DType::f32);
                B::global_avgpool_forward(ctx, x, y);
                return y;
            }
            case Op::linear: {
                Tensor y = ctx.arena.tensor({x.shape.n, 1, 1, n.out_features}, DType::f32);
                B::linear_forward(ctx, x, param(".weight"), param(".bias"), n.out_features, y);
                return y;
            }
        }
        throw internal_error("GraphRunner", "an operation it does not know");
    }

    static void add_bias(const Tensor& y, const float* bias) {  // channels last
        const std::size_t c = std::size_t(y.shape.c), pixels = y.size() / c;
        for (std::size_t p = 0; p < pixels; ++p)
            for (std::size_t k = 0; k < c; ++k) y.data[p * c + k] += bias[k];
    }

    void finish(Context& ctx, int v, Tensor& t, const Observer& observe) {
        if (observe) observe(v, t);
        if (scales_.empty() || scales_[std::size_t(v)] <= 0) return;
        if (v == 0) {  // the caller's images are never overwritten
            Tensor copy = ctx.arena.tensor(t.shape, DType::f32);
            std::copy_n(t.data, t.size(), copy.data);
            t = copy;
        }
        const float s = scales_[std::size_t(v)];
        for (std::size_t i = 0; i < t.size(); ++i) t.data[i] = int8::fake_quantize(t.data[i], s);
    }

    InferenceGraph graph_;
    std::vector<float> scales_;
};

}  // namespace tessera::deploy
