#pragma once
// The sgd plugin's GPU state and step (sgd_cuda.cu), present when tessera is built with CUDA.
#include <cstddef>
#include <vector>

namespace tessera::plugins::optimizers {

struct DeviceState {
    /// The weight decay of each parameter, and the momentum to start from (empty: zeros).
    DeviceState(const std::vector<float>& decay, const std::vector<float>& velocity);
    ~DeviceState();
    DeviceState(const DeviceState&) = delete;
    DeviceState& operator=(const DeviceState&) = delete;
    void step(float* w, const float* grad, float lr, float momentum, bool nesterov, void* stream);
    /// The momentum, copied to the host once the last step's stream is done.
    std::vector<float> download() const;

    std::size_t count = 0;
    float* velocity = nullptr;
    float* decay = nullptr;
    void* last_stream = nullptr;
};

}  // namespace tessera::plugins::optimizers
