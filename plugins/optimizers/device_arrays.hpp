#pragma once
// DeviceArrays: an optimizer's state on the GPU, named float arrays of the parameters' length
// (device_arrays.cu, compiled into the optimizer modules that step on CUDA).
#include <cstddef>
#include <map>
#include <string>
#include <vector>

namespace tessera::plugins::optimizers {

class DeviceArrays {
public:
    /// Arrays `names` of `count` floats each, from `start` where it holds them, else zeros; and
    /// `constants`, uploaded once (a weight decay per value, …).
    DeviceArrays(std::size_t count, const std::vector<std::string>& names,
                 const std::map<std::string, std::vector<float>>& start,
                 const std::map<std::string, std::vector<float>>& constants = {});
    ~DeviceArrays();
    DeviceArrays(const DeviceArrays&) = delete;
    DeviceArrays& operator=(const DeviceArrays&) = delete;

    float* operator[](const std::string& name) const { return arrays_.at(name); }
    /// Device memory of `bytes` for the optimizer's own scratch (per-tensor sums, tables).
    void* scratch(std::size_t bytes);
    /// The named state arrays (not the constants), on the host once `stream`'s work is done.
    std::map<std::string, std::vector<float>> download(void* stream) const;

    const std::size_t count;

private:
    std::vector<std::string> state_names_;
    std::map<std::string, float*> arrays_;
    void* scratch_ = nullptr;
    std::size_t scratch_bytes_ = 0;
};

/// Throws tessera's internal error for a failed CUDA call of `who`.
void check_cuda(int status, const char* who, const char* what);

}  // namespace tessera::plugins::optimizers
