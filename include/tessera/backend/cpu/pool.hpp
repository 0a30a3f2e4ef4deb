#pragma once
// Pooling over NHWC tensors. Max pooling remembers, for each output value, which input pixel won
// (an index into the image), so backward routes the gradient there without comparing again.
// Activations are fp32 or bf16 (bf16.hpp); sums are fp32.
#include <cstdint>
#include <algorithm>
#include <limits>
#include <vector>

#include "tessera/backend/ops.hpp"
#include "tessera/backend/cpu/bf16.hpp"
#include "tessera/backend/cpu/context.hpp"
#include "tessera/backend/cpu/dispatch.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

namespace detail {
/// One window pixel's C values into the running maxima: a value greater than the best so far (the
/// first of equal ones wins) takes its place, and its pixel its argmax. Selects, so it vectorises.
template <class T>
TESSERA_CPU_CLONES void max_into(const T* __restrict in, std::int32_t pixel, int c, float* __restrict best,
                                 std::int32_t* __restrict arg) {
    for (int ch = 0; ch < c; ++ch) {
        const float v = widen(in[ch]);
        const bool take = v > best[ch];
        best[ch] = take ? v : best[ch];
        arg[ch] = take ? pixel : arg[ch];
    }
}
/// sums[arg[ch]][ch] += g[ch]: one output pixel's gradient to the input pixels that won.
template <class T>
TESSERA_CPU_CLONES void route_gradient(const T* __restrict g, const std::int32_t* __restrict arg, int c,
                                       float* __restrict sums) {
    for (int ch = 0; ch < c; ++ch) sums[std::size_t(arg[ch]) * c + ch] += widen(g[ch]);
}
}  // namespace detail

/// y (N, Ho, Wo, C) = max over each window of x (N, H, W, C); argmax (y.size()) = winning pixel in its image.
inline void maxpool_forward(Context& ctx, const Tensor& x, const PoolGeometry& g, const Tensor& y,
                            std::int32_t* argmax) {
    const int c = x.shape.c;
    with_element_type(x.dtype, [&]<class T>(T) {
        ctx.pool.parallel_for(
            y.shape.pixels(),
            [&](std::size_t begin, std::size_t end) {
                std::vector<float> best(static_cast<std::size_t>(c));  // the running maxima, in fp32
                for (std::size_t p = begin; p < end; ++p) {
                    const int ox = int(p % y.shape.w), oy = int(p / y.shape.w % y.shape.h);
                    const std::size_t n = p / (std::size_t(y.shape.w) * y.shape.h);
                    std::int32_t* arg = argmax + p * c;
                    std::fill(best.begin(), best.end(), -std::numeric_limits<float>::infinity());
                    std::fill(arg, arg + c, 0);
                    for (int ky = 0; ky < g.kernel; ++ky) {
                        const int iy = oy * g.stride - g.pad + ky;
                        if (iy < 0 || iy >= x.shape.h) continue;
                        for (int kx = 0; kx < g.kernel; ++kx) {
                            const int ix = ox * g.stride - g.pad + kx;
                            if (ix < 0 || ix >= x.shape.w) continue;
                            const std::int32_t pixel = iy * x.shape.w + ix;
                            detail::max_into(x.as<T>() + (n * x.shape.h * x.shape.w + pixel) * c, pixel, c, best.data(),
                                             arg);
                        }
                    }
                    T* out = y.as<T>() + p * c;
                    for (int ch = 0; ch < c; ++ch) out[ch] = narrow<T>(best[ch]);  // exact: a value of x
                }
            },
            16);
    });
}

/// dx (N, H, W, C) = the gradient of each output routed to its winning input pixel, summed in fp32
/// where windows overlap (in dx itself for fp32; for bf16 in one image of floats per thread, taken
/// from the arena, then rounded into dx).
inline void maxpool_backward(Context& ctx, const Tensor& dy, const std::int32_t* argmax, const Tensor& dx) {
    const int c = dx.shape.c;
    const std::size_t in_image = std::size_t(dx.shape.h) * dx.shape.w, out_image = std::size_t(dy.shape.h) * dy.shape.w;
    const std::size_t threads = std::min<std::size_t>(ctx.pool.size(), std::size_t(dx.shape.n));
    const auto scratch = ctx.arena.mark();
    float* images = dx.dtype == DType::f32 ? nullptr : ctx.arena.allocate_floats(threads * in_image * c);
    with_element_type(dx.dtype, [&]<class T>(T) {
        ctx.pool.parallel_for(threads, [&](std::size_t t0, std::size_t t1) {
            for (std::size_t t = t0; t < t1; ++t) {
                const std::size_t begin = std::size_t(dx.shape.n) * t / threads,
                                  end = std::size_t(dx.shape.n) * (t + 1) / threads;
                for (std::size_t n = begin; n < end; ++n) {
                    T* out = dx.as<T>() + n * in_image * c;
                    float* sums = images ? images + t * in_image * c : reinterpret_cast<float*>(out);
                    std::fill(sums, sums + in_image * c, 0.f);
                    for (std::size_t q = 0; q < out_image; ++q) {
                        const std::size_t p = n * out_image + q;
                        detail::route_gradient(dy.as<T>() + p * c, argmax + p * c, c, sums);
                    }
                    if (images)
                        for (std::size_t i = 0; i < in_image * c; ++i) out[i] = narrow<T>(sums[i]);
                }
            }
        });
    });
    ctx.arena.release(scratch);
}

/// y (N, 1, 1, C) = mean over H and W of x (N, H, W, C), summed in fp32.
inline void global_avgpool_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    const int c = x.shape.c;
    const std::size_t pixels = std::size_t(x.shape.h) * x.shape.w;
    with_element_type(x.dtype, [&]<class T>(T) {
        ctx.pool.parallel_for(std::size_t(x.shape.n), [&](std::size_t begin, std::size_t end) {
            std::vector<float> sum(static_cast<std::size_t>(c));
            for (std::size_t n = begin; n < end; ++n) {
                std::fill(sum.begin(), sum.end(), 0.f);
                for (std::size_t q = 0; q < pixels; ++q) {
                    const T* in = x.as<T>() + (n * pixels + q) * c;
                    for (int ch = 0; ch < c; ++ch) sum[ch] += widen(in[ch]);
                }
                T* out = y.as<T>() + n * c;
                for (int ch = 0; ch < c; ++ch) out[ch] = narrow<T>(sum[ch] / float(pixels));
            }
        });
    });
}

/// dx (N, H, W, C) = dy (N, 1, 1, C) / (H * W), broadcast over the image.
inline void global_avgpool_backward(Context& ctx, const Tensor& dy, const Tensor& dx) {
    const int c = dx.shape.c;
    const std::size_t pixels = std::size_t(dx.shape.h) * dx.shape.w;
    with_element_type(dx.dtype, [&]<class T>(T) {
        ctx.pool.parallel_for(std::size_t(dx.shape.n), [&](std::size_t begin, std::size_t end) {
            for (std::size_t n = begin; n < end; ++n) {
                const T* g = dy.as<T>() + n * c;
                for (std::size_t q = 0; q < pixels; ++q) {
                    T* out = dx.as<T>() + (n * pixels + q) * c;
                    for (int ch = 0; ch < c; ++ch) out[ch] = narrow<T>(widen(g[ch]) / float(pixels));
                }
            }
        });
    });
}

}  // namespace tessera::cpu
