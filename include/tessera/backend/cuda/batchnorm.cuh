#pragma once
// BatchNorm over the (rows, C) view of NHWC tensors, with the ReLU after it fused in (backend.hpp's
// FusedBatchNormReLU), on kernels of our own: cuDNN's fp32 NHWC BatchNorm took 0.7 s of a 0.78 s
// ResNet50 step (batch 256, H200).
//
// Training forward is two passes over x: the statistics, then the apply.
//   statistics: per channel, in one pass, the sums of d = x - s and of d^2, s a shift (the running
//     mean: any value gives the same moments, one near the mean keeps E[d^2] - E[d]^2 from
//     cancelling). Then mean = s + E[d] and the biased var = E[d^2] - E[d]^2, as PyTorch.
//     Synchronised BatchNorm (ctx.batchnorm_group, as torch.nn.SyncBatchNorm) all-reduces these 2C
//     sums: one all-reduce per layer, on the one communicator, in the same order on every rank.
//   finish (C threads): inv_std, the running statistics (unbiased variance), and each channel's
//     scale = gamma * inv_std and shift = beta - mean * scale.
//   apply: y = fma(x, scale, shift), then max(y, 0) when fused with the ReLU.
// Backward is two passes over x and dy:
//   sums: per channel, of g and g * xhat, where g is dy masked by the ReLU (the mask recomputed from
//     x: fma(x, scale, shift) > 0, the forward's own pre-activation, bit for bit; y is not read).
//   dgamma += sum(g * xhat), dbeta += sum(g) (this rank's; the gradient all-reduce averages them).
//   dx = scale * (g - mean(g) - xhat * mean(g * xhat)) in training; scale * g in eval.
//
// Each thread keeps to one group of V channels (V = 8 where C allows: one 16-byte load of bf16 or
// fp16, two of fp32) and walks rows, so no element needs a division; a block's 256 threads hold
// 256 / (C / V) rows at once. Sums are kept in fp32 per thread, in double across threads.
#include <cstdint>

#include "tessera/backend/cuda/context.cuh"

