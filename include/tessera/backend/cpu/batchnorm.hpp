#pragma once
// Batch normalisation over the (N*H*W, C) view of an NHWC tensor, optionally followed by a ReLU
// in the same passes. x, y, dy and dx are fp32 or bf16 (bf16.hpp); every sum, statistic and
// per-channel factor is fp32 or double either way.
//   training:  y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta, batch statistics, and
//              running = (1 - momentum) * running + momentum * stat (unbiased variance, as PyTorch)
//   eval:      the same with the running statistics
//   backward (training), with xhat = (x - mean) * inv_std and P = N*H*W:
//              dbeta = sum(dy), dgamma = sum(dy * xhat)
//              dx = gamma * inv_std / P * (P * dy - dbeta - xhat * dgamma)
//   with the ReLU: y = max(BN(x), 0), and backward first masks dy where y is 0.
// x̂ is recomputed from x in backward rather than stored: one tensor less per BN layer.
//
// Passes over the tensor, which is what the time goes to: forward reads x twice (the statistics,
// then y = x * scale + shift, ReLU included) and writes y once; backward reads x and dy twice (the
// two sums in one pass, then dx), fused or not: the ReLU's mask is recomputed from x. The statistics are one pass:
// float sums of (x - K) and (x - K)^2 with K the batch's first pixel (the shifted-data algorithm),
// which keeps the variance from cancelling in float as sum(x^2) - sum(x)^2 / P would when the mean
// is large against the spread.
//
// Synchronised (ctx.batchnorm_group set, as torch.nn.SyncBatchNorm): the sums over rows, and the
// row count P, are taken over every rank's batch; dgamma and dbeta stay this rank's sums, which the
// gradient all-reduce then averages like every other gradient.
#include <algorithm>
#include <array>
#include <cmath>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/backend/cpu/bf16.hpp"
#include "tessera/backend/cpu/context.hpp"
#include "tessera/backend/cpu/elementwise.hpp"
#include "tessera/backend/cpu/dispatch.hpp"
#include "tessera/backend/ops.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

using tessera::BatchNormParams;
using tessera::BatchNormSaved;

