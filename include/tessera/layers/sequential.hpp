#pragma once
// Composition: Seq<Specs...> runs its children in order, Repeat<N, Block, First> runs N copies of a
// block (named First, First+1, …), Named<"name", Spec> gives a spec its state_dict name, and Identity
// passes its input through.
//
// The input channel count flows through a Seq at compile time: each child's in-channels are the
// previous child's out_channels, so a mismatch is a compile error at the line that composes them.
#include <tuple>
#include <utility>
#include <vector>

#include "tessera/layers/activation.hpp"
#include "tessera/layers/graph.hpp"

namespace tessera::layers {

// ---- Seq ---------------------------------------------------------------------------------------

/// One child's backward inside a composite: returns its dx and gives back g, the gradient it was
/// handed, unless g is the composite's own dy (its caller's) or the child passed g through.
template <class Context, Layer Child>
Tensor backward_step(Context& ctx, Child& layer, const Tensor& g, const Tensor& dy) {
    Tensor dx = layer.backward(ctx, g);
    if (g.data != dy.data && dx.data != g.data) ctx.grads.release(g);
    return dx;
}

template <class B, Layer... Layers>
class SeqLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = true;

    explicit SeqLayer(std::tuple<Layers...> layers) : layers_(std::move(layers)) {}

    Shape output_shape(Shape in) const {
        std::apply([&](const auto&... l) { ((in = l.output_shape(in)), ...); }, layers_);
        return in;
    }
    Tensor forward(Context& ctx, Tensor x) {
        const bool input_is_private = ctx.input_is_private;
        const float* input = x.data;
        std::apply(
            [&](auto&... l) {
                ((ctx.input_is_private = input_is_private || x.data != input, x = l.forward(ctx, x)), ...);
            },
            layers_);
        return x;
    }
    Tensor backward(Context& ctx, const Tensor& dy) {
        Tensor g = dy;
        backward_from<sizeof...(Layers)>(ctx, g, dy);
        return g;
    }
    bool output_is_scratch() const {
        if constexpr (sizeof...(Layers) == 0)
            return false;
        else
            return layers::output_is_scratch(std::get<sizeof...(Layers) - 1>(layers_));
    }
    void visit(ParamVisitor& v) {
        std::apply([&](auto&... l) { (visit_child(v, l, [&](auto& c) { c.visit(v); }), ...); }, layers_);
    }
    void init(Rng& rng, const InitOptions& o) {
        std::apply([&](auto&... l) { (l.init(rng, o), ...); }, layers_);
    }
    Shape describe(Describer& d, Shape in) const {
        std::apply([&](const auto&... l) { (visit_child(d, l, [&](const auto& c) { in = c.describe(d, in); }), ...); },
                   layers_);
        return in;
    }
    int trace(Tracer& t, int x) const {
        std::apply([&](const auto&... l) { (visit_child(t, l, [&](const auto& c) { x = c.trace(t, x); }), ...); },
                   layers_);
        return x;
    }

    template <std::size_t I>
    auto& get() {
        return std::get<I>(layers_);
    }

private:
    // Gradients between children belong to the Seq: each is given back once the child below has
    // used it. The Seq's own dy belongs to its caller.
    template <std::size_t I>
    void backward_from(Context& ctx, Tensor& g, const Tensor& dy) {
        if constexpr (I > 0) {
            g = backward_step(ctx, std::get<I - 1>(layers_), g, dy);
            backward_from<I - 1>(ctx, g, dy);
        }
    }
    std::tuple<Layers...> layers_;
};

namespace detail {
template <int In, class... Specs>
struct Chain {
    static constexpr int out = In;
    template <long Classes>
    static constexpr long params = 0;
    template <class B>
    static std::tuple<> bind(const BindOptions&) {
        return {};
    }
};
// A spec that can take in the ReLU after it (BatchNorm) is bound as `Spec::with_relu`, and the ReLU
// as FusedReLU: the architecture stays as written, and the pair runs in the same passes.
template <int In, FusesNextReLU Spec, class... Rest>
struct Chain<In, Spec, ReLU, Rest...> : Chain<In, typename Spec::with_relu, FusedReLU, Rest...> {};
template <int In, class Spec, class... Rest>
struct Chain<In, Spec, Rest...> {
    static constexpr int next = Spec::template out_channels<In>;
    static constexpr int out = Chain<next, Rest...>::out;
    template <long Classes>
    static constexpr long params = Spec::template params<In, Classes> + Chain<next, Rest...>::template params<Classes>;
    template <class B>
    static auto bind(const BindOptions& o) {
        return std::tuple_cat(std::make_tuple(bind_child<Spec, In, B>(o)), Chain<next, Rest...>::template bind<B>(o));
    }
};
}  // namespace detail

template <class... Specs>
struct Seq {
    template <int In>
    static constexpr int out_channels = detail::Chain<In, Specs...>::out;
    template <int In, long Classes>
    static constexpr long params = detail::Chain<In, Specs...>::template params<Classes>;

    template <int In, class B>
    static auto bind(const BindOptions& o) {
        return std::apply(
            [](auto&&... layers) {
                return SeqLayer<B, std::remove_cvref_t<decltype(layers)>...>(std::make_tuple(std::move(layers)...));
            },
            detail::Chain<In, Specs...>::template bind<B>(o));
    }
};

// ---- Named ---------------------------------------------------------------------------------------

