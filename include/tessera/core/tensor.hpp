#pragma once
// Tensor: a non-owning view of data with an NHWC shape. Memory belongs to an Arena (activations)
// or to the model's flat parameter buffers; a Tensor never frees anything.
//
// The CPU computes in fp32. On the GPU, activations may be bf16 or fp16 (mixed precision: the
// weights, their gradients and every statistic stay fp32); `dtype` says which, and `data` is then
// only a handle to 2-byte values, which the CUDA kernels read through as<T>().
#include <cstdint>
#include <span>
#include <string>

#include "tessera/core/shape.hpp"

namespace tessera {

enum class DType : std::uint8_t { f32, bf16, f16 };

constexpr std::size_t element_bytes(DType t) { return t == DType::f32 ? 4 : 2; }
inline std::string dtype_name(DType t) { return t == DType::f32 ? "fp32" : t == DType::bf16 ? "bf16" : "fp16"; }

struct Tensor {
    float* data = nullptr;
    Shape shape;
    DType dtype = DType::f32;

    std::size_t size() const { return shape.size(); }
    std::size_t bytes() const { return size() * element_bytes(dtype); }
    std::span<float> span() const { return {data, size()}; }                // fp32 tensors
    float* row(std::size_t pixel) const { return data + pixel * shape.c; }  // one pixel's channels (fp32)
    template <class T>
    T* as() const {
        return reinterpret_cast<T*>(data);
    }
};

}  // namespace tessera