namespace tessera::cuda {

namespace kernels {

// Where one thread works in a (rows, C) tensor: groups of V channels, `groups_per_block` of them
// across a block's threads, `slots` rows at once; blockIdx.y picks a block's range of groups.
struct ChannelGrid {
    std::size_t rows;
    int channels, groups, groups_per_block, slots;
};
struct ChannelPlace {
    int group, slot;
    bool active;
};
__device__ __forceinline__ ChannelPlace place(const ChannelGrid& g) {
    const int lane = int(threadIdx.x) % g.groups_per_block;
    const int group = int(blockIdx.y) * g.groups_per_block + lane;
    const int slot = int(threadIdx.x) / g.groups_per_block;
    return {group, slot, slot < g.slots && group < g.groups};
}
#define TESSERA_CHANNEL_ROWS(r, grid, p)                                               \
    for (std::size_t r = blockIdx.x * std::size_t(grid.slots) + p.slot; r < grid.rows; \
         r += std::size_t(gridDim.x) * grid.slots)

template <int V>
__device__ __forceinline__ void load_channels(const float* per_channel, int group, float (&v)[V]) {
#pragma unroll
    for (int j = 0; j < V; ++j) v[j] = per_channel[group * V + j];
}

// The block's per-thread pair sums (first, second) meet per channel, in double, and are added to
// sums (2 x C: the firsts, then the seconds).
template <int V>
__device__ void add_channel_sums(const ChannelGrid& g, const ChannelPlace& p, const float (&first)[V],
                                 const float (&second)[V], double* sums) {
    __shared__ float partial[2][V][threads];
#pragma unroll
    for (int j = 0; j < V; ++j) partial[0][j][threadIdx.x] = first[j], partial[1][j][threadIdx.x] = second[j];
    __syncthreads();
    if (p.slot != 0 || p.group >= g.groups) return;
#pragma unroll
    for (int j = 0; j < V; ++j) {
        double a = 0, b = 0;
        for (int s = 0; s < g.slots; ++s) {
            const int t = s * g.groups_per_block + int(threadIdx.x);
            a += partial[0][j][t];
            b += partial[1][j][t];
        }
        atomicAdd(&sums[p.group * V + j], a);
        atomicAdd(&sums[g.channels + p.group * V + j], b);
    }
}

// Statistics: sums of d = x - shift and d^2 per channel.
template <int V, class T>
__global__ void bn_moments(ChannelGrid grid, const T* x, const float* shift, double* sums) {
    const ChannelPlace p = place(grid);
    float first[V] = {}, second[V] = {}, s[V] = {};
    if (p.active) {
        load_channels<V>(shift, p.group, s);
        TESSERA_CHANNEL_ROWS(r, grid, p) {
            float v[V];
            load<V>(x + r * grid.channels + p.group * V, v);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                const float d = v[j] - s[j];
                first[j] += d;
                second[j] = fmaf(d, d, second[j]);
            }
        }
    }
    add_channel_sums<V>(grid, p, first, second, sums);
}

// scale = gamma * inv_std, shift = beta - mean * scale: the forward's apply and backward's mask both
// take them from here, so the mask is the forward's pre-activation bit for bit.
__device__ __forceinline__ void scale_and_shift(const BatchNormParams& p, int c, float mean, float inv_std,
                                                float* scale, float* shift) {
    const float k = p.gamma[c] * inv_std;
    scale[c] = k;
    shift[c] = fmaf(-mean, k, p.beta[c]);
}

// Training: the batch's statistics from the moments about running_mean (read before it is updated),
// the running statistics (unbiased variance, as PyTorch), scale and shift.
__global__ void bn_finish_forward(const double* sums, int channels, std::size_t rows, BatchNormParams p, float* mean,
                                  float* inv_std, float* scale, float* shift) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    const double shifted_mean = sums[c] / double(rows);
    const double var = fmax(sums[channels + c] / double(rows) - shifted_mean * shifted_mean, 0.0);
    const double m = p.running_mean[c] + shifted_mean;
    mean[c] = float(m);
    inv_std[c] = float(1.0 / sqrt(var + p.eps));
    const double unbiased = rows > 1 ? var * double(rows) / double(rows - 1) : var;
    p.running_mean[c] = float((1 - p.momentum) * p.running_mean[c] + p.momentum * m);
    p.running_var[c] = float((1 - p.momentum) * p.running_var[c] + p.momentum * unbiased);
    scale_and_shift(p, c, mean[c], inv_std[c], scale, shift);
}
// Eval, or backward: the statistics given (saved ones), or the running ones (mean null), and scale
// and shift from them.
__global__ void bn_coefficients(BatchNormParams p, int channels, const float* saved_mean, const float* saved_inv_std,
                                float* mean, float* inv_std, float* scale, float* shift) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    mean[c] = saved_mean ? saved_mean[c] : p.running_mean[c];
    inv_std[c] = saved_inv_std ? saved_inv_std[c] : rsqrtf(p.running_var[c] + p.eps);
    scale_and_shift(p, c, mean[c], inv_std[c], scale, shift);
}

template <int V, bool relu, class T>
__global__ void bn_apply(ChannelGrid grid, const T* x, const float* scale, const float* shift, T* y) {
    const ChannelPlace p = place(grid);
    if (!p.active) return;
    float k[V], b[V];
    load_channels<V>(scale, p.group, k);
    load_channels<V>(shift, p.group, b);
    TESSERA_CHANNEL_ROWS(r, grid, p) {
        const std::size_t at = r * grid.channels + p.group * V;
        float v[V];
        load<V>(x + at, v);
#pragma unroll
        for (int j = 0; j < V; ++j) {
            v[j] = fmaf(v[j], k[j], b[j]);
            if constexpr (relu) v[j] = fmaxf(v[j], 0.f);
        }
        store<V>(y + at, v);
    }
}

