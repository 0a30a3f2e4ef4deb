// The inference graph as ONNX (onnx/onnx-ml.pb.h, ONNX's own schema), checked by onnx::checker.
//
// Each traced node becomes the ONNX operator PyTorch's exporter gives its torch.nn module
// (torch.onnx, opset 11+): Conv (pads k/2, no bias unless a BatchNorm was folded in),
// BatchNormalization (eval), Relu, Add, MaxPool, GlobalAveragePool + Flatten, and Gemm with transB
// for Linear. Values are named after where they were traced ("layer1.0.conv1", "layer1.0:add"),
// initializers after the state_dict ("layer1.0.conv1.weight"), so a reader of the graph finds
// PyTorch's names.
#include "onnx_model.hpp"

#include "tessera/core/error.hpp"
#include "tessera/core/json.hpp"
#include "tessera/core/strings.hpp"

#include <set>

#ifdef TESSERA_WITH_ONNX
#include <onnx/checker.h>
#include <onnx/defs/schema.h>
#include <onnx/onnx_pb.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <sstream>

#include "tessera/export/int8.hpp"
#endif

namespace tessera::runner::onnx_model {

/// Unique value names from where each node was traced.
std::vector<std::string> value_names(const std::vector<layers::GraphNode>& nodes) {
    using Op = layers::GraphNode::Op;
    std::vector<std::string> names{"input"};
    std::set<std::string> taken{"input"};
    for (std::size_t i = 0; i < nodes.size(); ++i) {
        const layers::GraphNode& n = nodes[i];
        const bool has_params = n.op == Op::conv || n.op == Op::batchnorm || n.op == Op::linear;
        std::string base = has_params ? n.name : (n.name.empty() ? "" : n.name + ":") + op_name(n.op);
        if (i + 1 == nodes.size()) base = "logits";
        std::string name = base;
        for (int k = 1; !taken.insert(name).second; ++k) name = base + "_" + std::to_string(k);
        names.push_back(name);
    }
    return names;
}

#ifndef TESSERA_WITH_ONNX

bool available() { return false; }
void require() {
    throw user_error("runner", "was built without ONNX", "install libonnx-dev and libprotobuf-dev, then rebuild");
}
void check(const Options&, bool) { require(); }
Summary write(const deploy::InferenceGraph&, const ModelCard&, const Options&, const Quantization*,
              const std::string&) {
    require();
    return {};
}
QdqModel read_qdq(const std::string&) {
    require();
    return {};
}

#else

bool available() { return true; }
void require() {}

namespace {

using layers::GraphNode;
using Op = GraphNode::Op;

std::string numbers(const std::vector<float>& v) {
    std::string out;
    for (std::size_t i = 0; i < v.size(); ++i) {
        if (i) out += ',';
        out += shortest_decimal(double(v[i]));
    }
    return out;
}

/// Builds one GraphProto: initializers, nodes and their attributes.
class Builder {
public:
    explicit Builder(onnx::GraphProto& g) : g_(g) {}

    void floats(const std::string& name, const std::vector<std::int64_t>& dims, const float* data, std::size_t count) {
        raw(name, onnx::TensorProto::FLOAT, dims, data, count * sizeof(float));
    }
    void floats(const std::string& name, const std::vector<std::int64_t>& dims, const std::vector<float>& v) {
        floats(name, dims, v.data(), v.size());
    }
    template <class T>
    void raw(const std::string& name, int type, const std::vector<std::int64_t>& dims, const std::vector<T>& v) {
        raw(name, type, dims, v.data(), v.size() * sizeof(T));
    }
    void raw(const std::string& name, int type, const std::vector<std::int64_t>& dims, const void* data,
             std::size_t bytes) {
        onnx::TensorProto* t = g_.add_initializer();
        t->set_name(name);
        t->set_data_type(type);
        for (auto d : dims) t->add_dims(d);
        t->set_raw_data(data, bytes);
    }

