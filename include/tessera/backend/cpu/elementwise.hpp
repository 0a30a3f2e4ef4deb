#pragma once
// Element-wise kernels: ReLU and the residual sum, over fp32 or bf16 (bf16.hpp).
#include <algorithm>
#include <cstdint>

#include "tessera/backend/cpu/bf16.hpp"
#include "tessera/backend/cpu/context.hpp"
#include "tessera/backend/cpu/dispatch.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

constexpr std::size_t elementwise_grain = 1 << 14;

// The loops over [begin, end), each compiled for AVX-512, AVX2 and the baseline (dispatch.hpp), read
// through __restrict pointers: through a Tensor, the compiler must assume each store may change the
// Tensor itself, and neither hoists the loads nor vectorises.
namespace detail {
template <class T>
TESSERA_CPU_CLONES void relu_range(const T* __restrict x, T* __restrict y, std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) y[i] = narrow<T>(std::max(widen(x[i]), 0.f));
}
template <class T>
TESSERA_CPU_CLONES void relu_in_place_range(T* __restrict y, std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) y[i] = narrow<T>(std::max(widen(y[i]), 0.f));
}
template <class T>
TESSERA_CPU_CLONES void relu_backward_range(const T* __restrict y, const T* __restrict dy, T* __restrict dx,
                                            std::size_t begin, std::size_t end) {
    // A select between floats, which vectorises (one between bf16 structs does not); narrowing dy's
    // own value back is exact.
    for (std::size_t i = begin; i < end; ++i) {
        const float g = widen(dy[i]);  // loaded either way, so the select vectorises
        dx[i] = narrow<T>(widen(y[i]) > 0.f ? g : 0.f);
    }
}
template <class T>
TESSERA_CPU_CLONES void add_range(const T* __restrict a, const T* __restrict b, T* __restrict y, std::size_t begin,
                                  std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) y[i] = narrow<T>(widen(a[i]) + widen(b[i]));
}
template <class T>
TESSERA_CPU_CLONES void accumulate_range(const T* __restrict x, T* __restrict y, std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) y[i] = narrow<T>(widen(y[i]) + widen(x[i]));
}
TESSERA_CPU_CLONES inline void axpby_range(float a, const float* __restrict x, float b, float* __restrict y,
                                           std::size_t begin, std::size_t end) {
    if (b == 0.f)
        for (std::size_t i = begin; i < end; ++i) y[i] = a * x[i];
    else
        for (std::size_t i = begin; i < end; ++i) y[i] = a * x[i] + b * y[i];
}
TESSERA_CPU_CLONES inline void scale_range(float* __restrict y, float a, std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) y[i] *= a;
}
}  // namespace detail

/// y = max(x, 0); x and y may be the same tensor.
inline void relu_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    with_element_type(x.dtype, [&]<class T>(T) {
        const T* in = x.as<T>();
        T* out = y.as<T>();
        ctx.pool.parallel_for(
            y.size(),
            [=](std::size_t begin, std::size_t end) {
                if (in == out)
                    detail::relu_in_place_range(out, begin, end);
                else
                    detail::relu_range(in, out, begin, end);
            },
            elementwise_grain);
    });
}

/// dx = dy where the output was positive, else 0.
inline void relu_backward(Context& ctx, const Tensor& y, const Tensor& dy, const Tensor& dx) {
    with_element_type(y.dtype, [&]<class T>(T) {
        const T *out = y.as<T>(), *grad = dy.as<T>();
        T* result = dx.as<T>();
        ctx.pool.parallel_for(
            y.size(),
            [=](std::size_t begin, std::size_t end) { detail::relu_backward_range(out, grad, result, begin, end); },
            elementwise_grain);
    });
}

/// y = a + b.
inline void add(Context& ctx, const Tensor& a, const Tensor& b, const Tensor& y) {
    with_element_type(y.dtype, [&]<class T>(T) {
        const T *left = a.as<T>(), *right = b.as<T>();
        T* out = y.as<T>();
        ctx.pool.parallel_for(
            y.size(), [=](std::size_t begin, std::size_t end) { detail::add_range(left, right, out, begin, end); },
            elementwise_grain);
    });
}

/// y += x.
inline void accumulate(Context& ctx, const Tensor& x, const Tensor& y) {
    with_element_type(y.dtype, [&]<class T>(T) {
        const T* in = x.as<T>();
        T* out = y.as<T>();
        ctx.pool.parallel_for(
            y.size(), [=](std::size_t begin, std::size_t end) { detail::accumulate_range(in, out, begin, end); },
            elementwise_grain);
    });
}

// ---- flat vectors: gradient accumulation and clipping, weight averages, mixed losses ----------------

/// y = a * x + b * y over n floats; y is not read when b is 0 (it may hold anything).
inline void axpby(Context& ctx, float a, const float* x, float b, float* y, std::size_t n) {
    ctx.pool.parallel_for(
        n, [=](std::size_t begin, std::size_t end) { detail::axpby_range(a, x, b, y, begin, end); }, elementwise_grain);
}

/// y *= a over n floats.
inline void scale(Context& ctx, float* y, std::size_t n, float a) {
    ctx.pool.parallel_for(
        n, [=](std::size_t begin, std::size_t end) { detail::scale_range(y, a, begin, end); }, elementwise_grain);
}

/// The sum of x[i]^2, accumulated in double, in the same order for any number of threads.
inline double sum_squares(const float* x, std::size_t n) {
    double total = 0;
    for (std::size_t i = 0; i < n; ++i) total += double(x[i]) * x[i];
    return total;
}

}  // namespace tessera::cpu

namespace tessera::cpu {

/// x (N, H, W, C) = (pixels / 255 - mean[c]) / std[c], from uint8 NHWC, in x's type (fp32 or bf16).
inline void normalize_images(Context& ctx, const std::uint8_t* pixels, const float* mean, const float* inv_std,
                             const Tensor& x) {
    const int c = x.shape.c;
    with_element_type(x.dtype, [&]<class T>(T) {
        T* out = x.as<T>();
        ctx.pool.parallel_for(
            x.shape.pixels(),
            [&](std::size_t begin, std::size_t end) {
                for (std::size_t p = begin; p < end; ++p)
                    for (int ch = 0; ch < c; ++ch)
                        out[p * c + ch] = narrow<T>((pixels[p * c + ch] * (1.f / 255.f) - mean[ch]) * inv_std[ch]);
            },
            1024);
    });
}

/// x's values as fp32, into `out` (x.size() floats): the host's copy of an activation of any type.
inline void widen_to(const Tensor& x, float* out) {
    with_element_type(x.dtype, [&]<class T>(T) {
        const T* in = x.as<T>();
        for (std::size_t i = 0; i < x.size(); ++i) out[i] = widen(in[i]);
    });
}

}  // namespace tessera::cpu
