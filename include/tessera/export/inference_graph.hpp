#pragma once
// A network for deployment: its traced graph (layers/graph.hpp) with a copy of its weights, by
// state_dict name in PyTorch's layouts (conv weights OIHW), optionally with each BatchNorm folded
// into the convolution before it. What `runner export` writes as ONNX, what `runner quantize`
// calibrates, and what tessera's fake-quant forward runs.
//
// Folding (eval-mode BatchNorm after a bias-free conv, Jacob et al. 2018 §3.2):
//   k_c = gamma_c / sqrt(running_var_c + eps)
//   W'_c = k_c W_c                       b'_c = beta_c - k_c running_mean_c
// computed in double. A BatchNorm folds only when it reads a conv's output that nothing else
// reads; any other stays a BatchNorm.
#include <cmath>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/layout.hpp"
#include "tessera/layers/graph.hpp"
#include "tessera/models/network.hpp"

namespace tessera::deploy {

struct InferenceGraph {
    std::vector<layers::GraphNode> nodes;  // as traced; a conv with a bias has "<name>.bias" in tensors
    std::map<std::string, std::vector<float>> tensors;
    std::map<std::string, std::vector<std::int64_t>> dims;

    const std::vector<float>& tensor(const std::string& name) const {
        auto it = tensors.find(name);
        TESSERA_CHECK(it != tensors.end(), "the inference graph has no tensor " + name);
        return it->second;
    }
    bool has(const std::string& name) const { return tensors.count(name) != 0; }
    /// How many nodes read each value (index: value).
    std::vector<int> readers() const {
        std::vector<int> count(nodes.size() + 1, 0);
        for (auto& n : nodes)
            for (int v : n.inputs) ++count[std::size_t(v)];
        return count;
    }
};

/// The graph and weights of `net` (host values: download() first on a device).
template <class Net>
InferenceGraph inference_graph(const Net& net) {
    InferenceGraph g;
    g.nodes = net.graph();
    const models::ParamStore& store = net.params();
    auto copy = [&](const std::vector<models::ParamEntry>& entries, const std::vector<float>& memory) {
        for (auto& e : entries) {
            if (e.role == layers::Role::num_batches_tracked) continue;
            std::vector<float> v(memory.begin() + std::ptrdiff_t(e.offset),
                                 memory.begin() + std::ptrdiff_t(e.offset + e.size));
            if (e.role == layers::Role::conv_weight) ohwi_to_oihw(memory.data() + e.offset, v.data(), e.dims);
            g.tensors[e.name] = std::move(v);
            g.dims[e.name] = e.dims;
        }
    };
    copy(store.params, store.values);
    copy(store.buffer_entries, store.buffers);
    return g;
}

/// `g` with every BatchNorm that can be folded folded into its conv; values are renumbered.
inline InferenceGraph fold_batchnorm(const InferenceGraph& g) {
    using Op = layers::GraphNode::Op;
    InferenceGraph out;
    out.tensors = g.tensors;
    out.dims = g.dims;
    const std::vector<int> readers = g.readers();
    std::vector<int> value(g.nodes.size() + 1);  // old value -> new value
    value[0] = 0;
    for (std::size_t i = 0; i < g.nodes.size(); ++i) {
        layers::GraphNode n = g.nodes[i];
        const int in = n.inputs.empty() ? -1 : n.inputs[0];
        const bool folds = n.op == Op::batchnorm && in > 0 && g.nodes[std::size_t(in) - 1].op == Op::conv &&
                           readers[std::size_t(in)] == 1 && !g.has(g.nodes[std::size_t(in) - 1].name + ".bias");
        if (folds) {
            const std::string conv = g.nodes[std::size_t(in) - 1].name;
            std::vector<float>& w = out.tensors.at(conv + ".weight");
            const auto& gamma = g.tensor(n.name + ".weight");
            const auto& beta = g.tensor(n.name + ".bias");
            const auto& mean = g.tensor(n.name + ".running_mean");
            const auto& var = g.tensor(n.name + ".running_var");
            const std::size_t channels = gamma.size(), per_channel = w.size() / channels;
            std::vector<float> bias(channels);
            for (std::size_t c = 0; c < channels; ++c) {
                const double k = double(gamma[c]) / std::sqrt(double(var[c]) + double(n.eps));
                for (std::size_t j = 0; j < per_channel; ++j)
                    w[c * per_channel + j] = float(k * w[c * per_channel + j]);
                bias[c] = float(double(beta[c]) - k * double(mean[c]));
            }
            out.tensors[conv + ".bias"] = std::move(bias);
            out.dims[conv + ".bias"] = {std::int64_t(channels)};
            for (const char* leaf : {".weight", ".bias", ".running_mean", ".running_var"}) {
                out.tensors.erase(n.name + leaf);
                out.dims.erase(n.name + leaf);
            }
            value[i + 1] = value[std::size_t(in)];  // the BatchNorm's output is the conv's
            continue;
        }
        for (int& v : n.inputs) v = value[std::size_t(v)];
        out.nodes.push_back(std::move(n));
        value[i + 1] = int(out.nodes.size());
    }
    return out;
}

}  // namespace tessera::deploy
