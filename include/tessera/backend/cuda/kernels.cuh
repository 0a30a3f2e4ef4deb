#pragma once
// What every kernel file of the CUDA backend shares: the launch shape, the element types (float,
// __nv_bfloat16, __half; every kernel computes in float), the dispatch from a DType to its element
// type, and the launch macro.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <string>
#include <type_traits>

#include "tessera/backend/cuda/backend.hpp"
#include "tessera/backend/cuda/check.hpp"

namespace tessera::cuda {

namespace kernels {

constexpr int threads = 256;
inline unsigned blocks_for(std::size_t n) {
    return unsigned(std::min<std::size_t>((n + threads - 1) / threads, 65535 * 8));
}

#define TESSERA_GRID_STRIDE(i, n)                                                     \
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < (n); \
         i += std::size_t(blockDim.x) * gridDim.x)

// ---- element types ----
// Activations are float, __nv_bfloat16 or __half (Tensor::dtype); every kernel computes in float.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v) {
    if constexpr (std::is_same_v<T, float>)
        return v;
    else if constexpr (std::is_same_v<T, __nv_bfloat16>)
        return __float2bfloat16(v);  // round to nearest even
    else
        return __float2half(v);
}

}  // namespace kernels

namespace detail {

// Calls f with a value of the element type of dtype: float, __nv_bfloat16 or __half.
template <class F>
void with_element_type(DType dtype, F&& f) {
    switch (dtype) {
        case DType::f32:
            return f(float{});
        case DType::bf16:
            return f(__nv_bfloat16{});
        case DType::f16:
            return f(__half{});
    }
}

inline void same_type(const Tensor& a, const Tensor& b, const char* op) {
    TESSERA_CHECK(a.dtype == b.dtype,
                  std::string(op) + ": a " + dtype_name(a.dtype) + " tensor meets a " + dtype_name(b.dtype) + " one");
}

}  // namespace detail

// A grid-stride kernel over n values, on the context's stream.
#define TESSERA_LAUNCH(kernel, n, ...)                                                                          \
    do {                                                                                                        \
        if (n) kernels::kernel<<<kernels::blocks_for(n), kernels::threads, 0, ctx.impl->stream>>>(__VA_ARGS__); \
        TESSERA_CUDA(cudaGetLastError());                                                                       \
    } while (0)

}  // namespace tessera::cuda
