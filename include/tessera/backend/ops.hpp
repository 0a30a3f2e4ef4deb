#pragma once
// The words backends and layers share: a convolution's and a pooling window's geometry, a
// BatchNorm's parameters and the statistics its training forward saves, a loss's result. Layers
// say what to compute in these terms, and each backend computes it (backend/backend.hpp lists the
// kernels a backend provides). Nothing here knows of models, layers or any one backend.
#include <cstddef>
#include <cstdint>

#include "tessera/core/shape.hpp"

namespace tessera {

/// A convolution's static geometry; "same" padding (kernel / 2) as torchvision's ResNets use.
struct ConvGeometry {
    int in_channels, out_channels, kernel, stride, pad;

    int out_size(int in) const { return (in + 2 * pad - kernel) / stride + 1; }
    Shape output_shape(Shape x) const { return {x.n, out_size(x.h), out_size(x.w), out_channels}; }
    std::size_t patch() const { return std::size_t(kernel) * kernel * in_channels; }  // K
    bool is_pointwise() const { return kernel == 1 && stride == 1 && pad == 0; }
};

/// A pooling window.
struct PoolGeometry {
    int kernel, stride, pad;
    int out_size(int in) const { return (in + 2 * pad - kernel) / stride + 1; }
    Shape output_shape(Shape x) const { return {x.n, out_size(x.h), out_size(x.w), x.c}; }
};

/// A batch normalisation's parameters and running statistics (C floats each).
struct BatchNormParams {
    const float* gamma;
    const float* beta;
    float* running_mean;
    float* running_var;
    float eps = 1e-5f, momentum = 0.1f;
};

/// Statistics saved by the training forward pass for backward: per channel, C floats each.
struct BatchNormSaved {
    float* mean;
    float* inv_std;
};

/// A batch's softmax cross-entropy: the mean loss, and hits rather than fractions, so that batches
/// add up exactly.
struct LossResult {
    double loss = 0;
    std::int64_t top1 = 0;
    std::int64_t top5 = 0;
};

}  // namespace tessera