namespace detail {

// The loops over rows, each compiled for AVX-512, AVX2 and the baseline (dispatch.hpp). Rows are
// pixels of C channels; each loop runs across the channels, which vectorises, in row order.

/// Rows of fewer than `lanes` channels, where C divides it, are taken `lanes` / C at a time as one
/// flat run of `lanes` values, with the per-channel vectors tiled to match: a 16-channel row alone
/// is one vector, and the loop around it cost more than the arithmetic.
inline constexpr std::size_t lanes = 64;
inline bool tiles(std::size_t c) { return c < lanes && lanes % c == 0; }

/// The per-channel vectors a loop over rows reads (`in`; a null one stays null) and adds to (`out`).
template <std::size_t In, std::size_t Out = 0>
struct Channels {
    std::array<const float*, In> in{};
    std::array<float*, Out> out{};
};

/// Calls run(at, n, v) over rows [r0, r1) of C channels: the n values from index `at` on, with v's
/// vectors indexed from the run's first value. A run is one row (n = C) or, where tiles(C), lanes / C
/// rows as one (n = `lanes`, a constant, so that the loop in `run` compiles to whole vectors), with
/// v's inputs tiled to match and its outputs summed per lane, then folded into their channels (lane
/// i into channel i % C, in lane order: the same sums on every CPU). Inlined into the cloned loop
/// that calls it, so that it is compiled for that loop's instruction set.
template <std::size_t In, std::size_t Out, class Run>
TESSERA_CPU_INLINE inline void for_each_run(std::size_t c, std::size_t r0, std::size_t r1, const Channels<In, Out>& v,
                                            Run&& run) {
    if (tiles(c) && r1 - r0 >= lanes / c) {
        alignas(64) float in[In][lanes], out[Out > 0 ? Out : 1][lanes] = {};
        Channels<In, Out> t;
        for (std::size_t k = 0; k < In; ++k) {
            if (!v.in[k]) continue;
            for (std::size_t i = 0; i < lanes; ++i) in[k][i] = v.in[k][i % c];
            t.in[k] = in[k];
        }
        for (std::size_t k = 0; k < Out; ++k) t.out[k] = out[k];
        const std::size_t step = lanes / c, blocks = (r1 - r0) / step;
        for (std::size_t b = 0; b < blocks; ++b)
            run(r0 * c + b * lanes, std::integral_constant<std::size_t, lanes>{}, std::as_const(t));
        for (std::size_t k = 0; k < Out; ++k)
            for (std::size_t i = 0; i < lanes; ++i) v.out[k][i % c] += out[k][i];
        r0 += blocks * step;
    }
    for (std::size_t r = r0; r < r1; ++r) run(r * c, c, v);
}

// The element-wise maths, written once for every loop below.
inline float normalised(float x, float mean, float inv_std) { return (x - mean) * inv_std; }
/// The ReLU's backward: g where the forward's pre-activation x * scale + shift was positive. That is
/// recomputed from x, not read from y: the same products and sums as the forward's, never contracted
/// into FMAs (meson.build), so the same mask bit for bit, and one tensor fewer through the cache.
inline float relu_gradient(float g, float x, float scale, float shift) { return x * scale + shift > 0.f ? g : 0.f; }

/// s += x - k and s2 += (x - k)^2 per channel over rows [r0, r1).
template <class T>
TESSERA_CPU_CLONES void shifted_sums(const T* __restrict x, const float* __restrict k, std::size_t c, std::size_t r0,
                                     std::size_t r1, float* __restrict s, float* __restrict s2) {
    for_each_run(c, r0, r1, Channels<1, 2>{{k}, {s, s2}},
                 [=](std::size_t at, auto n, const Channels<1, 2>& v) TESSERA_CPU_INLINE {
                     const T* __restrict xr = x + at;
                     const float* __restrict kr = v.in[0];
                     float* __restrict sr = v.out[0], * __restrict s2r = v.out[1];
                     for (std::size_t j = 0; j < n; ++j) {
                         const float d = widen(xr[j]) - kr[j];
                         sr[j] += d;
                         s2r[j] += d * d;
                     }
                 });
}

/// y = x * scale + shift per channel over rows [r0, r1), then max(y, 0) when `relu`.
template <class T>
TESSERA_CPU_CLONES void scale_shift_rows(const T* __restrict x, const float* __restrict scale,
                                         const float* __restrict shift, bool relu, std::size_t c, std::size_t r0,
                                         std::size_t r1, T* __restrict y) {
    for_each_run(c, r0, r1, Channels<2>{{scale, shift}},
                 [=](std::size_t at, auto n, const Channels<2>& v) TESSERA_CPU_INLINE {
                     const T* __restrict xr = x + at;
                     T* __restrict yr = y + at;
                     const float* __restrict sc = v.in[0], * __restrict sh = v.in[1];
                     if (relu)
                         for (std::size_t j = 0; j < n; ++j)
                             yr[j] = narrow<T>(std::max(widen(xr[j]) * sc[j] + sh[j], 0.f));
                     else
                         for (std::size_t j = 0; j < n; ++j) yr[j] = narrow<T>(widen(xr[j]) * sc[j] + sh[j]);
                 });
}

/// s += g and s2 += g * xhat per channel over rows [r0, r1), with xhat = (x - mean) * inv_std and
/// g = dy, masked by the forward's ReLU (relu_gradient) when `shift` is given.
template <class T>
TESSERA_CPU_CLONES void gradient_sums(const T* __restrict x, const T* __restrict dy, const float* __restrict mean,
                                      const float* __restrict inv_std, const float* __restrict scale,
                                      const float* __restrict shift, std::size_t c, std::size_t r0, std::size_t r1,
                                      float* __restrict s, float* __restrict s2) {
    for_each_run(
        c, r0, r1, Channels<4, 2>{{mean, inv_std, scale, shift}, {s, s2}},
        [=](std::size_t at, auto n, const Channels<4, 2>& v) TESSERA_CPU_INLINE {
            const T* __restrict xr = x + at, * __restrict gr = dy + at;
            const float* __restrict m = v.in[0], * __restrict is = v.in[1], * __restrict sc = v.in[2], * __restrict sh = v.in[3];
            float* __restrict sr = v.out[0], * __restrict s2r = v.out[1];
            if (sh) {
                for (std::size_t j = 0; j < n; ++j) {
                    const float g = relu_gradient(widen(gr[j]), widen(xr[j]), sc[j], sh[j]);
                    sr[j] += g;
                    s2r[j] += g * normalised(widen(xr[j]), m[j], is[j]);
                }
            } else {
                for (std::size_t j = 0; j < n; ++j) {
                    const float g = widen(gr[j]);
                    sr[j] += g;
                    s2r[j] += g * normalised(widen(xr[j]), m[j], is[j]);
                }
            }
        });
}

/// dx = scale * (g - mean_dy - xhat * mean_dy_xhat) over rows [r0, r1), g and xhat as above.
template <class T>
TESSERA_CPU_CLONES void gradient_rows(const T* __restrict x, const T* __restrict dy, const float* __restrict mean,
                                      const float* __restrict inv_std, const float* __restrict scale,
                                      const float* __restrict shift, const float* __restrict mean_dy,
                                      const float* __restrict mean_dy_xhat, std::size_t c, std::size_t r0,
                                      std::size_t r1, T* __restrict dx) {
    for_each_run(
        c, r0, r1, Channels<6>{{mean, inv_std, scale, shift, mean_dy, mean_dy_xhat}},
        [=](std::size_t at, auto n, const Channels<6>& v) TESSERA_CPU_INLINE {
            const T* __restrict xr = x + at, * __restrict gr = dy + at;
            T* __restrict dxr = dx + at;
            const float* __restrict m = v.in[0], * __restrict is = v.in[1], * __restrict sc = v.in[2], * __restrict sh = v.in[3], * __restrict mdy = v.in[4], * __restrict mdyx = v.in[5];
            if (sh) {
                for (std::size_t j = 0; j < n; ++j) {
                    const float g = relu_gradient(widen(gr[j]), widen(xr[j]), sc[j], sh[j]);
                    dxr[j] = narrow<T>(sc[j] * (g - mdy[j] - normalised(widen(xr[j]), m[j], is[j]) * mdyx[j]));
                }
            } else {
                for (std::size_t j = 0; j < n; ++j)
                    dxr[j] =
                        narrow<T>(sc[j] * (widen(gr[j]) - mdy[j] - normalised(widen(xr[j]), m[j], is[j]) * mdyx[j]));
            }
        });
}

/// Sums, per channel, two quantities of each row over all rows: add(r0, r1, first, second) adds
/// the terms of rows [r0, r1) into two float vectors of C, which are flushed into double every 256
/// rows (exact enough, and fast). One partial sum per chunk of the rows (Split: the same chunks for
/// the same rows, whatever the timing), added in chunk order: deterministic. Returns the 2C sums,
/// first then second.
template <class AddRow>
std::vector<double> sum_rows(Context& ctx, std::size_t rows, int channels, AddRow add) {
    const std::size_t c = std::size_t(channels);
    const Split split(rows, ctx.pool.size(), 1);
    std::vector<double> partial(split.chunks * 2 * c, 0.0);
    ctx.pool.parallel_for(split.chunks, [&](std::size_t t0, std::size_t t1) {
        std::vector<float> acc(2 * c);
        for (std::size_t t = t0; t < t1; ++t) {
            double* out = partial.data() + t * 2 * c;
            const std::size_t begin = split.begin(t), end = split.end(t);
            for (std::size_t block = begin; block < end; block += 256) {
                std::fill(acc.begin(), acc.end(), 0.f);
                add(block, std::min(end, block + 256), acc.data(), acc.data() + c);
                for (std::size_t i = 0; i < 2 * c; ++i) out[i] += acc[i];
            }
        }
    });
    std::vector<double> total(2 * c, 0.0);
    for (std::size_t t = 0; t < split.chunks; ++t)
        for (std::size_t i = 0; i < 2 * c; ++i) total[i] += partial[t * 2 * c + i];
    return total;
}

// Sums over the group's ranks, in place (nothing without a group).
inline void sum_over_group(parallel::Communicator* group, std::vector<double>& sums) {
    if (group) group->all_reduce_sum(sums.data(), sums.size());
}

// The rows of the batch across the group.
inline double group_rows(parallel::Communicator* group, std::size_t rows) {
    double total = double(rows);
    if (group) group->all_reduce_sum(&total, 1);
    return total;
}

/// The per-channel factors y = x * scale + shift applies: scale = gamma * inv_std, shift = beta -
/// mean * scale. Forward and backward both take them from here, so that backward's recomputed ReLU
/// mask is the forward's own pre-activation, bit for bit.
struct ScaleShift {
    std::vector<float> scale, shift;
};
inline ScaleShift scale_and_shift(const BatchNormParams& p, const std::vector<float>& mean,
                                  const std::vector<float>& inv_std) {
    ScaleShift f{std::vector<float>(mean.size()), std::vector<float>(mean.size())};
    for (std::size_t j = 0; j < mean.size(); ++j) {
        f.scale[j] = p.gamma[j] * inv_std[j];
        f.shift[j] = p.beta[j] - mean[j] * f.scale[j];
    }
    return f;
}

/// y = x * scale + shift per channel, then max(y, 0) when `relu`.
inline void apply(Context& ctx, const Tensor& x, const std::vector<float>& scale_v, const std::vector<float>& shift_v,
                  bool relu, const Tensor& y) {
    const std::size_t c = std::size_t(x.shape.c);
    const float *scale = scale_v.data(), *shift = shift_v.data();
    with_element_type(x.dtype, [&]<class T>(T) {
        const T* in = x.as<T>();
        T* out = y.as<T>();
        ctx.pool.parallel_for(
            x.shape.pixels(),
            [=](std::size_t begin, std::size_t end) { scale_shift_rows(in, scale, shift, relu, c, begin, end, out); },
            256);
    });
}

}  // namespace detail

