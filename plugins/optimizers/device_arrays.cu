// DeviceArrays: allocation, upload and download of an optimizer's GPU state.
#include <cuda_runtime.h>

#include <string>

#include "device_arrays.hpp"
#include "tessera/core/error.hpp"

namespace tessera::plugins::optimizers {

void check_cuda(int status, const char* who, const char* what) {
    if (status != cudaSuccess)
        throw tessera::internal_error(who,
                                      std::string(what) + ": " + cudaGetErrorString(static_cast<cudaError_t>(status)));
}

namespace {
float* upload(std::size_t count, const std::vector<float>* from) {
    float* device = nullptr;
    check_cuda(cudaMalloc(&device, count * sizeof(float)), "optimizer state", "cudaMalloc");
    if (from && from->size() == count)
        check_cuda(cudaMemcpy(device, from->data(), count * sizeof(float), cudaMemcpyHostToDevice), "optimizer state",
                   "cudaMemcpy");
    else
        check_cuda(cudaMemset(device, 0, count * sizeof(float)), "optimizer state", "cudaMemset");
    return device;
}
}  // namespace

DeviceArrays::DeviceArrays(std::size_t n, const std::vector<std::string>& names,
                           const std::map<std::string, std::vector<float>>& start,
                           const std::map<std::string, std::vector<float>>& constants)
    : count(n), state_names_(names) {
    for (auto& name : names) {
        auto it = start.find(name);
        arrays_[name] = upload(count, it == start.end() ? nullptr : &it->second);
    }
    for (auto& [name, values] : constants) arrays_[name] = upload(count, &values);
    // The copies and fills above ran on the legacy default stream, which the trainer's non-blocking
    // stream does not wait for: finish them before the first step's update reads the state.
    check_cuda(cudaDeviceSynchronize(), "optimizer state", "cudaDeviceSynchronize");
}

DeviceArrays::~DeviceArrays() {
    for (auto& [name, p] : arrays_) cudaFree(p);
    cudaFree(scratch_);
}

void* DeviceArrays::scratch(std::size_t bytes) {
    if (bytes > scratch_bytes_) {
        cudaFree(scratch_);
        check_cuda(cudaMalloc(&scratch_, bytes), "optimizer state", "cudaMalloc");
        scratch_bytes_ = bytes;
    }
    return scratch_;
}

std::map<std::string, std::vector<float>> DeviceArrays::download(void* stream) const {
    check_cuda(cudaStreamSynchronize(static_cast<cudaStream_t>(stream)), "optimizer state", "cudaStreamSynchronize");
    std::map<std::string, std::vector<float>> host;
    for (auto& name : state_names_) {
        auto& v = host[name];
        v.resize(count);
        check_cuda(cudaMemcpy(v.data(), arrays_.at(name), count * sizeof(float), cudaMemcpyDeviceToHost),
                   "optimizer state", "cudaMemcpy");
    }
    return host;
}

}  // namespace tessera::plugins::optimizers
