#pragma once
// Convolution on the CPU as GEMM. Activations NHWC, filters OHWI, so with K = kh*kw*Cin:
//   forward          Y (M, Cout) = cols(X) (M, K) * W^T (K, Cout)       M = N*Ho*Wo
//   backward filter  dW (Cout, K) += dY^T (Cout, M) * cols(X) (M, K)
//   backward data    dcols (M, K) = dY (M, Cout) * W (Cout, K),  dX = col2im(dcols)
// A 1x1 convolution at stride 1 needs no im2col: X already is cols(X).
#include <cstring>

#include "tessera/backend/cpu/context.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

// cols (M, K): row p holds the kernel window of output pixel p, zero where it hangs off the image.
using tessera::ConvGeometry;
using tessera::PoolGeometry;

inline void im2col(Context& ctx, const Tensor& x, const ConvGeometry& g, Shape y, float* cols) {
    const std::size_t patch = g.patch();
    const std::size_t row_bytes = sizeof(float) * g.in_channels;
    ctx.pool.parallel_for(y.pixels(), [&](std::size_t begin, std::size_t end) {
        for (std::size_t p = begin; p < end; ++p) {
            const int ox = int(p % y.w), oy = int(p / y.w % y.h), n = int(p / (std::size_t(y.w) * y.h));
            float* out = cols + p * patch;
            for (int ky = 0; ky < g.kernel; ++ky) {
                const int iy = oy * g.stride - g.pad + ky;
                for (int kx = 0; kx < g.kernel; ++kx, out += g.in_channels) {
                    const int ix = ox * g.stride - g.pad + kx;
                    if (iy < 0 || iy >= x.shape.h || ix < 0 || ix >= x.shape.w) std::memset(out, 0, row_bytes);
                    else std::memcpy(out, x.row((std::size_t(n) * x.shape.h + iy) * x.shape.w + ix), row_bytes);
                }
            }
        }
    }, 64);
}

// dX = col2im(dcols): each window adds back into the pixels it was read from. Images are
// independent, so threads split the batch and never write the same pixel.
inline void col2im(Context& ctx, const float* dcols, const ConvGeometry& g, Shape y, const Tensor& dx) {
    const std::size_t patch = g.patch();
    const std::size_t image = std::size_t(dx.shape.h) * dx.shape.w * dx.shape.c;
    ctx.pool.parallel_for(std::size_t(y.n), [&](std::size_t begin, std::size_t end) {
        std::memset(dx.data + begin * image, 0, (end - begin) * image * sizeof(float));
        for (std::size_t n = begin; n < end; ++n) {
            for (int oy = 0; oy < y.h; ++oy) {
                for (int ox = 0; ox < y.w; ++ox) {
                    const float* in = dcols + ((n * y.h + oy) * y.w + ox) * patch;
                    for (int ky = 0; ky < g.kernel; ++ky) {
                        const int iy = oy * g.stride - g.pad + ky;
                        for (int kx = 0; kx < g.kernel; ++kx, in += g.in_channels) {
                            const int ix = ox * g.stride - g.pad + kx;
                            if (iy < 0 || iy >= dx.shape.h || ix < 0 || ix >= dx.shape.w) continue;
                            float* out = dx.row((n * dx.shape.h + iy) * dx.shape.w + ix);
                            for (int c = 0; c < g.in_channels; ++c) out[c] += in[c];
                        }
                    }
                }
            }
        }
    });
}

/// y (N, Ho, Wo, Cout) = conv(x (N, H, W, Cin), w (Cout, kh, kw, Cin)).
inline void conv_forward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& y) {
    const std::size_t m = y.shape.pixels(), patch = g.patch();
    if (g.is_pointwise()) {
        gemm(false, true, m, g.out_channels, patch, 1.f, x.data, patch, w, patch, 0.f, y.data, g.out_channels);
        return;
    }
    auto scratch = ctx.arena.mark();
    float* cols = ctx.arena.allocate_floats(m * patch);
    im2col(ctx, x, g, y.shape, cols);
    gemm(false, true, m, g.out_channels, patch, 1.f, cols, patch, w, patch, 0.f, y.data, g.out_channels);
    ctx.arena.release(scratch);
}

/// dw += dY^T cols(x); dx = col2im(dY w) unless dx.data is null (the network's input).
inline void conv_backward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& dy,
                          float* dw, const Tensor& dx) {
    const std::size_t m = dy.shape.pixels(), patch = g.patch();
    auto scratch = ctx.arena.mark();
    const float* cols = x.data;
    if (!g.is_pointwise()) {
        float* buffer = ctx.arena.allocate_floats(m * patch);
        im2col(ctx, x, g, dy.shape, buffer);
        cols = buffer;
    }
    gemm(true, false, g.out_channels, patch, m, 1.f, dy.data, g.out_channels, cols, patch, 1.f, dw, patch);
    if (dx.data) {
        if (g.is_pointwise()) {
            gemm(false, false, m, patch, g.out_channels, 1.f, dy.data, g.out_channels, w, patch, 0.f, dx.data, patch);
        } else {
            // The columns are no longer needed: reuse their memory for dcols.
            float* dcols = const_cast<float*>(cols);
            gemm(false, false, m, patch, g.out_channels, 1.f, dy.data, g.out_channels, w, patch, 0.f, dcols, patch);
            col2im(ctx, dcols, g, dy.shape, dx);
        }
    }
    ctx.arena.release(scratch);
}

}  // namespace tessera::cpu