/// y = BN(x) (then ReLU when `relu`), both (N, H, W, C). In training, fills `saved` and updates the
/// running statistics.
inline void batchnorm_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved,
                              bool training, bool relu, const Tensor& y) {
    const std::size_t c = std::size_t(x.shape.c), rows = x.shape.pixels();
    std::vector<float> mean(c), inv_std(c);
    if (training) {
        std::vector<float> k(c);  // the shift K: the batch's first pixel
        widen_to(Tensor{x.data, {1, 1, 1, int(c)}, x.dtype}, k.data());
        const float* shift = k.data();
        std::vector<double> sums = with_element_type(x.dtype, [&]<class T>(T) {
            const T* in = x.as<T>();
            return detail::sum_rows(ctx, rows, int(c), [=](std::size_t r0, std::size_t r1, float* s, float* s2) {
                detail::shifted_sums(in, shift, c, r0, r1, s, s2);
            });
        });
        // The shifted sums as sums of x and x^2, in double, where the cancellation of the variance
        // costs nothing that matters; each rank's shift is its own, and these add up across ranks.
        for (std::size_t j = 0; j < c; ++j) {
            const double kj = k[j], s1 = sums[j], s2 = sums[c + j];
            sums[j] = s1 + double(rows) * kj;
            sums[c + j] = s2 + 2 * kj * s1 + double(rows) * kj * kj;
        }
        detail::sum_over_group(ctx.batchnorm_group, sums);
        const double total_rows = detail::group_rows(ctx.batchnorm_group, rows);
        const double unbiased = total_rows > 1 ? total_rows / (total_rows - 1) : 1.0;
        for (std::size_t j = 0; j < c; ++j) {
            const double m = sums[j] / total_rows;
            const double var = std::max(0.0, sums[c + j] / total_rows - m * m);  // biased
            mean[j] = float(m);
            inv_std[j] = float(1.0 / std::sqrt(var + p.eps));
            p.running_mean[j] = (1 - p.momentum) * p.running_mean[j] + p.momentum * float(m);
            p.running_var[j] = (1 - p.momentum) * p.running_var[j] + p.momentum * float(var * unbiased);
            saved.mean[j] = mean[j];
            saved.inv_std[j] = inv_std[j];
        }
    } else {
        for (std::size_t j = 0; j < c; ++j) {
            mean[j] = p.running_mean[j];
            inv_std[j] = 1.f / std::sqrt(p.running_var[j] + p.eps);
        }
    }
    const detail::ScaleShift f = detail::scale_and_shift(p, mean, inv_std);
    detail::apply(ctx, x, f.scale, f.shift, relu, y);
}