    onnx::NodeProto& node(const std::string& op, const std::vector<std::string>& in, const std::string& out,
                          const std::string& name) {
        onnx::NodeProto* n = g_.add_node();
        n->set_op_type(op);
        n->set_name(name);
        for (auto& i : in) n->add_input(i);
        n->add_output(out);
        return *n;
    }
    static void ints(onnx::NodeProto& n, const char* name, const std::vector<std::int64_t>& v) {
        onnx::AttributeProto* a = n.add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::INTS);
        for (auto x : v) a->add_ints(x);
    }
    static void integer(onnx::NodeProto& n, const char* name, std::int64_t v) {
        onnx::AttributeProto* a = n.add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::INT);
        a->set_i(v);
    }
    static void real(onnx::NodeProto& n, const char* name, float v) {
        onnx::AttributeProto* a = n.add_attribute();
        a->set_name(name);
        a->set_type(onnx::AttributeProto::FLOAT);
        a->set_f(v);
    }

private:
    onnx::GraphProto& g_;
};

void tensor_value(onnx::ValueInfoProto& v, const std::string& name, int type, int batch,
                  const std::vector<std::int64_t>& rest) {
    v.set_name(name);
    onnx::TypeProto::Tensor* t = v.mutable_type()->mutable_tensor_type();
    t->set_elem_type(type);
    onnx::TensorShapeProto* shape = t->mutable_shape();
    if (batch > 0)
        shape->add_dim()->set_dim_value(batch);
    else
        shape->add_dim()->set_dim_param("batch");
    for (auto d : rest) shape->add_dim()->set_dim_value(d);
}

}  // namespace

void check(const Options& o, bool quantized) {
    const int newest = onnx::OpSchemaRegistry::DomainToVersionRange::Instance().Map().at(onnx::ONNX_DOMAIN).second;
    if (o.opset > newest)
        throw user_error(
            "--opset",
            std::to_string(o.opset) + " is newer than this build's ONNX knows (" + std::to_string(newest) + ")",
            "use --opset " + std::to_string(newest) + " or older");
    const int least = quantized ? min_qdq_opset : min_opset;
    if (o.opset < least)
        throw user_error("--opset", std::to_string(o.opset) + " is older than this graph needs",
                         quantized
                             ? "int8 QDQ needs opset 13 or later (QuantizeLinear's per-channel axis): use --opset 13"
                             : "use --opset 11 or later (Conv, MaxPool and BatchNormalization as ONNX Runtime "
                               "and TensorRT take them)");
    if (o.batch < 0) throw user_error("--batch", "must be at least 1 (or use --dynamic-batch)");
}

