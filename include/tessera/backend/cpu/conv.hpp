#pragma once
// Convolution on the CPU: oneDNN's kernels (onednn_conv.hpp), and im2col + OpenBLAS GEMM where that
// measured faster. Activations NHWC, filters OHWI. The GEMM formulation, with K = kh*kw*Cin:
//   forward          Y (M, Cout) = cols(X) (M, K) * W^T (K, Cout)       M = N*Ho*Wo
//   backward filter  dW (Cout, K) += dY^T (Cout, M) * cols(X) (M, K)
//   backward data    dcols (M, K) = dY (M, Cout) * W (Cout, K),  dX = col2im(dcols)
// A 1x1 convolution at stride 1 needs no im2col: X already is cols(X).
#include <algorithm>
#include <cstring>

#include "tessera/backend/ops.hpp"
#include "tessera/backend/cpu/context.hpp"
#include "tessera/backend/cpu/onednn_conv.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

// Threads split the batch: each runs im2col and a single-threaded GEMM on its own images, a few at
// a time so that the columns stay in cache. For ResNet's narrow layers (16-64 channels) this is
// several times faster than one multi-threaded GEMM over the whole batch, whose threads spend their
// time waiting on each other; for the wide layers it is as fast.
namespace detail {

constexpr std::size_t cols_budget_bytes = 2u << 20;  // columns per slice: about an L2 cache

// How many images one slice takes.
inline std::size_t images_per_slice(const ConvGeometry& g, Shape y) {
    const std::size_t bytes_per_image = std::size_t(y.h) * y.w * g.patch() * sizeof(float);
    return std::max<std::size_t>(1, cols_budget_bytes / std::max<std::size_t>(1, bytes_per_image));
}

// cols (rows, K) for images [n0, n1): row p holds the kernel window of output pixel p, zero where it
// hangs off the image.
inline void im2col(const Tensor& x, const ConvGeometry& g, Shape y, std::size_t n0, std::size_t n1,
                   float* __restrict cols) {
    const std::size_t row_bytes = sizeof(float) * g.in_channels;
    const float* __restrict in = x.data;
    const int h = x.shape.h, w = x.shape.w, c = x.shape.c;
    for (std::size_t n = n0; n < n1; ++n) {
        for (int oy = 0; oy < y.h; ++oy) {
            for (int ox = 0; ox < y.w; ++ox) {
                for (int ky = 0; ky < g.kernel; ++ky) {
                    const int iy = oy * g.stride - g.pad + ky;
                    for (int kx = 0; kx < g.kernel; ++kx, cols += g.in_channels) {
                        const int ix = ox * g.stride - g.pad + kx;
                        if (iy < 0 || iy >= h || ix < 0 || ix >= w)
                            std::memset(cols, 0, row_bytes);
                        else
                            std::memcpy(cols, in + ((n * h + iy) * w + ix) * c, row_bytes);
                    }
                }
            }
        }
    }
}

// dX[n0, n1) = col2im(dcols): each window adds back into the pixels it was read from.
inline void col2im(const float* __restrict dcols, const ConvGeometry& g, Shape y, std::size_t n0, std::size_t n1,
                   const Tensor& dx) {
    float* __restrict out = dx.data;
    const int h = dx.shape.h, w = dx.shape.w, c = dx.shape.c;
    const std::size_t image = std::size_t(h) * w * c;
    std::memset(out + n0 * image, 0, (n1 - n0) * image * sizeof(float));
    for (std::size_t n = n0; n < n1; ++n) {
        for (int oy = 0; oy < y.h; ++oy) {
            for (int ox = 0; ox < y.w; ++ox) {
                for (int ky = 0; ky < g.kernel; ++ky) {
                    const int iy = oy * g.stride - g.pad + ky;
                    for (int kx = 0; kx < g.kernel; ++kx, dcols += c) {
                        const int ix = ox * g.stride - g.pad + kx;
                        if (iy < 0 || iy >= h || ix < 0 || ix >= w) continue;
                        float* __restrict pixel = out + ((n * h + iy) * w + ix) * c;
                        for (int ch = 0; ch < c; ++ch) pixel[ch] += dcols[ch];
                    }
                }
            }
        }
    }
}

// Calls slice(thread, n0, n1, cols) over the batch: each thread its own images, in slices.
template <class Slice>
void for_each_slice(Context& ctx, const ConvGeometry& g, Shape y, Slice slice) {
    const std::size_t per_slice = images_per_slice(g, y);
    const std::size_t slice_floats = per_slice * std::size_t(y.h) * y.w * g.patch();
    const std::size_t threads = std::min<std::size_t>(ctx.pool.size(), std::size_t(y.n));
    float* scratch = g.is_pointwise() ? nullptr : ctx.arena.allocate_floats(threads * slice_floats);
    ctx.pool.parallel_for(threads, [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t) {
            const std::size_t begin = std::size_t(y.n) * t / threads, end = std::size_t(y.n) * (t + 1) / threads;
            for (std::size_t n0 = begin; n0 < end; n0 += per_slice)
                slice(t, n0, std::min(end, n0 + per_slice), scratch ? scratch + t * slice_floats : nullptr);
        }
    });
}

}  // namespace detail

