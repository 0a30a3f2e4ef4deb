#pragma once
// What every layer shares: how parameters are named and visited, how a layer describes itself, and
// the options that binding and initialisation take.
//
// A *spec* (Conv<64, 3, 2>, Seq<…>) is a compile-time description: it states out_channels<In> and
// params<In, Classes>, and bind<In, Backend>() makes the *layer* that runs. Layers are ordinary
// classes templated on the backend only; channel counts reach them as constructor arguments, so
// every ResNet depth shares the same few layer types and the same kernels.
//
// Every layer has (checked by the Layer concept below; a spec by LayerSpec):
//   Shape  output_shape(Shape in) const
//   Tensor forward(Context&, const Tensor& x)      // (N, H, W, C) in, (N, H', W', C') out
//   Tensor backward(Context&, const Tensor& dy)    // returns dx, from ctx.grads (or dy itself when the
//                                                  // layer passes it through); the caller owns dy and dx.
//                                                  // Gradients of parameters accumulate (+=).
//   void   visit(ParamVisitor&)                    // parameters and buffers, with torchvision names
//   void   init(Rng&, const InitOptions&)
//   Shape  describe(Describer&, Shape in) const    // a row per leaf for `runner info`
//   int    trace(Tracer&, int x) const             // its operations in the inference graph (graph.hpp)
// and may have
//   bool   output_is_scratch() const               // its output may be overwritten (ReportsScratchOutput)
#include <concepts>
#include <type_traits>
#include <cstdint>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::layers {

/// Tells the context's gradient hook (data parallelism) that `count` gradients at `grad` are final
/// for this step: their all-reduce may start while the layers below run their backward.
template <class Context>
void gradients_ready(Context& ctx, const float* grad, std::size_t count) {
    if (ctx.gradient_hook) ctx.gradient_hook->ready(grad, count);
}

/// What a parameter is; decides its checkpoint layout, its initialisation and its weight decay.
enum class Role {
    conv_weight,
    linear_weight,
    linear_bias,
    bn_weight,
    bn_bias,
    running_mean,
    running_var,
    num_batches_tracked
};

inline const char* role_name(Role r) {
    switch (r) {
        case Role::conv_weight:
            return "conv_weight";
        case Role::linear_weight:
            return "linear_weight";
        case Role::linear_bias:
            return "linear_bias";
        case Role::bn_weight:
            return "bn_weight";
        case Role::bn_bias:
            return "bn_bias";
        case Role::running_mean:
            return "running_mean";
        case Role::running_var:
            return "running_var";
        case Role::num_batches_tracked:
            return "num_batches_tracked";
    }
    return "?";
}

/// Names in the style of torchvision's state_dict: "layer2.0.downsample.1.running_mean".
/// Named<"conv1", …> opens a segment; inside a Seq, a leaf without a name takes its position as its
/// name, as in torch.nn.Sequential. Seq, Residual and Repeat add no segment of their own.
class NameScope {
public:
    NameScope() { scopes_.push_back({"", 0}); }

    void push(const std::string& segment) { scopes_.push_back({scopes_.back().prefix + segment + ".", 0}); }
    void pop() { scopes_.pop_back(); }
    int take_index() { return scopes_.back().next_index++; }
    std::string qualify(const std::string& leaf) const { return scopes_.back().prefix + leaf; }
    /// The current segment without its trailing dot ("layer1.0.conv1"), for describing a layer.
    std::string current() const {
        const std::string& p = scopes_.back().prefix;
        return p.empty() ? p : p.substr(0, p.size() - 1);
    }

private:
    struct Scope {
        std::string prefix;
        int next_index;
    };
    std::vector<Scope> scopes_;
};

/// Sees every parameter (trainable, with a gradient) and buffer (running statistics). `dims` are in
/// PyTorch's layout (conv weights OIHW), whatever the layout in memory (OHWI for conv weights).
class ParamVisitor : public NameScope {
public:
    virtual ~ParamVisitor() = default;
    void param(const std::string& leaf, const std::vector<std::int64_t>& dims, Role role, float*& value, float*& grad) {
        on_param(qualify(leaf), dims, role, value, grad);
    }
    void buffer(const std::string& leaf, const std::vector<std::int64_t>& dims, Role role, float*& value) {
        on_buffer(qualify(leaf), dims, role, value);
    }

protected:
    virtual void on_param(const std::string& name, const std::vector<std::int64_t>& dims, Role role, float*& value,
                          float*& grad) = 0;
    virtual void on_buffer(const std::string& name, const std::vector<std::int64_t>& dims, Role role,
                           float*& value) = 0;
};

