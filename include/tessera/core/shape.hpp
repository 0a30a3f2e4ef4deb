#pragma once
// Shape of an activation tensor. Activations are NHWC everywhere: channels innermost, so a 1x1
// convolution is one plain GEMM over (N*H*W, C) and the layout matches what tensor cores want.
#include <cstddef>
#include <string>

namespace tessera {

struct Shape {
    int n = 0, h = 0, w = 0, c = 0;

    std::size_t size() const { return std::size_t(n) * h * w * c; }
    std::size_t pixels() const { return std::size_t(n) * h * w; }  // rows of the (N*H*W, C) view
    friend bool operator==(const Shape&, const Shape&) = default;

    std::string str() const {
        // Appended piece by piece: GCC 12 warns (-Wrestrict, a false positive) on "(" + std::string.
        std::string s = "(";
        for (int d : {n, h, w}) {
            s += std::to_string(d);
            s += ", ";
        }
        s += std::to_string(c);
        s += ')';
        return s;
    }
};

// A convolution's static geometry; "same" padding (kernel / 2) as torchvision's ResNets use.
struct ConvGeometry {
    int in_channels, out_channels, kernel, stride, pad;

    int out_size(int in) const { return (in + 2 * pad - kernel) / stride + 1; }
    Shape output_shape(Shape x) const { return {x.n, out_size(x.h), out_size(x.w), out_channels}; }
    std::size_t patch() const { return std::size_t(kernel) * kernel * in_channels; }  // K
    bool is_pointwise() const { return kernel == 1 && stride == 1 && pad == 0; }
};

// A pooling window.
struct PoolGeometry {
    int kernel, stride, pad;
    int out_size(int in) const { return (in + 2 * pad - kernel) / stride + 1; }
    Shape output_shape(Shape x) const { return {x.n, out_size(x.h), out_size(x.w), x.c}; }
};

// A batch normalisation's parameters and running statistics (C floats each).
struct BatchNormParams {
    const float* gamma;
    const float* beta;
    float* running_mean;
    float* running_var;
    float eps = 1e-5f, momentum = 0.1f;
};

// Statistics saved by the training forward pass for backward: per channel, C floats each.
struct BatchNormSaved {
    float* mean;
    float* inv_std;
};

}  // namespace tessera
