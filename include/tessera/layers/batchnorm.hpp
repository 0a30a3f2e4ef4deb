#pragma once
// BatchNorm<Position>: batch statistics in training (running mean and variance updated with momentum
// 0.1, as torch.nn.BatchNorm2d), running statistics in evaluation. BatchNorm<BlockOutput> marks a
// residual block's last BN, whose gamma starts at zero when zero_init_residual is asked for, so that
// each block starts as the identity.
//
// A BatchNorm followed by a ReLU in a Seq binds as one layer, BatchNorm<Position, true> (see
// sequential.hpp): y = max(BN(x), 0) in the same passes over the tensor, and backward with the
// ReLU's mask folded in, on backends that have the fused kernels (FusedBatchNormReLU).
#include "tessera/backend/backend.hpp"
#include "tessera/backend/ops.hpp"
#include "tessera/layers/graph.hpp"

namespace tessera::layers {

enum class BatchNormPosition { inner, block_output };
inline constexpr BatchNormPosition BlockOutput = BatchNormPosition::block_output;

template <class B>
class BatchNormLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = false;
    static constexpr float eps = 1e-5f, momentum = 0.1f;

    BatchNormLayer(int channels, BatchNormPosition position, bool then_relu = false)
        : channels_(channels), position_(position), then_relu_(then_relu) {}

    Shape output_shape(Shape in) const { return in; }

    Tensor forward(Context& ctx, const Tensor& x) {  // (N, H, W, C) -> same
        x_ = x;
        Tensor y = ctx.arena.tensor(x.shape, x.dtype);
        saved_ = {nullptr, nullptr};
        if (ctx.training) {
            saved_ = {ctx.arena.allocate_floats(channels_), ctx.arena.allocate_floats(channels_)};
            B::add_scalar(ctx, num_batches_tracked_, 1.f);
        }
        if (!then_relu_) {
            B::batchnorm_forward(ctx, x, params(), saved_, y);
        } else if constexpr (FusedBatchNormReLU<B>) {
            B::batchnorm_relu_forward(ctx, x, params(), saved_, y);
        } else {
            B::batchnorm_forward(ctx, x, params(), saved_, y);
            B::relu_forward(ctx, y, y);
        }
        y_ = y;  // read by backward for the ReLU's mask; the layers after only read it
        return y;
    }

    Tensor backward(Context& ctx, const Tensor& dy) {
        Tensor dx = ctx.grads.acquire(x_.shape, x_.dtype);
        if (!then_relu_) {
            B::batchnorm_backward(ctx, x_, dy, params(), saved_, gamma_grad_, beta_grad_, dx);
        } else if constexpr (FusedBatchNormReLU<B>) {
            B::batchnorm_relu_backward(ctx, x_, y_, dy, params(), saved_, gamma_grad_, beta_grad_, dx);
        } else {
            Tensor masked = ctx.grads.acquire(dy.shape, dy.dtype);
            B::relu_backward(ctx, y_, dy, masked);
            B::batchnorm_backward(ctx, x_, masked, params(), saved_, gamma_grad_, beta_grad_, dx);
            ctx.grads.release(masked);
        }
        gradients_ready(ctx, gamma_grad_, std::size_t(channels_));
        gradients_ready(ctx, beta_grad_, std::size_t(channels_));
        return dx;
    }

    /// Backward reads x and the saved statistics; the output only for a ReLU's mask.
    bool output_is_scratch() const { return !then_relu_; }

    void visit(ParamVisitor& v) {
        v.param("weight", {channels_}, Role::bn_weight, gamma_, gamma_grad_);
        v.param("bias", {channels_}, Role::bn_bias, beta_, beta_grad_);
        v.buffer("running_mean", {channels_}, Role::running_mean, running_mean_);
        v.buffer("running_var", {channels_}, Role::running_var, running_var_);
        v.buffer("num_batches_tracked", {}, Role::num_batches_tracked, num_batches_tracked_);
    }

    void init(Rng&, const InitOptions& o) {
        const float gamma = (o.zero_init_residual && position_ == BlockOutput) ? 0.f : 1.f;
        std::fill(gamma_, gamma_ + channels_, gamma);
        std::fill(beta_, beta_ + channels_, 0.f);
        std::fill(running_mean_, running_mean_ + channels_, 0.f);
        std::fill(running_var_, running_var_ + channels_, 1.f);
        *num_batches_tracked_ = 0;
    }

    Shape describe(Describer& d, Shape in) const {
        d.row("BatchNorm " + std::to_string(channels_), in, 2 * std::int64_t(channels_));
        return in;
    }
    /// The BatchNorm alone: a ReLU run in the same pass traces itself (FusedReLU).
    int trace(Tracer& t, int x) const { return t.batchnorm(x, channels_, eps); }

private:
    BatchNormParams params() const { return {gamma_, beta_, running_mean_, running_var_, eps, momentum}; }

    int channels_;
    BatchNormPosition position_;
    bool then_relu_;
    float *gamma_ = nullptr, *beta_ = nullptr, *gamma_grad_ = nullptr, *beta_grad_ = nullptr;
    float *running_mean_ = nullptr, *running_var_ = nullptr, *num_batches_tracked_ = nullptr;
    BatchNormSaved saved_{nullptr, nullptr};
    Tensor x_, y_;
};

template <BatchNormPosition Position = BatchNormPosition::inner, bool ThenReLU = false>
struct BatchNorm {
    template <int In>
    static constexpr int out_channels = In;
    template <int In, long Classes>
    static constexpr long params = 2L * In;

    template <int In, class B>
    static BatchNormLayer<B> bind(const BindOptions&) {
        return BatchNormLayer<B>(In, Position, ThenReLU);
    }
    /// What a Seq binds in its place when a ReLU follows (see FusesNextReLU).
    using with_relu = BatchNorm<Position, true>;
};

}  // namespace tessera::layers
