#pragma once
// Convolution weights between PyTorch's layout (OIHW: checkpoints, ONNX) and tessera's (OHWI: the
// kernels' channels-last memory). `d` gives the dimensions in OIHW order.
#include <cstddef>
#include <cstdint>
#include <vector>

namespace tessera {

inline void oihw_to_ohwi(const float* in, float* out, const std::vector<std::int64_t>& d) {
    const std::size_t o = d[0], i = d[1], h = d[2], w = d[3];
    for (std::size_t a = 0; a < o; ++a)
        for (std::size_t b = 0; b < i; ++b)
            for (std::size_t y = 0; y < h; ++y)
                for (std::size_t x = 0; x < w; ++x)
                    out[((a * h + y) * w + x) * i + b] = in[((a * i + b) * h + y) * w + x];
}

inline void ohwi_to_oihw(const float* in, float* out, const std::vector<std::int64_t>& d) {
    const std::size_t o = d[0], i = d[1], h = d[2], w = d[3];
    for (std::size_t a = 0; a < o; ++a)
        for (std::size_t b = 0; b < i; ++b)
            for (std::size_t y = 0; y < h; ++y)
                for (std::size_t x = 0; x < w; ++x)
                    out[((a * i + b) * h + y) * w + x] = in[((a * h + y) * w + x) * i + b];
}

}  // namespace tessera
