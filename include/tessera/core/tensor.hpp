#pragma once
// Tensor: a non-owning view of fp32 data with an NHWC shape. Memory belongs to an Arena (activations)
// or to the model's flat parameter buffers; a Tensor never frees anything.
#include <span>

#include "tessera/core/shape.hpp"

namespace tessera {

struct Tensor {
    float* data = nullptr;
    Shape shape;

    std::size_t size() const { return shape.size(); }
    std::span<float> span() const { return {data, size()}; }
    float* row(std::size_t pixel) const { return data + pixel * shape.c; }  // one pixel's channels
};

}  // namespace tessera