/// Collects one row per leaf layer for `runner info`.
class Describer : public NameScope {
public:
    struct Row {
        std::string name, layer;
        Shape output;
        std::int64_t params;
    };
    void row(const std::string& layer, Shape output, std::int64_t params) {
        rows_.push_back({current(), layer, output, params});
    }
    const std::vector<Row>& rows() const { return rows_; }

private:
    std::vector<Row> rows_;
};

class Tracer;  // graph.hpp: the inference graph, recorded by name

/// Run-time choices made when a spec is bound to a backend.
struct BindOptions {
    int num_classes = 1000;  // for Linear<classes_from_recipe>
};

struct InitOptions {
    bool zero_init_residual = false;  // gamma = 0 in each block's last BatchNorm (Goyal et al. 2017)
};

/// The contract of a bound layer, as listed at the top of this file. A layer that misses a member is
/// named in one error where its spec is bound, not deep inside the composite that calls it.
template <class L>
concept Layer = requires(L& layer, const L& bound, typename L::Context& ctx, const Tensor& t, Shape in,
                         ParamVisitor& params, Rng& rng, const InitOptions& init, Describer& rows, Tracer& graph) {
    { L::is_composite } -> std::convertible_to<bool>;
    { bound.output_shape(in) } -> std::same_as<Shape>;
    { layer.forward(ctx, t) } -> std::same_as<Tensor>;
    { layer.backward(ctx, t) } -> std::same_as<Tensor>;
    layer.visit(params);
    layer.init(rng, init);
    { bound.describe(rows, in) } -> std::same_as<Shape>;
    { bound.trace(graph, 0) } -> std::same_as<int>;
};

/// The contract of a spec, for In input channels on backend B: its channel count and parameter count
/// are compile-time constants, and bind<In, B>() makes a Layer that runs on B's context.
template <class Spec, int In, class B>
concept LayerSpec = requires(const BindOptions& options) {
    { Spec::template out_channels<In> } -> std::convertible_to<int>;
    { Spec::template params<In, 1000> } -> std::convertible_to<long>;
    { Spec::template bind<In, B>(options) } -> Layer;
}
&&std::same_as<typename decltype(Spec::template bind<In, B>(BindOptions{}))::Context, typename B::Context>;

/// A layer whose forward output is a tensor of its own that its backward never reads says so with
/// `bool output_is_scratch() const`: the layer that consumes the output may then overwrite it, as the
/// residual sum goes into the branch's output (torchvision's Bottleneck: `out += identity`). The
/// default, for a layer that does not say, is no: its output may be its input, or kept for backward.
template <class L>
concept ReportsScratchOutput = requires(const L& layer) {
    { layer.output_is_scratch() } -> std::same_as<bool>;
};
template <class L>
bool output_is_scratch(const L& layer) {
    if constexpr (ReportsScratchOutput<L>)
        return layer.output_is_scratch();
    else
        return false;
}

/// A spec that can run the ReLU that follows it in the same passes: `with_relu` names the spec that
/// does both (BatchNorm<P, true> for BatchNorm<P>). Seq binds it in place of the pair.
template <class Spec>
concept FusesNextReLU = requires {
    typename Spec::with_relu;
};

/// Binds a composite's child. The constraint names a child that misses the spec contract, and the
/// requirement it misses, at the line that composes it.
template <class Spec, int In, class B>
requires LayerSpec<Spec, In, B>
auto bind_child(const BindOptions& options) { return Spec::template bind<In, B>(options); }

/// Opens a name segment (Named) or, for an unnamed leaf in a Seq, its position; composites add none.
template <class L>
concept Composite = L::is_composite;

template <class Child, class Visit>
void visit_child(NameScope& scope, Child& layer, Visit&& visit) {
    const int index = scope.take_index();
    if constexpr (Composite<std::remove_cvref_t<Child>>) {
        visit(layer);
    } else {
        scope.push(std::to_string(index));
        visit(layer);
        scope.pop();
    }
}

/// Strings as template arguments: Named<"conv1", Conv<64, 7, 2>>.
template <std::size_t N>
struct FixedString {
    char text[N]{};
    constexpr FixedString(const char (&s)[N]) {
        for (std::size_t i = 0; i < N; ++i) text[i] = s[i];
    }
    std::string str() const { return text; }
};

}  // namespace tessera::layers
