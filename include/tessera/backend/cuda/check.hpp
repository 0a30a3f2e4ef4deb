#pragma once
// Every CUDA, cuDNN and cuBLAS call is checked: a failure throws tessera::Error naming the call, the
// file and the line, and what the library said.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cudnn.h>

#include <string>

#include "tessera/core/error.hpp"

namespace tessera::cuda::detail {

inline std::string where(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

// Running out of device memory is the user's to fix (a smaller batch); anything else is ours.
inline Error failure(bool out_of_memory, const char* file, int line, const std::string& what) {
    return Error(
        out_of_memory ? Error::Kind::user : Error::Kind::internal, where(file, line), what,
        out_of_memory
            ? "the GPU has too little free memory for this batch: use a smaller batch_size, or device = \"cpu\""
            : "");
}
inline void check(cudaError_t status, const char* call, const char* file, int line) {
    if (status != cudaSuccess)
        throw failure(status == cudaErrorMemoryAllocation, file, line,
                      std::string(call) + " failed: " + cudaGetErrorString(status));
}
inline void check(cudnnStatus_t status, const char* call, const char* file, int line) {
    if (status != CUDNN_STATUS_SUCCESS)
        throw failure(status == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED, file, line,
                      std::string(call) + " failed: " + cudnnGetErrorString(status));
}
inline void check(cublasStatus_t status, const char* call, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS)
        throw failure(status == CUBLAS_STATUS_ALLOC_FAILED, file, line,
                      std::string(call) + " failed: " + cublasGetStatusString(status));
}

}  // namespace tessera::cuda::detail

#define TESSERA_CUDA(call) ::tessera::cuda::detail::check((call), #call, __FILE__, __LINE__)
