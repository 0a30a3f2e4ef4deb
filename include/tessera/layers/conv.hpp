#pragma once
// Conv<Out, Kernel, Stride>: a 2-d convolution without bias (every ResNet conv feeds a BatchNorm),
// "same" padding of Kernel / 2 as torchvision's conv1x1, conv3x3 and 7x7 stem.
#include <cmath>

#include "tessera/backend/ops.hpp"
#include "tessera/layers/graph.hpp"

namespace tessera::layers {

template <class B>
class ConvLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = false;

    explicit ConvLayer(ConvGeometry g) : g_(g) {}

    const ConvGeometry& geometry() const { return g_; }
    Shape output_shape(Shape in) const { return g_.output_shape(in); }

    Tensor forward(Context& ctx, const Tensor& x) {  // (N, H, W, Cin) -> (N, Ho, Wo, Cout)
        x_ = x;
        Tensor y = ctx.arena.tensor(g_.output_shape(x.shape), x.dtype);
        B::conv_forward(ctx, x, weight_, g_, y);
        return y;
    }

    Tensor backward(Context& ctx, const Tensor& dy) {  // (N, Ho, Wo, Cout) -> (N, H, W, Cin)
        Tensor dx{nullptr, x_.shape, x_.dtype};
        if (x_.data != ctx.network_input) dx = ctx.grads.acquire(x_.shape, x_.dtype);
        B::conv_backward(ctx, x_, weight_, g_, dy, weight_grad_, dx);
        gradients_ready(ctx, weight_grad_, std::size_t(g_.out_channels) * g_.patch());
        return dx;
    }

    void visit(ParamVisitor& v) {
        v.param("weight", {g_.out_channels, g_.in_channels, g_.kernel, g_.kernel}, Role::conv_weight, weight_,
                weight_grad_);
    }

    /// Kaiming normal, fan_out, for ReLU: std = sqrt(2 / (Cout * k * k)), as torchvision's ResNet.
    void init(Rng& rng, const InitOptions&) {
        const double std = std::sqrt(2.0 / (double(g_.out_channels) * g_.kernel * g_.kernel));
        for (std::size_t i = 0; i < std::size_t(g_.out_channels) * g_.patch(); ++i)
            weight_[i] = float(rng.normal() * std);
    }

    Shape describe(Describer& d, Shape in) const {
        Shape out = output_shape(in);
        d.row("Conv " + std::to_string(g_.kernel) + "x" + std::to_string(g_.kernel) + "/" + std::to_string(g_.stride) +
                  " " + std::to_string(g_.in_channels) + "->" + std::to_string(g_.out_channels),
              out, std::int64_t(g_.out_channels) * g_.patch());
        return out;
    }
    int trace(Tracer& t, int x) const { return t.conv(x, g_); }

private:
    ConvGeometry g_;
    float* weight_ = nullptr;       // (Cout, k, k, Cin)
    float* weight_grad_ = nullptr;  // (Cout, k, k, Cin)
    Tensor x_;
};

template <int Out, int Kernel, int Stride = 1>
struct Conv {
    static_assert(Out > 0, "Conv<Out, Kernel, Stride>: the number of output channels must be positive");
    static_assert(
        Kernel > 0 && Kernel % 2 == 1,
        "Conv<Out, Kernel, Stride>: the kernel size must be odd, so that padding Kernel/2 keeps the image centred");
    static_assert(Stride > 0, "Conv<Out, Kernel, Stride>: the stride must be positive");

    template <int In>
    static constexpr int out_channels = Out;
    template <int In, long Classes>
    static constexpr long params = long(Out) * Kernel* Kernel* In;

    template <int In, class B>
    static ConvLayer<B> bind(const BindOptions&) {
        return ConvLayer<B>(ConvGeometry{In, Out, Kernel, Stride, Kernel / 2});
    }
};

}  // namespace tessera::layers
