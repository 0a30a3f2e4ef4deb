#pragma once
// Element-wise kernels: ReLU and the residual sum.
#include <algorithm>
#include <cstdint>

#include "tessera/backend/cpu/context.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

constexpr std::size_t elementwise_grain = 1 << 14;

/// y = max(x, 0).
inline void relu_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    ctx.pool.parallel_for(x.size(), [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) y.data[i] = std::max(x.data[i], 0.f);
    }, elementwise_grain);
}

/// dx = dy where the output was positive, else 0.
inline void relu_backward(Context& ctx, const Tensor& y, const Tensor& dy, const Tensor& dx) {
    ctx.pool.parallel_for(y.size(), [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) dx.data[i] = y.data[i] > 0.f ? dy.data[i] : 0.f;
    }, elementwise_grain);
}

/// y = a + b.
inline void add(Context& ctx, const Tensor& a, const Tensor& b, const Tensor& y) {
    ctx.pool.parallel_for(y.size(), [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) y.data[i] = a.data[i] + b.data[i];
    }, elementwise_grain);
}

/// y += x.
inline void accumulate(Context& ctx, const Tensor& x, const Tensor& y) {
    ctx.pool.parallel_for(y.size(), [&](std::size_t begin, std::size_t end) {
        for (std::size_t i = begin; i < end; ++i) y.data[i] += x.data[i];
    }, elementwise_grain);
}

}  // namespace tessera::cpu

namespace tessera::cpu {

/// x (N, H, W, C) = (pixels / 255 - mean[c]) / std[c], from uint8 NHWC.
inline void normalize_images(Context& ctx, const std::uint8_t* pixels, const float* mean, const float* inv_std,
                             const Tensor& x) {
    const int c = x.shape.c;
    ctx.pool.parallel_for(x.shape.pixels(), [&](std::size_t begin, std::size_t end) {
        for (std::size_t p = begin; p < end; ++p)
            for (int ch = 0; ch < c; ++ch) x.data[p * c + ch] = (pixels[p * c + ch] * (1.f / 255.f) - mean[ch]) * inv_std[ch];
    }, 1024);
}

}  // namespace tessera::cpu