// The ReLU's mask folded into dy: g = dy where the forward's pre-activation was positive.
template <int V, bool relu>
__device__ __forceinline__ void mask(const float (&x)[V], const float (&k)[V], const float (&b)[V], float (&g)[V]) {
    if constexpr (relu) {
#pragma unroll
        for (int j = 0; j < V; ++j) g[j] = fmaf(x[j], k[j], b[j]) > 0.f ? g[j] : 0.f;
    }
}

// Backward's sums: of g and of g * xhat per channel.
template <int V, bool relu, class T>
__global__ void bn_gradient_sums(ChannelGrid grid, const T* x, const T* dy, const float* mean, const float* inv_std,
                                 const float* scale, const float* shift, double* sums) {
    const ChannelPlace p = place(grid);
    float first[V] = {}, second[V] = {};
    if (p.active) {
        float m[V], s[V], k[V], b[V];
        load_channels<V>(mean, p.group, m);
        load_channels<V>(inv_std, p.group, s);
        load_channels<V>(scale, p.group, k);
        load_channels<V>(shift, p.group, b);
        TESSERA_CHANNEL_ROWS(r, grid, p) {
            const std::size_t at = r * grid.channels + p.group * V;
            float v[V], g[V];
            load<V>(x + at, v);
            load<V>(dy + at, g);
            mask<V, relu>(v, k, b, g);
#pragma unroll
            for (int j = 0; j < V; ++j) {
                first[j] += g[j];
                second[j] = fmaf(g[j], (v[j] - m[j]) * s[j], second[j]);
            }
        }
    }
    add_channel_sums<V>(grid, p, first, second, sums);
}

__global__ void bn_parameter_gradients(const double* sums, int channels, float* dgamma, float* dbeta) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < channels) dbeta[c] += float(sums[c]), dgamma[c] += float(sums[channels + c]);
}
// mean(g) and mean(g * xhat) per channel over every rank's rows (0 in eval: dx = scale * g).
__global__ void bn_gradient_means(const double* sums, int channels, std::size_t rows, bool training, float* mean_g,
                                  float* mean_gx) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    mean_g[c] = training ? float(sums[c] / double(rows)) : 0.f;
    mean_gx[c] = training ? float(sums[channels + c] / double(rows)) : 0.f;
}

template <int V, bool relu, class T>
__global__ void bn_input_gradient(ChannelGrid grid, const T* x, const T* dy, const float* mean, const float* inv_std,
                                  const float* scale, const float* shift, const float* mean_g, const float* mean_gx,
                                  T* dx) {
    const ChannelPlace p = place(grid);
    if (!p.active) return;
    float m[V], s[V], k[V], b[V], mg[V], mgx[V];
    load_channels<V>(mean, p.group, m);
    load_channels<V>(inv_std, p.group, s);
    load_channels<V>(scale, p.group, k);
    load_channels<V>(shift, p.group, b);
    load_channels<V>(mean_g, p.group, mg);
    load_channels<V>(mean_gx, p.group, mgx);
    TESSERA_CHANNEL_ROWS(r, grid, p) {
        const std::size_t at = r * grid.channels + p.group * V;
        float v[V], g[V];
        load<V>(x + at, v);
        load<V>(dy + at, g);
        mask<V, relu>(v, k, b, g);
#pragma unroll
        for (int j = 0; j < V; ++j) g[j] = k[j] * (g[j] - mg[j] - (v[j] - m[j]) * s[j] * mgx[j]);
        store<V>(dx + at, g);
    }
}

#undef TESSERA_CHANNEL_ROWS

}  // namespace kernels

namespace detail {

// How a (rows, C) tensor is split over threads (kernels::ChannelGrid): V = 8 channels per thread
// where C is a multiple of 8 and every tensor is 16-byte aligned, else 1.
struct ChannelLaunch {
    int vector;  // V
    kernels::ChannelGrid grid;
    dim3 blocks;