/// y (N, Ho, Wo, Cout) = conv(x (N, H, W, Cin), w (Cout, kh, kw, Cin)), as im2col + GEMM.
inline void gemm_conv_forward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& y) {
    const std::size_t patch = g.patch(), image_rows = std::size_t(y.shape.h) * y.shape.w;
    auto scratch = ctx.arena.mark();
    detail::for_each_slice(ctx, g, y.shape, [&](std::size_t, std::size_t n0, std::size_t n1, float* cols) {
        const std::size_t rows = (n1 - n0) * image_rows;
        const float* a = x.data + n0 * image_rows * patch;  // pointwise: x is its own cols
        if (cols) {
            detail::im2col(x, g, y.shape, n0, n1, cols);
            a = cols;
        }
        gemm(false, true, rows, g.out_channels, patch, 1.f, a, patch, w, patch, 0.f,
             y.data + n0 * image_rows * g.out_channels, g.out_channels);
    });
    ctx.arena.release(scratch);
}

/// dw += dY^T cols(x); dx = col2im(dY w) unless dx.data is null (the network's input); as GEMMs.
inline void gemm_conv_backward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& dy,
                               float* dw, const Tensor& dx) {
    const std::size_t patch = g.patch(), image_rows = std::size_t(dy.shape.h) * dy.shape.w;
    const std::size_t weights = std::size_t(g.out_channels) * patch;
    const std::size_t threads = std::min<std::size_t>(ctx.pool.size(), std::size_t(dy.shape.n));
    auto scratch = ctx.arena.mark();
    // Each thread sums its images' filter gradients apart; the partial sums are added at the end.
    float* partial_dw = ctx.arena.allocate_floats(threads * weights);
    std::fill(partial_dw, partial_dw + threads * weights, 0.f);
    detail::for_each_slice(ctx, g, dy.shape, [&](std::size_t t, std::size_t n0, std::size_t n1, float* cols) {
        const std::size_t rows = (n1 - n0) * image_rows;
        const float* grad = dy.data + n0 * image_rows * g.out_channels;
        const float* a = x.data + n0 * image_rows * patch;
        if (cols) {
            detail::im2col(x, g, dy.shape, n0, n1, cols);
            a = cols;
        }
        gemm(true, false, g.out_channels, patch, rows, 1.f, grad, g.out_channels, a, patch, 1.f,
             partial_dw + t * weights, patch);
        if (!dx.data) return;
        if (!cols) {  // pointwise: dx is dcols
            gemm(false, false, rows, patch, g.out_channels, 1.f, grad, g.out_channels, w, patch, 0.f,
                 dx.data + n0 * image_rows * patch, patch);
            return;
        }
        gemm(false, false, rows, patch, g.out_channels, 1.f, grad, g.out_channels, w, patch, 0.f, cols, patch);
        detail::col2im(cols, g, dy.shape, n0, n1, dx);
    });
    for (std::size_t t = 0; t < threads; ++t)
        for (std::size_t i = 0; i < weights; ++i) dw[i] += partial_dw[t * weights + i];
    ctx.arena.release(scratch);
}

