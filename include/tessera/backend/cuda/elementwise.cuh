#pragma once
// ReLU, the residual add and gradient accumulation: one value per thread, grid-stride.
#include "tessera/backend/cuda/context.cuh"

namespace tessera::cuda {

namespace kernels {

template <class T>
__global__ void relu_forward(const T* x, T* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] = from_float<T>(fmaxf(to_float(x[i]), 0.f));
}
template <class T>
__global__ void relu_backward(const T* y, const T* dy, T* dx, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) dx[i] = to_float(y[i]) > 0.f ? dy[i] : from_float<T>(0.f);
}
template <class T>
__global__ void add(const T* a, const T* b, T* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}
template <class T, class U>
__global__ void accumulate(const T* x, U* y, std::size_t n) {  // y += x, in y's type
    TESSERA_GRID_STRIDE(i, n) y[i] = from_float<U>(to_float(y[i]) + to_float(x[i]));
}

}  // namespace kernels

void Backend::relu_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "relu forward");
    detail::same_type(x, y, "relu forward");
    detail::with_element_type(x.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(relu_forward<T>, x.size(), x.as<T>(), y.as<T>(), x.size());
    });
}
void Backend::relu_backward(Context& ctx, const Tensor& y, const Tensor& dy, const Tensor& dx) {
    detail::OpTimer timer(ctx, "relu backward");
    detail::same_type(y, dy, "relu backward");
    detail::with_element_type(y.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(relu_backward<T>, y.size(), y.as<T>(), dy.as<T>(), dx.as<T>(), y.size());
    });
}
void Backend::add(Context& ctx, const Tensor& a, const Tensor& b, const Tensor& y) {
    detail::OpTimer timer(ctx, "add");
    detail::same_type(a, b, "add");
    detail::with_element_type(y.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(add<T>, y.size(), a.as<T>(), b.as<T>(), y.as<T>(), y.size());
    });
}
void Backend::accumulate(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "accumulate");
    detail::same_type(x, y, "accumulate");
    detail::with_element_type(y.dtype, [&](auto t) {
        using T = decltype(t);
        if (y.size())
            kernels::accumulate<<<kernels::blocks_for(y.size()), kernels::threads, 0, ctx.impl->stream>>>(
                x.as<T>(), y.as<T>(), y.size());
        TESSERA_CUDA(cudaGetLastError());
    });
}

}  // namespace tessera::cuda