    ChannelLaunch(Shape shape, std::initializer_list<const void*> tensors, unsigned max_blocks)
        : vector(vector_width(std::size_t(shape.c), tensors)) {
        const int groups = shape.c / vector, per_block = std::min(groups, kernels::threads);
        grid = {shape.pixels(), shape.c, groups, per_block, kernels::threads / per_block};
        const unsigned ranges = unsigned((groups + per_block - 1) / per_block);
        const std::size_t needed = (grid.rows + grid.slots - 1) / grid.slots;
        blocks = dim3(unsigned(std::clamp<std::size_t>(needed, 1, std::max(1u, max_blocks / ranges))), ranges);
    }
    template <class F>
    void with_vector(F&& f) const {
        with_vector_width(vector, f);
    }
};

// The reductions' blocks meet in double atomics: enough of them to fill the card, few enough that
// the atomics stay cheap. The element-wise passes take as many as the rows ask, up to a grid stride.
constexpr unsigned reduction_blocks = 1024, apply_blocks = 16384;

inline unsigned channel_blocks(int c) { return unsigned((c + kernels::threads - 1) / kernels::threads); }

// A bool as a compile-time constant.
template <class F>
void with_relu(bool relu, F&& f) {
    if (relu)
        f(std::true_type{});
    else
        f(std::false_type{});
}

inline void batchnorm_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved, bool relu,
                              const Tensor& y) {
    same_type(x, y, "batchnorm forward");
    const int c = x.shape.c;
    auto stream = ctx.impl->stream;
    const auto mark = ctx.arena.mark();
    float* scale = ctx.arena.allocate_floats(c);
    float* shift = ctx.arena.allocate_floats(c);
    float* mean = saved.mean;
    float* inv_std = saved.inv_std;
    with_element_type(x.dtype, [&](auto t) {
        using T = decltype(t);
        if (ctx.training) {
            parallel::Communicator* group = ctx.batchnorm_group;
            const std::size_t total_rows = x.shape.pixels() * (group ? group->size() : 1);
            auto* sums = reinterpret_cast<double*>(ctx.arena.allocate_floats(4 * std::size_t(c)));
            TESSERA_CUDA(cudaMemsetAsync(sums, 0, 2 * std::size_t(c) * sizeof(double), stream));
            const ChannelLaunch launch(x.shape, {x.data}, reduction_blocks);
            launch.with_vector([&](auto v) {
                kernels::bn_moments<decltype(v)::value>
                    <<<launch.blocks, kernels::threads, 0, stream>>>(launch.grid, x.as<T>(), p.running_mean, sums);
            });
            TESSERA_CUDA(cudaGetLastError());
            if (group) group->all_reduce_sum(sums, 2 * std::size_t(c), stream);
            kernels::bn_finish_forward<<<channel_blocks(c), kernels::threads, 0, stream>>>(sums, c, total_rows, p, mean,
                                                                                           inv_std, scale, shift);
        } else {
            mean = ctx.arena.allocate_floats(c);
            inv_std = ctx.arena.allocate_floats(c);
            kernels::bn_coefficients<<<channel_blocks(c), kernels::threads, 0, stream>>>(p, c, nullptr, nullptr, mean,
                                                                                         inv_std, scale, shift);
        }
        TESSERA_CUDA(cudaGetLastError());
        const ChannelLaunch launch(x.shape, {x.data, y.data}, apply_blocks);
        launch.with_vector([&](auto v) {
            with_relu(relu, [&](auto r) {
                kernels::bn_apply<decltype(v)::value, decltype(r)::value>
                    <<<launch.blocks, kernels::threads, 0, stream>>>(launch.grid, x.as<T>(), scale, shift, y.as<T>());
            });
        });
        TESSERA_CUDA(cudaGetLastError());
    });
    ctx.arena.release(mark);
}