// Which kernels run each direction, by measurement (`tessera_bench --benchmark_filter=CpuConv` times
// both candidates on the ResNet family's shapes; README, "CPU convolutions"; 2 threads):
//  - forward: on CPUs with AVX-512, oneDNN always: its avx512_core kernels beat im2col + OpenBLAS
//    2-4x on every shape (64->64 3x3 at 7x7, batch 128: 1.2 against 2.6 ms; the 7x7 stem: 18
//    against 95 ms). On AVX2 alone, where the GEMM's long K keeps OpenBLAS at its peak, the GEMM for
//    3x3 convolutions of 32 input channels or more (64->64 at 7x7, batch 128: 3.4 against 5.1 ms)
//    and 1x1 of 256 or more (256->128 at 56x56, batch 32: 43.7 against 47.0 ms); oneDNN for the
//    narrow layers (16->16 at 28x28: 4.5 against 8.5 ms), the 1x1 of 64 and the 7x7 stem;
//  - data gradient: oneDNN, which needs no col2im (16->16: 2.8 against about 8 ms on AVX2);
//  - filter gradient: oneDNN up to a patch (kh*kw*Cin) of 256, the GEMM from there (on AVX2, 32->32
//    3x3: 3.8 against 4.5 ms; 512->2048 1x1: 19 against 38 ms; 16->16: 6.3 against 3.4 ms the other
//    way). On AVX-512 oneDNN's wide filter gradients are faster (ResNet-20's step 11%, ResNet50's
//    20%) but sum the batch less exactly: over 20 steps of SGD with OneCycle they put tessera's loss
//    2.9x as far from an fp64 run as PyTorch's fp32 run is (1.3e-2 against 4.4e-3; the weights 1.8x,
//    9.5e-4 against 5.4e-4), past the parity check's twice
//    (Parity.EachShippedOptimizerAndScheduleTrainsAsPyTorchDoes), so the GEMM keeps them everywhere.
// The CPU is read from cpuid (through oneDNN) when the program runs, never from how it was built.
inline bool forward_by_gemm(const ConvGeometry& g) {
    static const bool avx2_only = !onednn_has_avx512();
    return avx2_only && ((g.kernel == 3 && g.in_channels >= 32) || (g.kernel == 1 && g.in_channels >= 256));
}
inline bool filter_gradient_by_gemm(const ConvGeometry& g) { return g.patch() >= 256; }

/// y = conv(x, w). bf16 activations (mixed precision, on CPUs with bf16 instructions) run on oneDNN
/// in every direction: the GEMM path is fp32's.
inline void conv_forward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& y) {
    if (x.dtype == DType::f32 && forward_by_gemm(g))
        gemm_conv_forward(ctx, x, w, g, y);
    else
        ctx.onednn.at(g, x.shape, x.dtype).forward(ctx.onednn.stream(), x.data, w, y.data);
}

/// dw += the filter gradient; dx = the data gradient unless dx.data is null (the network's input).
inline void conv_backward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& dy,
                          float* dw, const Tensor& dx) {
    OneDnnConv& conv = ctx.onednn.at(g, x.shape, x.dtype);
    if (dx.data) conv.backward_data(ctx.onednn.stream(), dy.data, w, dx.data);
    if (x.dtype == DType::f32 && filter_gradient_by_gemm(g))
        gemm_conv_backward(ctx, x, w, g, dy, dw, Tensor{nullptr, dx.shape, dx.dtype});
    else
        conv.backward_weights(ctx.onednn.stream(), x.data, dy.data, dw);
}

}  // namespace tessera::cpu