Summary write(const deploy::InferenceGraph& graph, const ModelCard& card, const Options& o, const Quantization* q,
              const std::string& path) {
    check(o, q != nullptr);
    const auto& nodes = graph.nodes;
    TESSERA_CHECK(!nodes.empty() && nodes.back().op == Op::linear, "the traced graph must end with its classifier");
    TESSERA_CHECK(!q || q->scales.size() == nodes.size() + 1, "one activation scale per value");

    onnx::ModelProto model;
    model.set_ir_version(onnx::IR_VERSION);
    model.set_producer_name("tessera");
    model.set_model_version(1);
    model.set_doc_string("tessera " + card.arch + (q ? ", int8 QDQ" : ""));
    onnx::OperatorSetIdProto* opset = model.add_opset_import();
    opset->set_domain("");
    opset->set_version(o.opset);
    onnx::GraphProto& g = *model.mutable_graph();
    g.set_name(card.arch);
    Builder b(g);

    // The input: NCHW float, or NHWC (float, or uint8 pixels) through a Transpose.
    const bool nhwc = o.nhwc || o.with_preprocessing;
    const std::int64_t c = card.channels, s = card.crop;
    tensor_value(*g.add_input(), "input", o.with_preprocessing ? onnx::TensorProto::UINT8 : onnx::TensorProto::FLOAT,
                 o.batch, nhwc ? std::vector<std::int64_t>{s, s, c} : std::vector<std::int64_t>{c, s, s});
    std::string x = "input";
    if (o.with_preprocessing) {  // as normalize_images: (p * (1/255) - mean) * (1/std), channel last
        std::vector<float> inv_std;
        for (float v : card.std) inv_std.push_back(1 / v);
        const float inv_255 = 1.f / 255.f;
        b.floats("preprocess.scale", {}, &inv_255, 1);
        b.floats("preprocess.mean", {c}, card.mean);
        b.floats("preprocess.inv_std", {c}, inv_std);
        Builder::integer(b.node("Cast", {x}, "preprocess:float", "preprocess.cast"), "to", onnx::TensorProto::FLOAT);
        b.node("Mul", {"preprocess:float", "preprocess.scale"}, "preprocess:unit", "preprocess.to_unit");
        b.node("Sub", {"preprocess:unit", "preprocess.mean"}, "preprocess:centred", "preprocess.sub_mean");
        b.node("Mul", {"preprocess:centred", "preprocess.inv_std"}, "preprocess:normalised", "preprocess.div_std");
        x = "preprocess:normalised";
    }
    if (nhwc) {
        Builder::ints(b.node("Transpose", {x}, "input:nchw", "input.to_nchw"), "perm", {0, 3, 1, 2});
        x = "input:nchw";
    }

    std::vector<std::string> names = value_names(nodes);
    names[0] = x;
    // int8: each reader of a quantized value gets a QuantizeLinear/DequantizeLinear pair of its own,
    // with scale and zero point initializers of its own (the same numbers). ONNX Runtime fuses
    // DequantizeLinear -> Conv -> QuantizeLinear into an int8 QLinearConv only where no other node
    // reads the pair (its QDQ node units), and merges pairs that share initializers (common
    // subexpression elimination); so shared, ResNet-20's block inputs kept 11 of its 21
    // convolutions in float, dedicated, all 21 run in int8. TensorRT takes either form.
    std::vector<int> readers(names.size(), -1);  // -1: left in float
    auto qdq = [&](int v) {
        if (q && q->scales[std::size_t(v)] > 0) readers[std::size_t(v)] = 0;
    };
    auto read = [&](int v) {
        const std::string& name = names[std::size_t(v)];
        int& k = readers[std::size_t(v)];
        if (k < 0) return name;
        const std::string pair = name + (++k > 1 ? "_" + std::to_string(k) : "");
        const std::int8_t zero = 0;
        b.floats(pair + ".scale", {}, &q->scales[std::size_t(v)], 1);
        b.raw(pair + ".zero_point", onnx::TensorProto::INT8, {}, &zero, 1);
        b.node("QuantizeLinear", {name, pair + ".scale", pair + ".zero_point"}, pair + ":q", pair + ".quantize");
        b.node("DequantizeLinear", {pair + ":q", pair + ".scale", pair + ".zero_point"}, pair + ":dq",
               pair + ".dequantize");
        return pair + ":dq";
    };
    // Weights: float, or int8 per output channel behind a DequantizeLinear (axis 0).
    auto weight = [&](const std::string& name) {
        const auto& w = graph.tensor(name);
        const auto& dims = graph.dims.at(name);
        if (!q) {
            b.floats(name, dims, w);
            return name;
        }
        const std::vector<float> scales = deploy::int8::weight_scales(w, std::size_t(dims[0]));
        b.raw(name + ".int8", onnx::TensorProto::INT8, dims, deploy::int8::quantize_weights(w, scales));
        b.floats(name + ".scale", {dims[0]}, scales);
        b.raw(name + ".zero_point", onnx::TensorProto::INT8, {dims[0]}, std::vector<std::int8_t>(scales.size(), 0));
        Builder::integer(b.node("DequantizeLinear", {name + ".int8", name + ".scale", name + ".zero_point"}, name,
                                name + ".dequantize"),
                         "axis", 0);
        return name;
    };
    auto bias = [&](const std::string& name) {
        b.floats(name, graph.dims.at(name), graph.tensor(name));
        return name;
    };

    qdq(0);
    for (std::size_t i = 0; i < nodes.size(); ++i) {
        const GraphNode& n = nodes[i];
        const std::string& out = names[i + 1];
        std::vector<std::string> in;
        for (int v : n.inputs) in.push_back(read(v));
        switch (n.op) {
            case Op::conv: {
                in.push_back(weight(n.name + ".weight"));
                if (graph.has(n.name + ".bias")) in.push_back(bias(n.name + ".bias"));
                onnx::NodeProto& node = b.node("Conv", in, out, n.name);
                const std::int64_t k = n.conv.kernel, st = n.conv.stride, p = n.conv.pad;
                Builder::ints(node, "kernel_shape", {k, k});
                Builder::ints(node, "strides", {st, st});
                Builder::ints(node, "pads", {p, p, p, p});
                break;
            }
            case Op::batchnorm: {
                for (const char* leaf : {".weight", ".bias", ".running_mean", ".running_var"})
                    in.push_back(bias(n.name + leaf));
                Builder::real(b.node("BatchNormalization", in, out, n.name), "epsilon", n.eps);
                break;
            }
            case Op::relu:
                b.node("Relu", in, out, out);
                break;
            case Op::add:
                b.node("Add", in, out, out);
                break;
            case Op::max_pool: {
                onnx::NodeProto& node = b.node("MaxPool", in, out, out);
                const std::int64_t k = n.pool.kernel, st = n.pool.stride, p = n.pool.pad;
                Builder::ints(node, "kernel_shape", {k, k});
                Builder::ints(node, "strides", {st, st});
                Builder::ints(node, "pads", {p, p, p, p});
                break;
            }
            case Op::global_avg_pool:  // (N, C, 1, 1) -> (N, C), as torch.flatten(x, 1)
                b.node("GlobalAveragePool", in, out + ":nc11", out);
                Builder::integer(b.node("Flatten", {out + ":nc11"}, out, out + ".flatten"), "axis", 1);
                break;
            case Op::linear: {
                in.push_back(weight(n.name + ".weight"));
                in.push_back(bias(n.name + ".bias"));
                Builder::integer(b.node("Gemm", in, out, n.name), "transB", 1);
                break;
            }
        }
        if (i + 1 < nodes.size()) qdq(int(i + 1));
    }
    tensor_value(*g.add_output(), "logits", onnx::TensorProto::FLOAT, o.batch, {card.classes});

    // The metadata tessera's checkpoints carry (classifier.hpp's ModelCard), and how the input is laid out.
    auto meta = [&](const std::string& key, const std::string& value) {
        onnx::StringStringEntryProto* e = model.add_metadata_props();
        e->set_key(key);
        e->set_value(value);
    };
    meta("arch", card.arch);
    meta("input_height", std::to_string(card.crop));
    meta("input_width", std::to_string(card.crop));
    meta("channels", std::to_string(card.channels));
    meta("val_resize", std::to_string(card.resize));
    meta("mean", numbers(card.mean));
    meta("std", numbers(card.std));
    std::string labels = "[";
    for (int k = 0; k < card.classes; ++k) {
        if (k) labels += ", ";
        labels += json::quote(card.label(k));
    }
    meta("class_names", labels + "]");
    meta("input_layout", o.with_preprocessing ? "NHWC uint8 pixels, normalised inside the graph"
                         : nhwc               ? "NHWC float, normalised ((x/255 - mean) / std)"
                                              : "NCHW float, normalised ((x/255 - mean) / std)");
    if (q) {
        meta("quantization", "int8 QDQ, symmetric: weights per output channel, activations per tensor");
        meta("calibration", q->method + ", " + std::to_string(q->calibration_images) + " images");
    }

    try {
        onnx::checker::check_model(model);
    } catch (const std::exception& e) {
        throw internal_error(path, std::string("ONNX's checker refused the exported model: ") + e.what());
    }
    std::ofstream file(path, std::ios::binary | std::ios::trunc);
    if (!file || !model.SerializeToOstream(&file) || !file.flush())
        throw user_error(path, "cannot be written", "check that its folder exists and is writable");
    return {std::size_t(g.node_size()), std::size_t(g.initializer_size()), model.ByteSizeLong()};
}

