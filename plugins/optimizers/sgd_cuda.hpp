#pragma once
// The sgd plugin's GPU state and step (sgd_cuda.cu), present when tessera is built with CUDA.
#include <cstddef>
#include <vector>

namespace tessera_sgd {

struct DeviceState {
    explicit DeviceState(const std::vector<float>& decay);  // the weight decay of each parameter
    ~DeviceState();
    DeviceState(const DeviceState&) = delete;
    DeviceState& operator=(const DeviceState&) = delete;
    void step(float* w, const float* grad, float lr, float momentum, bool nesterov, void* stream);

    std::size_t count = 0;
    float* velocity = nullptr;
    float* decay = nullptr;
};

}  // namespace tessera_sgd
