#pragma once
// The GPU steps of the adamw and lars plugins (adamw_cuda.cu, lars_cuda.cu): each step's numbers
// and the launchers, which queue the work on the trainer's stream.
#include <cstddef>
#include <cstdint>

#include "device_arrays.hpp"

namespace tessera::plugins::optimizers {

/// One AdamW step's numbers, the same for every value.
struct AdamStep {
    float lr, beta1, beta2, eps, bias_correction1, sqrt_bias_correction2;
};

/// One tensor of the flat buffers, as LARS treats it: its own trust ratio, or none (BN, biases).
struct LarsTensor {
    std::uint64_t offset, size;
    float weight_decay;
    int adapt;  // 1: trust ratio and weight decay; 0: plain momentum SGD at the base rate
};

struct LarsStep {
    float lr, momentum, eeta, epsilon;
    int nesterov;
};

/// Host bytes to device memory (synchronously: once, when the state is made).
void upload_bytes(void* device, const void* host, std::size_t bytes);
void adamw_step_cuda(const DeviceArrays& state, float* w, const float* grad, const AdamStep& s, void* stream);
/// `tensors` lives in device memory (count of them); `sums` has room for 2 doubles per tensor.
void lars_step_cuda(const DeviceArrays& state, float* w, const float* grad, const LarsTensor* tensors, int count,
                    double* sums, std::size_t largest, const LarsStep& s, void* stream);

}  // namespace tessera::plugins::optimizers
