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

}  // namespace tessera