QdqModel read_qdq(const std::string& path) {
    std::ifstream file(path, std::ios::binary);
    if (!file) throw user_error(path, "cannot be read");
    onnx::ModelProto model;
    if (!model.ParseFromIstream(&file)) throw user_error(path, "is not an ONNX model");
    QdqModel out;
    for (auto& e : model.metadata_props()) out.metadata[e.key()] = e.value();
    auto refuse = [&](const std::string& what) {
        return user_error(path, "is not an int8 model written by runner quantize (" + what + ")",
                          "evaluate a checkpoint, or the output of runner quantize");
    };
    if (!out.metadata.count("quantization") || !out.metadata.count("arch")) throw refuse("no quantization metadata");
    std::map<std::string, const onnx::TensorProto*> init;
    for (auto& t : model.graph().initializer()) init[t.name()] = &t;
    auto tensor = [&](const onnx::NodeProto& n, int input, int type) -> const onnx::TensorProto& {
        if (n.input_size() <= input || !init.count(n.input(input))) throw refuse(n.name() + " reads no initializer");
        const onnx::TensorProto& t = *init.at(n.input(input));
        if (t.data_type() != type || !t.has_raw_data()) throw refuse(t.name() + " is not stored as written");
        return t;
    };
    auto floats = [&](const onnx::TensorProto& t) {
        std::vector<float> v(t.raw_data().size() / sizeof(float));
        if (v.empty()) throw refuse(t.name() + " is empty");
        std::memcpy(v.data(), t.raw_data().data(), v.size() * sizeof(float));
        return v;
    };
    for (auto& n : model.graph().node()) {
        if (n.op_type() == "QuantizeLinear" && n.input_size() > 0) {
            const float scale = floats(tensor(n, 1, onnx::TensorProto::FLOAT))[0];
            if (!(scale > 0 && std::isfinite(scale))) throw refuse(n.name() + "'s scale is not a positive number");
            out.scales[n.input(0)] = scale;
        }
        if (n.op_type() == "DequantizeLinear" && n.input_size() > 0 && init.count(n.input(0)) && n.output_size() > 0) {
            // A weight: int8 values times their output channel's scale.
            const std::string& q = tensor(n, 0, onnx::TensorProto::INT8).raw_data();
            const std::vector<float> scales = floats(tensor(n, 1, onnx::TensorProto::FLOAT));
            if (q.empty() || q.size() % scales.size() != 0)
                throw refuse(n.name() + ": scales do not divide the weight");
            std::vector<float> v(q.size());
            const std::size_t per_row = v.size() / scales.size();
            for (std::size_t i = 0; i < v.size(); ++i)
                v[i] = float(static_cast<std::int8_t>(q[i])) * scales[i / per_row];
            out.tensors[n.output(0)] = std::move(v);
        }
    }
    for (auto& t : model.graph().initializer())
        if (t.name().ends_with(".bias")) {
            if (t.data_type() != onnx::TensorProto::FLOAT || !t.has_raw_data())
                throw refuse(t.name() + " is not float");
            out.tensors[t.name()] = floats(t);
        }
    return out;
}

#endif

}  // namespace tessera::runner::onnx_model
