// The adamw plugin's step on the GPU: one fused pass over the flat buffers, on the trainer's stream.
#include <cuda_runtime.h>

#include <algorithm>

#include "cuda_steps.hpp"

namespace tessera::plugins::optimizers {

namespace {
__global__ void adamw(float* w, const float* grad, float* m, float* v, const float* decay, std::size_t n, AdamStep s) {
    const float step_size = s.lr / s.bias_correction1;
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
         i += std::size_t(blockDim.x) * gridDim.x) {
        const float g = grad[i];
        const float mi = s.beta1 * m[i] + (1 - s.beta1) * g;
        const float vi = s.beta2 * v[i] + (1 - s.beta2) * g * g;
        m[i] = mi;
        v[i] = vi;
        w[i] = w[i] * (1 - s.lr * decay[i]) - step_size * mi / (sqrtf(vi) / s.sqrt_bias_correction2 + s.eps);
    }
}
}  // namespace

void adamw_step_cuda(const DeviceArrays& state, float* w, const float* grad, const AdamStep& s, void* stream) {
    const unsigned blocks = unsigned(std::min<std::size_t>((state.count + 255) / 256, 4096));
    adamw<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(w, grad, state["exp_avg"], state["exp_avg_sq"],
                                                                 state["decay"], state.count, s);
    check_cuda(cudaGetLastError(), "optimizer adamw (cuda)", "kernel launch");
}

}  // namespace tessera::plugins::optimizers
