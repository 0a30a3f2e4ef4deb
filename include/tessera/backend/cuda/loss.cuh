#pragma once
// Softmax cross-entropy with label smoothing, its gradient and the true class's rank.
#include <cmath>

#include "tessera/backend/cuda/context.cuh"
#include "tessera/backend/labels.hpp"

namespace tessera::cuda {

namespace kernels {

// One block per sample: softmax cross-entropy with label smoothing, its gradient, and the rank of
// the true class (for top-1/top-5), as cpu::softmax_cross_entropy.
__global__ void softmax_cross_entropy(const float* logits, const std::int32_t* labels, int k, float smoothing,
                                      float* dlogits, int n, float* loss, int* rank) {
    __shared__ float reduce[threads];
    const int sample = blockIdx.x;
    const float* z = logits + std::size_t(sample) * k;
    const int label = labels[sample];
    auto block_reduce = [&](float v, bool is_max) {
        reduce[threadIdx.x] = v;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s /= 2) {
            if (threadIdx.x < s)
                reduce[threadIdx.x] = is_max ? fmaxf(reduce[threadIdx.x], reduce[threadIdx.x + s])
                                             : reduce[threadIdx.x] + reduce[threadIdx.x + s];
            __syncthreads();
        }
        const float r = reduce[0];
        __syncthreads();
        return r;
    };
    float local_max = -INFINITY;
    for (int j = threadIdx.x; j < k; j += blockDim.x) local_max = fmaxf(local_max, z[j]);
    const float zmax = block_reduce(local_max, true);
    float local_sum = 0.f, local_sum_z = 0.f, local_rank = 0.f;
    const float z_label = z[label];
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        local_sum += expf(z[j] - zmax);
        local_sum_z += z[j] - zmax;
        local_rank += (z[j] > z_label) || (z[j] == z_label && j < label);
    }
    const float sum = block_reduce(local_sum, false);
    const float sum_z = block_reduce(local_sum_z, false);
    const float ranked = block_reduce(local_rank, false);
    const float log_sum = logf(sum), off = smoothing / k, on = 1.f - smoothing + off;
    if (threadIdx.x == 0) {
        loss[sample] = -(on - off) * (z_label - zmax - log_sum) - off * (sum_z - k * log_sum);
        rank[sample] = int(ranked);
    }
    if (dlogits)
        for (int j = threadIdx.x; j < k; j += blockDim.x)
            dlogits[std::size_t(sample) * k + j] = (expf(z[j] - zmax - log_sum) - (j == label ? on : off)) / n;
}

}  // namespace kernels

LossResult Backend::softmax_cross_entropy(Context& ctx, const Tensor& logits, const std::int32_t* labels,
                                          float label_smoothing, float* dlogits) {
    detail::OpTimer timer(ctx, "loss");
    auto& impl = *ctx.impl;
    TESSERA_CHECK(logits.dtype == DType::f32, "the loss takes fp32 logits");
    const int n = logits.shape.n, k = int(logits.size() / n);
    check_labels(labels, n, k);
    if (impl.labels_capacity < n) {
        cudaFreeHost(impl.labels);
        cudaFreeHost(impl.losses);
        cudaFreeHost(impl.ranks);
        TESSERA_CUDA(cudaMallocHost(reinterpret_cast<void**>(&impl.labels), n * sizeof(std::int32_t)));
        TESSERA_CUDA(cudaMallocHost(reinterpret_cast<void**>(&impl.losses), n * sizeof(float)));
        TESSERA_CUDA(cudaMallocHost(reinterpret_cast<void**>(&impl.ranks), n * sizeof(int)));
        impl.labels_capacity = n;
    }
    std::copy(labels, labels + n, impl.labels);
    auto* device_labels = reinterpret_cast<std::int32_t*>(ctx.arena.allocate_floats(n));
    auto* device_losses = ctx.arena.allocate_floats(n);
    auto* device_ranks = reinterpret_cast<int*>(ctx.arena.allocate_floats(n));
    TESSERA_CUDA(
        cudaMemcpyAsync(device_labels, impl.labels, n * sizeof(std::int32_t), cudaMemcpyHostToDevice, impl.stream));
    kernels::softmax_cross_entropy<<<n, kernels::threads, 0, impl.stream>>>(
        logits.data, device_labels, k, label_smoothing, dlogits, n, device_losses, device_ranks);
    TESSERA_CUDA(cudaGetLastError());
    TESSERA_CUDA(cudaMemcpyAsync(impl.losses, device_losses, n * sizeof(float), cudaMemcpyDeviceToHost, impl.stream));
    TESSERA_CUDA(cudaMemcpyAsync(impl.ranks, device_ranks, n * sizeof(int), cudaMemcpyDeviceToHost, impl.stream));
    TESSERA_CUDA(cudaStreamSynchronize(impl.stream));  // the loss is read on the host: the step's one synchronisation
    LossResult r;
    for (int i = 0; i < n; ++i) {
        r.loss += impl.losses[i];
        r.top1 += impl.ranks[i] < 1;
        r.top5 += impl.ranks[i] < 5;
    }
    r.loss /= n;
    return r;
}

}  // namespace tessera::cuda
