// The lars plugin's step on the GPU, on the trainer's stream. Two passes over a grid of (chunks,
// tensors): the squared norms of each tensor's weights and gradients, summed in double; then the
// update, each block computing its tensor's trust ratio from them.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda_steps.hpp"

namespace tessera::plugins::optimizers {

namespace {

constexpr int threads = 256;

#define LARS_CHUNK_LOOP(i, t)                                                           \
    for (std::size_t i = blockIdx.x * std::size_t(threads) + threadIdx.x; i < (t).size; \
         i += std::size_t(threads) * gridDim.x)

__global__ void squared_norms(const float* w, const float* grad, const LarsTensor* tensors, double* sums) {
    const LarsTensor t = tensors[blockIdx.y];
    if (!t.adapt) return;
    __shared__ double ww[threads], gg[threads];
    double a = 0, b = 0;
    LARS_CHUNK_LOOP(i, t) {
        const double x = w[t.offset + i], g = grad[t.offset + i];
        a += x * x, b += g * g;
    }
    ww[threadIdx.x] = a, gg[threadIdx.x] = b;
    __syncthreads();
    for (int stride = threads / 2; stride > 0; stride /= 2) {
        if (int(threadIdx.x) < stride)
            ww[threadIdx.x] += ww[threadIdx.x + stride], gg[threadIdx.x] += gg[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        atomicAdd(&sums[2 * blockIdx.y], ww[0]);
        atomicAdd(&sums[2 * blockIdx.y + 1], gg[0]);
    }
}

__global__ void update(float* w, const float* grad, float* velocity, const LarsTensor* tensors, const double* sums,
                       LarsStep s) {
    const LarsTensor t = tensors[blockIdx.y];
    float rate = s.lr;
    if (t.adapt) {
        const double w_norm = sqrt(sums[2 * blockIdx.y]), g_norm = sqrt(sums[2 * blockIdx.y + 1]);
        if (w_norm > 0 && g_norm > 0) rate *= float(s.eeta * w_norm / (g_norm + t.weight_decay * w_norm + s.epsilon));
    }
    LARS_CHUNK_LOOP(i, t) {
        const std::size_t k = t.offset + i;
        const float g = grad[k] + t.weight_decay * w[k];
        const float v = s.momentum * velocity[k] + rate * g;
        velocity[k] = v;
        w[k] -= s.nesterov ? rate * g + s.momentum * v : v;
    }
}

}  // namespace

void upload_bytes(void* device, const void* host, std::size_t bytes) {
    check_cuda(cudaMemcpy(device, host, bytes, cudaMemcpyHostToDevice), "optimizer lars (cuda)", "cudaMemcpy");
    // Once, at setup, on the legacy stream: finished before the trainer's stream reads it.
    check_cuda(cudaDeviceSynchronize(), "optimizer lars (cuda)", "cudaDeviceSynchronize");
}

void lars_step_cuda(const DeviceArrays& state, float* w, const float* grad, const LarsTensor* tensors, int count,
                    double* sums, std::size_t largest, const LarsStep& s, void* stream) {
    auto* st = static_cast<cudaStream_t>(stream);
    const dim3 grid(unsigned(std::min<std::size_t>((largest + threads - 1) / threads, 64)), unsigned(count));
    check_cuda(cudaMemsetAsync(sums, 0, 2 * std::size_t(count) * sizeof(double), st), "optimizer lars (cuda)",
               "cudaMemsetAsync");
    squared_norms<<<grid, threads, 0, st>>>(w, grad, tensors, sums);
    update<<<grid, threads, 0, st>>>(w, grad, state["momentum_buffer"], tensors, sums, s);
    check_cuda(cudaGetLastError(), "optimizer lars (cuda)", "kernel launch");
}

}  // namespace tessera::plugins::optimizers
