#pragma once
// MaxPool<Kernel, Stride> (padding Kernel / 2, as ResNet's stem: 3x3/2 pad 1) and GlobalAvgPool.
#include <cstdint>

#include "tessera/backend/ops.hpp"
#include "tessera/layers/graph.hpp"

namespace tessera::layers {

template <class B>
class MaxPoolLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = false;

    explicit MaxPoolLayer(PoolGeometry g) : g_(g) {}

    Shape output_shape(Shape in) const { return g_.output_shape(in); }

    Tensor forward(Context& ctx, const Tensor& x) {  // (N, H, W, C) -> (N, Ho, Wo, C)
        input_shape_ = x.shape;
        input_dtype_ = x.dtype;
        Tensor y = ctx.arena.tensor(g_.output_shape(x.shape), x.dtype);
        // The winners' indices are int32, the same size as a float: they share the arena.
        argmax_ = reinterpret_cast<std::int32_t*>(ctx.arena.allocate_floats(y.size()));
        B::maxpool_forward(ctx, x, g_, y, argmax_);
        return y;
    }
    Tensor backward(Context& ctx, const Tensor& dy) {
        Tensor dx = ctx.grads.acquire(input_shape_, input_dtype_);
        B::maxpool_backward(ctx, dy, argmax_, g_, dx);
        return dx;
    }
    void visit(ParamVisitor&) {}
    void init(Rng&, const InitOptions&) {}
    Shape describe(Describer& d, Shape in) const {
        Shape out = output_shape(in);
        d.row(
            "MaxPool " + std::to_string(g_.kernel) + "x" + std::to_string(g_.kernel) + "/" + std::to_string(g_.stride),
            out, 0);
        return out;
    }
    int trace(Tracer& t, int x) const { return t.max_pool(x, g_); }

private:
    PoolGeometry g_;
    Shape input_shape_;
    DType input_dtype_ = DType::f32;
    std::int32_t* argmax_ = nullptr;
};

template <int Kernel, int Stride>
struct MaxPool {
    static_assert(Kernel > 0 && Kernel % 2 == 1, "MaxPool<Kernel, Stride>: the window must be odd-sized");
    template <int In>
    static constexpr int out_channels = In;
    template <int In, long Classes>
    static constexpr long params = 0;
    template <int In, class B>
    static MaxPoolLayer<B> bind(const BindOptions&) {
        return MaxPoolLayer<B>(PoolGeometry{Kernel, Stride, Kernel / 2});
    }
};

template <class B>
class GlobalAvgPoolLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = false;

    Shape output_shape(Shape in) const { return {in.n, 1, 1, in.c}; }

    Tensor forward(Context& ctx, const Tensor& x) {  // (N, H, W, C) -> (N, 1, 1, C)
        input_shape_ = x.shape;
        input_dtype_ = x.dtype;
        Tensor y = ctx.arena.tensor(output_shape(x.shape), x.dtype);
        B::global_avgpool_forward(ctx, x, y);
        return y;
    }
    Tensor backward(Context& ctx, const Tensor& dy) {
        Tensor dx = ctx.grads.acquire(input_shape_, input_dtype_);
        B::global_avgpool_backward(ctx, dy, dx);
        return dx;
    }
    void visit(ParamVisitor&) {}
    void init(Rng&, const InitOptions&) {}
    Shape describe(Describer& d, Shape in) const {
        d.row("GlobalAvgPool", output_shape(in), 0);
        return output_shape(in);
    }
    int trace(Tracer& t, int x) const { return t.global_avg_pool(x); }

private:
    Shape input_shape_;
    DType input_dtype_ = DType::f32;
};

struct GlobalAvgPool {
    template <int In>
    static constexpr int out_channels = In;
    template <int In, long Classes>
    static constexpr long params = 0;
    template <int In, class B>
    static GlobalAvgPoolLayer<B> bind(const BindOptions&) {
        return {};
    }
};

}  // namespace tessera::layers