/// dx from dy (N, H, W, C); dgamma and dbeta are accumulated (+=). With `y` (the forward's output
/// after its ReLU) set, dy is first masked where y is 0: the ReLU's backward, folded in (the mask
/// is recomputed from x, so y itself is not read).
inline void batchnorm_backward(Context& ctx, const Tensor& x, const Tensor& y, const Tensor& dy,
                               const BatchNormParams& p, BatchNormSaved saved, bool training, float* dgamma,
                               float* dbeta, const Tensor& dx) {
    const std::size_t c = std::size_t(x.shape.c), rows = x.shape.pixels();
    std::vector<float> mean(c), inv_std(c);
    for (std::size_t j = 0; j < c; ++j) {
        mean[j] = training ? saved.mean[j] : p.running_mean[j];
        inv_std[j] = training ? saved.inv_std[j] : 1.f / std::sqrt(p.running_var[j] + p.eps);
    }
    const detail::ScaleShift f = detail::scale_and_shift(p, mean, inv_std);  // the forward's, for the mask
    const float *m = mean.data(), *is = inv_std.data(), *sc = f.scale.data();
    const float* relu_shift = y.data ? f.shift.data() : nullptr;  // null: no ReLU to fold in
    // sum(dy), then sum(dy * xhat), dy masked by the ReLU.
    std::vector<double> sums = with_element_type(x.dtype, [&]<class T>(T) {
        const T *in = x.as<T>(), *grad = dy.as<T>();
        return detail::sum_rows(ctx, rows, int(c), [=](std::size_t r0, std::size_t r1, float* s, float* s2) {
            detail::gradient_sums(in, grad, m, is, sc, relu_shift, c, r0, r1, s, s2);
        });
    });
    for (std::size_t j = 0; j < c; ++j) {
        dbeta[j] += float(sums[j]);
        dgamma[j] += float(sums[c + j]);
    }
    if (!dx.data) return;
    std::vector<float> mean_dy(c, 0.f), mean_dy_xhat(c, 0.f);
    if (training) {
        detail::sum_over_group(ctx.batchnorm_group, sums);
        const double total_rows = detail::group_rows(ctx.batchnorm_group, rows);
        for (std::size_t j = 0; j < c; ++j) {
            mean_dy[j] = float(sums[j] / total_rows);
            mean_dy_xhat[j] = float(sums[c + j] / total_rows);
        }
    }
    // Eval mode: the statistics are constants, and dx = scale * dy (the means stay 0).
    const float *mdy = mean_dy.data(), *mdyx = mean_dy_xhat.data();
    with_element_type(x.dtype, [&]<class T>(T) {
        const T *in = x.as<T>(), *grad = dy.as<T>();
        T* result = dx.as<T>();
        ctx.pool.parallel_for(
            rows,
            [=](std::size_t begin, std::size_t end) {
                detail::gradient_rows(in, grad, m, is, sc, relu_shift, mdy, mdyx, c, begin, end, result);
            },
            256);
    });
}

}  // namespace tessera::cpu
