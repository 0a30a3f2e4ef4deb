#pragma once
// A bound network's inference graph, as its layers trace it: one node per operation in forward
// order, each naming its parameters by their state_dict prefix. `runner export` writes it as ONNX,
// and `runner quantize` finds in it the inputs it calibrates. The graph holds no weights: a
// parameter is found by name in the network's ParamStore ("layer1.0.conv1" + ".weight").
//
// Evaluation mode: BatchNorm is y = gamma (x - running_mean) / sqrt(running_var + eps) + beta, as
// torch.nn.BatchNorm2d in eval(); a BatchNorm that runs its ReLU in the same pass still traces as
// the two operations the architecture names.
#include <string>
#include <vector>

#include "tessera/backend/ops.hpp"
#include "tessera/layers/layer.hpp"

namespace tessera::layers {

struct GraphNode {
    enum class Op { conv, batchnorm, relu, add, max_pool, global_avg_pool, linear };
    Op op;
    std::vector<int> inputs;  // values: 0 is the network's input, node i's output is value i + 1
    std::string name;         // where it was traced: its parameters' prefix ("layer1.0.downsample.0"), or the
                              // enclosing block's name for a node without parameters (an add: "layer1.0")
    ConvGeometry conv{};      // conv
    PoolGeometry pool{};      // max_pool
    float eps = 0;            // batchnorm
    int in_features = 0, out_features = 0;  // linear; channels for batchnorm
};

inline const char* op_name(GraphNode::Op op) {
    switch (op) {
        case GraphNode::Op::conv:
            return "conv";
        case GraphNode::Op::batchnorm:
            return "batchnorm";
        case GraphNode::Op::relu:
            return "relu";
        case GraphNode::Op::add:
            return "add";
        case GraphNode::Op::max_pool:
            return "max_pool";
        case GraphNode::Op::global_avg_pool:
            return "global_avg_pool";
        case GraphNode::Op::linear:
            return "linear";
    }
    return "?";
}

/// Records the graph as the layers' trace() calls it. Values are ints: 0 is the input, and each
/// call returns its node's output.
class Tracer : public NameScope {
public:
    using Value = int;
    static constexpr Value input = 0;

    Value conv(Value x, const ConvGeometry& g) {
        GraphNode n = node(Op::conv, {x});
        n.conv = g;
        return add_node(std::move(n));
    }
    Value batchnorm(Value x, int channels, float eps) {
        GraphNode n = node(Op::batchnorm, {x});
        n.eps = eps;
        n.in_features = channels;
        return add_node(std::move(n));
    }
    Value relu(Value x) { return add_node(node(Op::relu, {x})); }
    Value add(Value a, Value b) { return add_node(node(Op::add, {a, b})); }
    Value max_pool(Value x, const PoolGeometry& g) {
        GraphNode n = node(Op::max_pool, {x});
        n.pool = g;
        return add_node(std::move(n));
    }
    Value global_avg_pool(Value x) { return add_node(node(Op::global_avg_pool, {x})); }
    Value linear(Value x, int in, int out) {
        GraphNode n = node(Op::linear, {x});
        n.in_features = in;
        n.out_features = out;
        return add_node(std::move(n));
    }

    const std::vector<GraphNode>& nodes() const { return nodes_; }

private:
    using Op = GraphNode::Op;
    GraphNode node(Op op, std::vector<Value> inputs) const {
        GraphNode n{};
        n.op = op;
        n.inputs = std::move(inputs);
        n.name = current();
        return n;
    }
    Value add_node(GraphNode node) {
        for (Value v : node.inputs)
            TESSERA_CHECK(v >= 0 && v <= Value(nodes_.size()), "Tracer: a node reads a value not yet traced");
        nodes_.push_back(std::move(node));
        return Value(nodes_.size());
    }
    std::vector<GraphNode> nodes_;
};

}  // namespace tessera::layers
