#pragma once
// What a backend is: the checklist a new one fills in, checked by the compiler. A backend is a tag
// type of static kernels over one kind of memory; networks take one constrained by `LayerBackend`,
// the step, the trainer and evaluation by `Backend`, so a missing or mistyped kernel fails in one
// readable error naming it, rather than deep inside a layer. cpu::Backend and cuda::Backend each
// static_assert that they are one.
#include <concepts>
#include <string>
#include <cstddef>
#include <cstdint>

#include "tessera/backend/ops.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera {

/// The context a backend's kernels run in: its memory for one step's activations (`arena`) and the
/// gradients flowing back (`grads`), the mode, and the hooks data parallelism sets.
template <class C>
concept BackendContext = requires(C& ctx) {
    ctx.arena.reset();
    ctx.grads.reset();
    { ctx.training } -> std::convertible_to<bool>;
    { ctx.activations } -> std::convertible_to<DType>;
    ctx.gradient_hook;
    ctx.batchnorm_group;
};

/// Flat float vectors in the backend's memory: what optimizers' hosts, loss scaling, clipping and
/// the weights' average need.
template <class B>
concept VectorKernels = requires(typename B::Context& ctx, float* y, const float* x, std::size_t n, float a) {
    { B::stream(ctx) } -> std::same_as<void*>;
    B::fill_zero(ctx, y, n);
    B::add_scalar(ctx, y, a);
    B::axpby(ctx, a, x, a, y, n);  // y = a x + b y
    B::scale(ctx, y, n, a);
    { B::sum_squares(ctx, x, n) } -> std::convertible_to<double>;
};

/// The layers' kernels, forward and backward, NHWC.
template <class B>
concept LayerKernels = requires(typename B::Context& ctx, const Tensor& x, const Tensor& y, const float* w, float* dw,
                                const ConvGeometry& conv, const PoolGeometry& pool, const BatchNormParams& bn,
                                BatchNormSaved saved, std::int32_t* argmax, int out) {
    B::conv_forward(ctx, x, w, conv, y);
    B::conv_backward(ctx, x, w, conv, y, dw, x);
    B::batchnorm_forward(ctx, x, bn, saved, y);
    B::batchnorm_backward(ctx, x, y, bn, saved, dw, dw, x);
    B::relu_forward(ctx, x, y);
    B::relu_backward(ctx, y, y, x);
    B::add(ctx, x, x, y);
    B::accumulate(ctx, x, y);
    B::maxpool_forward(ctx, x, pool, y, argmax);
    B::maxpool_backward(ctx, y, argmax, pool, x);
    B::global_avgpool_forward(ctx, x, y);
    B::global_avgpool_backward(ctx, y, x);
    B::linear_forward(ctx, x, w, w, out, y);
    B::linear_backward(ctx, x, w, y, out, dw, dw, x);
};

/// Input and loss: a batch's uint8 pixels (host memory) normalised into the backend's memory, and
/// softmax cross-entropy with its gradient, counting hits (labels in host memory). The logits back
/// in host memory as float (what predict and serve read). And the name of the kernels it runs, for
/// the first line of a run and `runner bench --json`.
template <class B>
concept DataKernels = requires(typename B::Context& ctx, const std::uint8_t* pixels, const float* mean, const Tensor& x,
                               const std::int32_t* labels, float* dlogits) {
    B::normalize_images(ctx, pixels, mean, mean, x);
    B::copy_to_host(ctx, x, dlogits);
    { B::softmax_cross_entropy(ctx, x, labels, 0.f, dlogits) } -> std::same_as<LossResult>;
    { B::kernels(ctx) } -> std::convertible_to<std::string>;
};

/// What layers and networks compute with (models::Network, the weights' average).
template <class B>
concept LayerBackend = BackendContext<typename B::Context> && VectorKernels<B> && LayerKernels<B> && requires {
    { B::name } -> std::convertible_to<const char*>;
    { B::has_device_memory } -> std::convertible_to<bool>;
    typename B::DeviceParams;  // the device copy of a network's buffers (never made without device memory)
};

/// Optional: BatchNorm followed by ReLU in the same passes over the tensor, y = max(BN(x), 0), and
/// backward with the ReLU's mask (taken from y) folded in. A BatchNorm whose spec is followed by a
/// ReLU uses these where the backend has them, and the two kernels one after the other elsewhere.
template <class B>
concept FusedBatchNormReLU = requires(typename B::Context& ctx, const Tensor& x, const BatchNormParams& bn,
                                      BatchNormSaved saved, float* dw) {
    B::batchnorm_relu_forward(ctx, x, bn, saved, x);
    B::batchnorm_relu_backward(ctx, x, x, x, bn, saved, dw, dw, x);
};

/// What training and evaluation compute with (train::Step, Trainer, evaluate): a layer backend
/// that also takes a batch in and computes its loss.
template <class B>
concept Backend = LayerBackend<B> && DataKernels<B>;

}  // namespace tessera
