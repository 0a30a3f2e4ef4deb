#pragma once
// Linear<Out>: y = x W^T + b over the flattened input, W (Out, In) as PyTorch stores it.
//
// The classifier's width is usually the recipe's num_classes, known only at run time, so
// Linear<classes_from_recipe> (the default) takes it from BindOptions; Linear<10> fixes it in the
// type. Only the parameter count needs it at compile time, and param_count<Net, In, Classes> says
// which count it checks.
#include <cmath>

#include "tessera/layers/graph.hpp"

namespace tessera::layers {

inline constexpr int classes_from_recipe = 0;

template <class B>
class LinearLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = false;

    LinearLayer(int in, int out) : in_(in), out_(out) {}

    Shape output_shape(Shape x) const { return {x.n, 1, 1, out_}; }

    Tensor forward(Context& ctx, const Tensor& x) {  // (N, 1, 1, In) -> (N, 1, 1, Out)
        TESSERA_CHECK(x.size() == std::size_t(x.shape.n) * in_,
                      "Linear expects " + std::to_string(in_) + " features per sample, got " + x.shape.str());
        x_ = x;
        Tensor y = ctx.arena.tensor(output_shape(x.shape), DType::f32);  // logits in fp32, as autocast gives the loss
        B::linear_forward(ctx, x, weight_, bias_, out_, y);
        return y;
    }
    Tensor backward(Context& ctx, const Tensor& dy) {
        Tensor dx{nullptr, x_.shape, x_.dtype};
        if (x_.data != ctx.network_input) dx = ctx.grads.acquire(x_.shape, x_.dtype);
        B::linear_backward(ctx, x_, weight_, dy, out_, weight_grad_, bias_grad_, dx);
        gradients_ready(ctx, weight_grad_, std::size_t(out_) * in_);
        gradients_ready(ctx, bias_grad_, std::size_t(out_));
        return dx;
    }

    void visit(ParamVisitor& v) {
        v.param("weight", {out_, in_}, Role::linear_weight, weight_, weight_grad_);
        v.param("bias", {out_}, Role::linear_bias, bias_, bias_grad_);
    }

    /// torch.nn.Linear's default: U(-1/sqrt(In), 1/sqrt(In)) for weight and bias.
    void init(Rng& rng, const InitOptions&) {
        const double bound = 1.0 / std::sqrt(double(in_));
        for (std::size_t i = 0; i < std::size_t(out_) * in_; ++i) weight_[i] = float(rng.uniform(-bound, bound));
        for (int i = 0; i < out_; ++i) bias_[i] = float(rng.uniform(-bound, bound));
    }

    Shape describe(Describer& d, Shape in) const {
        d.row("Linear " + std::to_string(in_) + "->" + std::to_string(out_), output_shape(in),
              std::int64_t(out_) * in_ + out_);
        return output_shape(in);
    }
    int trace(Tracer& t, int x) const { return t.linear(x, in_, out_); }

    int out_features() const { return out_; }

private:
    int in_, out_;
    float *weight_ = nullptr, *bias_ = nullptr, *weight_grad_ = nullptr, *bias_grad_ = nullptr;
    Tensor x_;
};

template <int Out = classes_from_recipe>
struct Linear {
    static_assert(Out >= 0, "Linear<Out>: the number of outputs must be positive (or classes_from_recipe)");
    template <int In>
    static constexpr int out_channels = Out;  // classes_from_recipe (0) when the recipe decides
    template <int In, long Classes>
    static constexpr long params = (Out == classes_from_recipe ? Classes : Out) * (long(In) + 1);

    template <int In, class B>
    static LinearLayer<B> bind(const BindOptions& o) {
        return LinearLayer<B>(In, Out == classes_from_recipe ? o.num_classes : Out);
    }
};

}  // namespace tessera::layers
