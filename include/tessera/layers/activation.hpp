#pragma once
// ReLU: y = max(x, 0). Backward needs only the output's sign, so the layer keeps y, not x. When its
// input is private (the output of the layer before it in a Seq, which no one else keeps: BatchNorm
// and the residual sum keep their inputs, not their outputs), it works in place, as torchvision's
// ReLU(inplace=True): a third of ResNet's activation memory.
#include "tessera/layers/graph.hpp"

namespace tessera::layers {

template <class B>
class ReLULayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = false;

    Shape output_shape(Shape in) const { return in; }

    Tensor forward(Context& ctx, const Tensor& x) {
        y_ = ctx.input_is_private ? x : ctx.arena.tensor(x.shape, x.dtype);
        B::relu_forward(ctx, x, y_);
        return y_;
    }
    Tensor backward(Context& ctx, const Tensor& dy) {
        Tensor dx = ctx.grads.acquire(dy.shape, dy.dtype);
        B::relu_backward(ctx, y_, dy, dx);
        return dx;
    }
    void visit(ParamVisitor&) {}
    void init(Rng&, const InitOptions&) {}
    Shape describe(Describer& d, Shape in) const {
        d.row("ReLU", in, 0);
        return in;
    }
    int trace(Tracer& t, int x) const { return t.relu(x); }

private:
    Tensor y_;
};

struct ReLU {
    template <int In>
    static constexpr int out_channels = In;
    template <int In, long Classes>
    static constexpr long params = 0;
    template <int In, class B>
    static ReLULayer<B> bind(const BindOptions&) {
        return {};
    }
};

/// A ReLU the layer before it has taken in (a BatchNorm bound as BatchNorm<P, true>): it passes
/// its input and gradient through, and still describes itself as the ReLU it is, so `runner info`
/// and every name stay as the architecture is written.
template <class B>
class FusedReLULayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = false;

    Shape output_shape(Shape in) const { return in; }
    Tensor forward(Context&, const Tensor& x) { return x; }
    Tensor backward(Context&, const Tensor& dy) { return dy; }
    void visit(ParamVisitor&) {}
    void init(Rng&, const InitOptions&) {}
    Shape describe(Describer& d, Shape in) const {
        d.row("ReLU", in, 0);
        return in;
    }
    int trace(Tracer& t, int x) const { return t.relu(x); }
};

struct FusedReLU {
    template <int In>
    static constexpr int out_channels = In;
    template <int In, long Classes>
    static constexpr long params = 0;
    template <int In, class B>
    static FusedReLULayer<B> bind(const BindOptions&) {
        return {};
    }
};

}  // namespace tessera::layers
