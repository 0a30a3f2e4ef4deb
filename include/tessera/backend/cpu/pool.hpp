#pragma once
// Pooling over NHWC tensors. Max pooling remembers, for each output value, which input pixel won
// (an index into the image), so backward routes the gradient there without comparing again.
#include <cstdint>
#include <cstring>
#include <limits>

#include "tessera/backend/ops.hpp"
#include "tessera/backend/cpu/context.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

/// y (N, Ho, Wo, C) = max over each window of x (N, H, W, C); argmax (y.size()) = winning pixel in its image.
inline void maxpool_forward(Context& ctx, const Tensor& x, const PoolGeometry& g, const Tensor& y,
                            std::int32_t* argmax) {
    const int c = x.shape.c;
    ctx.pool.parallel_for(
        y.shape.pixels(),
        [&](std::size_t begin, std::size_t end) {
            for (std::size_t p = begin; p < end; ++p) {
                const int ox = int(p % y.shape.w), oy = int(p / y.shape.w % y.shape.h);
                const std::size_t n = p / (std::size_t(y.shape.w) * y.shape.h);
                float* out = y.row(p);
                std::int32_t* arg = argmax + p * c;
                std::fill(out, out + c, -std::numeric_limits<float>::infinity());
                std::fill(arg, arg + c, 0);
                for (int ky = 0; ky < g.kernel; ++ky) {
                    const int iy = oy * g.stride - g.pad + ky;
                    if (iy < 0 || iy >= x.shape.h) continue;
                    for (int kx = 0; kx < g.kernel; ++kx) {
                        const int ix = ox * g.stride - g.pad + kx;
                        if (ix < 0 || ix >= x.shape.w) continue;
                        const std::int32_t pixel = iy * x.shape.w + ix;
                        const float* in = x.row(n * x.shape.h * x.shape.w + pixel);
                        for (int ch = 0; ch < c; ++ch) {
                            if (in[ch] > out[ch]) {
                                out[ch] = in[ch];
                                arg[ch] = pixel;
                            }
                        }
                    }
                }
            }
        },
        16);
}

/// dx (N, H, W, C) = the gradient of each output routed to its winning input pixel.
inline void maxpool_backward(Context& ctx, const Tensor& dy, const std::int32_t* argmax, const Tensor& dx) {
    const int c = dx.shape.c;
    const std::size_t in_image = std::size_t(dx.shape.h) * dx.shape.w, out_image = std::size_t(dy.shape.h) * dy.shape.w;
    ctx.pool.parallel_for(std::size_t(dx.shape.n), [&](std::size_t begin, std::size_t end) {
        std::memset(dx.data + begin * in_image * c, 0, (end - begin) * in_image * c * sizeof(float));
        for (std::size_t n = begin; n < end; ++n) {
            for (std::size_t q = 0; q < out_image; ++q) {
                const std::size_t p = n * out_image + q;
                const float* g = dy.row(p);
                const std::int32_t* arg = argmax + p * c;
                for (int ch = 0; ch < c; ++ch) dx.row(n * in_image + arg[ch])[ch] += g[ch];
            }
        }
    });
}

/// y (N, 1, 1, C) = mean over H and W of x (N, H, W, C).
inline void global_avgpool_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    const int c = x.shape.c;
    const std::size_t pixels = std::size_t(x.shape.h) * x.shape.w;
    ctx.pool.parallel_for(std::size_t(x.shape.n), [&](std::size_t begin, std::size_t end) {
        for (std::size_t n = begin; n < end; ++n) {
            float* out = y.row(n);
            std::fill(out, out + c, 0.f);
            for (std::size_t q = 0; q < pixels; ++q) {
                const float* in = x.row(n * pixels + q);
                for (int ch = 0; ch < c; ++ch) out[ch] += in[ch];
            }
            for (int ch = 0; ch < c; ++ch) out[ch] /= float(pixels);
        }
    });
}

/// dx (N, H, W, C) = dy (N, 1, 1, C) / (H * W), broadcast over the image.
inline void global_avgpool_backward(Context& ctx, const Tensor& dy, const Tensor& dx) {
    const int c = dx.shape.c;
    const std::size_t pixels = std::size_t(dx.shape.h) * dx.shape.w;
    ctx.pool.parallel_for(std::size_t(dx.shape.n), [&](std::size_t begin, std::size_t end) {
        for (std::size_t n = begin; n < end; ++n) {
            const float* g = dy.row(n);
            for (std::size_t q = 0; q < pixels; ++q) {
                float* out = dx.row(n * pixels + q);
                for (int ch = 0; ch < c; ++ch) out[ch] = g[ch] / float(pixels);
            }
        }
    });
}

}  // namespace tessera::cpu