template <class B, Layer Inner>
class NamedLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = true;

    NamedLayer(std::string name, Inner inner) : name_(std::move(name)), inner_(std::move(inner)) {}

    Shape output_shape(Shape in) const { return inner_.output_shape(in); }
    Tensor forward(Context& ctx, const Tensor& x) { return inner_.forward(ctx, x); }
    Tensor backward(Context& ctx, const Tensor& dy) { return inner_.backward(ctx, dy); }
    bool output_is_scratch() const { return layers::output_is_scratch(inner_); }
    void visit(ParamVisitor& v) {
        v.push(name_);
        inner_.visit(v);
        v.pop();
    }
    void init(Rng& rng, const InitOptions& o) { inner_.init(rng, o); }
    Shape describe(Describer& d, Shape in) const {
        d.push(name_);
        Shape out = inner_.describe(d, in);
        d.pop();
        return out;
    }
    int trace(Tracer& t, int x) const {
        t.push(name_);
        x = inner_.trace(t, x);
        t.pop();
        return x;
    }
    Inner& inner() { return inner_; }

private:
    std::string name_;
    Inner inner_;
};

template <FixedString Name, class Spec>
struct Named;

namespace detail {
template <FixedString Name, class Spec>
struct NamedFusion {};
template <FixedString Name, FusesNextReLU Spec>
struct NamedFusion<Name, Spec> {
    using with_relu = Named<Name, typename Spec::with_relu>;
};
}  // namespace detail

template <FixedString Name, class Spec>
struct Named : detail::NamedFusion<Name, Spec> {
    template <int In>
    static constexpr int out_channels = Spec::template out_channels<In>;
    template <int In, long Classes>
    static constexpr long params = Spec::template params<In, Classes>;

    template <int In, class B>
    static auto bind(const BindOptions& o) {
        auto inner = bind_child<Spec, In, B>(o);
        return NamedLayer<B, decltype(inner)>(Name.str(), std::move(inner));
    }
};

// ---- Repeat --------------------------------------------------------------------------------------

template <class B, Layer Block>
class RepeatLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = true;

    RepeatLayer(std::vector<Block> blocks, int first_index) : blocks_(std::move(blocks)), first_(first_index) {}

    Shape output_shape(Shape in) const {
        for (auto& b : blocks_) in = b.output_shape(in);
        return in;
    }
    Tensor forward(Context& ctx, Tensor x) {
        const bool input_is_private = ctx.input_is_private;
        const float* input = x.data;
        for (auto& b : blocks_) {
            ctx.input_is_private = input_is_private || x.data != input;
            x = b.forward(ctx, x);
        }
        return x;
    }
    Tensor backward(Context& ctx, const Tensor& dy) {
        Tensor g = dy;
        for (auto b = blocks_.rbegin(); b != blocks_.rend(); ++b) g = backward_step(ctx, *b, g, dy);
        return g;
    }
    void visit(ParamVisitor& v) {
        for (std::size_t i = 0; i < blocks_.size(); ++i) {
            v.push(std::to_string(first_ + int(i)));
            blocks_[i].visit(v);
            v.pop();
        }
    }
    void init(Rng& rng, const InitOptions& o) {
        for (auto& b : blocks_) b.init(rng, o);
    }
    Shape describe(Describer& d, Shape in) const {
        for (std::size_t i = 0; i < blocks_.size(); ++i) {
            d.push(std::to_string(first_ + int(i)));
            in = blocks_[i].describe(d, in);
            d.pop();
        }
        return in;
    }
    int trace(Tracer& t, int x) const {
        for (std::size_t i = 0; i < blocks_.size(); ++i) {
            t.push(std::to_string(first_ + int(i)));
            x = blocks_[i].trace(t, x);
            t.pop();
        }
        return x;
    }

private:
    std::vector<Block> blocks_;
    int first_;
};

/// N copies of Block, named First, First+1, …: Stage = Seq<Named<"0", Down>, Repeat<N - 1, Block, 1>>.
template <int N, class Block, int First = 0>
struct Repeat {
    static_assert(N >= 0, "Repeat<N, Block>: N must not be negative");

    template <int In>
    static constexpr int out_channels = In;
    template <int In, long Classes>
    static constexpr long params = N* Block::template params<In, Classes>;

    template <int In, class B>
    static auto bind(const BindOptions& o) {
        static_assert(
            N == 0 || Block::template out_channels<In> == In,
            "Repeat<N, Block>: a repeated block must keep its channel count (its output feeds its next copy)");
        using BlockLayer = decltype(bind_child<Block, In, B>(o));
        std::vector<BlockLayer> blocks;
        blocks.reserve(N);
        for (int i = 0; i < N; ++i) blocks.push_back(bind_child<Block, In, B>(o));
        return RepeatLayer<B, BlockLayer>(std::move(blocks), First);
    }
};

// ---- Identity ------------------------------------------------------------------------------------

template <class B>
class IdentityLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = true;  // no parameters, no name

    Shape output_shape(Shape in) const { return in; }
    Tensor forward(Context&, const Tensor& x) { return x; }
    Tensor backward(Context&, const Tensor& dy) { return dy; }
    void visit(ParamVisitor&) {}
    void init(Rng&, const InitOptions&) {}
    Shape describe(Describer&, Shape in) const { return in; }
    int trace(Tracer&, int x) const { return x; }
};

struct Identity {
    template <int In>
    static constexpr int out_channels = In;
    template <int In, long Classes>
    static constexpr long params = 0;
    template <int In, class B>
    static IdentityLayer<B> bind(const BindOptions&) {
        return {};
    }
};

/// Parameters of a network spec for In input channels and Classes outputs, counted at compile time.
template <class Net, int In, long Classes = 1000>
inline constexpr long param_count = Net::template params<In, Classes>;

}  // namespace tessera::layers
