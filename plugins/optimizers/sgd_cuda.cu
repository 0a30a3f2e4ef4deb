// The sgd plugin's step on the GPU: one fused pass over the flat buffers, on the trainer's stream.
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <string>

#include "tessera/core/error.hpp"
#include "sgd_cuda.hpp"

namespace tessera::plugins::optimizers {

namespace {
__global__ void step(float* w, const float* grad, float* velocity, const float* decay, std::size_t n, float lr,
                     float momentum, bool nesterov) {
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < n;
         i += std::size_t(blockDim.x) * gridDim.x) {
        const float g = grad[i] + decay[i] * w[i];
        const float v = momentum * velocity[i] + g;
        velocity[i] = v;
        w[i] -= lr * (nesterov ? g + momentum * v : v);
    }
}

void check(cudaError_t status, const char* what) {
    if (status != cudaSuccess)
        throw tessera::internal_error("optimizer sgd (cuda)", std::string(what) + ": " + cudaGetErrorString(status));
}
}  // namespace

DeviceState::DeviceState(const std::vector<float>& decay, const std::vector<float>& start) : count(decay.size()) {
    check(cudaMalloc(&velocity, count * sizeof(float)), "cudaMalloc");
    check(cudaMalloc(&this->decay, count * sizeof(float)), "cudaMalloc");
    if (start.size() == count)
        check(cudaMemcpy(velocity, start.data(), count * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    else
        check(cudaMemset(velocity, 0, count * sizeof(float)), "cudaMemset");
    check(cudaMemcpy(this->decay, decay.data(), count * sizeof(float), cudaMemcpyHostToDevice), "cudaMemcpy");
    // The copies and fill above ran on the legacy default stream, which the trainer's non-blocking
    // stream does not wait for: finish them before the first update reads the state.
    check(cudaDeviceSynchronize(), "cudaDeviceSynchronize");
}

DeviceState::~DeviceState() {
    cudaFree(velocity);
    cudaFree(decay);
}

std::vector<float> DeviceState::download() const {
    std::vector<float> host(count);
    check(cudaStreamSynchronize(static_cast<cudaStream_t>(last_stream)), "cudaStreamSynchronize");
    check(cudaMemcpy(host.data(), velocity, count * sizeof(float), cudaMemcpyDeviceToHost), "cudaMemcpy");
    return host;
}

void DeviceState::step(float* w, const float* grad, float lr, float momentum, bool nesterov, void* stream) {
    last_stream = stream;
    const unsigned blocks = unsigned(std::min<std::size_t>((count + 255) / 256, 4096));
    ::tessera::plugins::optimizers::step<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(
        w, grad, velocity, decay, count, lr, momentum, nesterov);
    check(cudaGetLastError(), "sgd kernel launch");
}

}  // namespace tessera::plugins::optimizers
