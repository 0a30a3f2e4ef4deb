#pragma once
// What every kernel file of the CUDA backend shares: the launch shape, the element types (float,
// __nv_bfloat16, __half; every kernel computes in float), the dispatch from a DType to its element
// type, and the launch macro.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
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

// V consecutive values as floats, and back: 16-byte accesses where V is 8 (one of 8 bf16 or fp16
// values, two of fp32). The caller sees that p is 16-byte aligned (vector_width).
template <int V, class T>
__device__ __forceinline__ void load(const T* p, float (&v)[V]) {
    if constexpr (V == 8 && std::is_same_v<T, float>) {
        const float4 a = reinterpret_cast<const float4*>(p)[0], b = reinterpret_cast<const float4*>(p)[1];
        v[0] = a.x, v[1] = a.y, v[2] = a.z, v[3] = a.w, v[4] = b.x, v[5] = b.y, v[6] = b.z, v[7] = b.w;
    } else if constexpr (V == 8) {
        const uint4 raw = *reinterpret_cast<const uint4*>(p);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int j = 0; j < 8; ++j) v[j] = to_float(e[j]);
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = to_float(p[j]);
    }
}
template <int V, class T>
__device__ __forceinline__ void store(T* p, const float (&v)[V]) {
    if constexpr (V == 8 && std::is_same_v<T, float>) {
        reinterpret_cast<float4*>(p)[0] = make_float4(v[0], v[1], v[2], v[3]);
        reinterpret_cast<float4*>(p)[1] = make_float4(v[4], v[5], v[6], v[7]);
    } else if constexpr (V == 8) {
        uint4 raw;
        T* e = reinterpret_cast<T*>(&raw);
#pragma unroll
        for (int j = 0; j < 8; ++j) e[j] = from_float<T>(v[j]);
        *reinterpret_cast<uint4*>(p) = raw;
    } else {
#pragma unroll
        for (int j = 0; j < V; ++j) p[j] = from_float<T>(v[j]);
    }
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

// 8 values per access where every tensor is 16-byte aligned and `multiple_of` is a multiple of 8
// (the values of a flat operation, or the channels of a per-channel one), else 1.
inline int vector_width(std::size_t multiple_of, std::initializer_list<const void*> tensors) {
    bool aligned = multiple_of % 8 == 0;
    for (const void* t : tensors) aligned = aligned && reinterpret_cast<std::uintptr_t>(t) % 16 == 0;
    return aligned ? 8 : 1;
}
// Calls f with the vector width as a compile-time constant (std::integral_constant).
template <class F>
void with_vector_width(int width, F&& f) {
    if (width == 8)
        f(std::integral_constant<int, 8>{});
    else
        f(std::integral_constant<int, 1>{});
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