inline void batchnorm_backward(Context& ctx, const Tensor& x, const Tensor& dy, const BatchNormParams& p,
                               BatchNormSaved saved, bool relu, float* dgamma, float* dbeta, const Tensor& dx) {
    same_type(x, dy, "batchnorm backward");
    const int c = x.shape.c;
    auto stream = ctx.impl->stream;
    const auto mark = ctx.arena.mark();
    float* mean = ctx.arena.allocate_floats(c);
    float* inv_std = ctx.arena.allocate_floats(c);
    float* scale = ctx.arena.allocate_floats(c);
    float* shift = ctx.arena.allocate_floats(c);
    kernels::bn_coefficients<<<channel_blocks(c), kernels::threads, 0, stream>>>(
        p, c, ctx.training ? saved.mean : nullptr, ctx.training ? saved.inv_std : nullptr, mean, inv_std, scale, shift);
    TESSERA_CUDA(cudaGetLastError());
    parallel::Communicator* group = ctx.training ? ctx.batchnorm_group : nullptr;
    const std::size_t total_rows = x.shape.pixels() * (group ? group->size() : 1);
    with_element_type(x.dtype, [&](auto t) {
        using T = decltype(t);
        auto* sums = reinterpret_cast<double*>(ctx.arena.allocate_floats(4 * std::size_t(c)));
        TESSERA_CUDA(cudaMemsetAsync(sums, 0, 2 * std::size_t(c) * sizeof(double), stream));
        const ChannelLaunch reduce(x.shape, {x.data, dy.data}, reduction_blocks);
        reduce.with_vector([&](auto v) {
            with_relu(relu, [&](auto r) {
                kernels::bn_gradient_sums<decltype(v)::value, decltype(r)::value>
                    <<<reduce.blocks, kernels::threads, 0, stream>>>(reduce.grid, x.as<T>(), dy.as<T>(), mean, inv_std,
                                                                     scale, shift, sums);
            });
        });
        kernels::bn_parameter_gradients<<<channel_blocks(c), kernels::threads, 0, stream>>>(sums, c, dgamma, dbeta);
        TESSERA_CUDA(cudaGetLastError());
        if (!dx.data) return;
        if (group) group->all_reduce_sum(sums, 2 * std::size_t(c), stream);  // after this rank's dgamma and dbeta
        float* mean_g = ctx.arena.allocate_floats(c);
        float* mean_gx = ctx.arena.allocate_floats(c);
        kernels::bn_gradient_means<<<channel_blocks(c), kernels::threads, 0, stream>>>(sums, c, total_rows,
                                                                                       ctx.training, mean_g, mean_gx);
        const ChannelLaunch apply(x.shape, {x.data, dy.data, dx.data}, apply_blocks);
        apply.with_vector([&](auto v) {
            with_relu(relu, [&](auto r) {
                kernels::bn_input_gradient<decltype(v)::value, decltype(r)::value>
                    <<<apply.blocks, kernels::threads, 0, stream>>>(apply.grid, x.as<T>(), dy.as<T>(), mean, inv_std,
                                                                    scale, shift, mean_g, mean_gx, dx.as<T>());
            });
        });
        TESSERA_CUDA(cudaGetLastError());
    });
    ctx.arena.release(mark);
}

}  // namespace detail

void Backend::batchnorm_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved,
                                const Tensor& y) {
    detail::OpTimer timer(ctx, "batchnorm forward");
    detail::batchnorm_forward(ctx, x, p, saved, false, y);
}
void Backend::batchnorm_relu_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved,
                                     const Tensor& y) {
    detail::OpTimer timer(ctx, "batchnorm+relu forward");
    detail::batchnorm_forward(ctx, x, p, saved, true, y);
}
void Backend::batchnorm_backward(Context& ctx, const Tensor& x, const Tensor& dy, const BatchNormParams& p,
                                 BatchNormSaved saved, float* dgamma, float* dbeta, const Tensor& dx) {
    detail::OpTimer timer(ctx, "batchnorm backward");
    detail::batchnorm_backward(ctx, x, dy, p, saved, false, dgamma, dbeta, dx);
}
void Backend::batchnorm_relu_backward(Context& ctx, const Tensor& x, const Tensor&, const Tensor& dy,
                                      const BatchNormParams& p, BatchNormSaved saved, float* dgamma, float* dbeta,
                                      const Tensor& dx) {
    detail::OpTimer timer(ctx, "batchnorm+relu backward");
    detail::batchnorm_backward(ctx, x, dy, p, saved, true, dgamma, dbeta, dx);
}

}  // namespace tessera::cuda
