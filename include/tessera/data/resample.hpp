#pragma once
// Bilinear resampling with antialiasing, computed exactly as PIL's Image.resize(size, BILINEAR, box)
// (Pillow's Resample.c): a triangle filter widened by the scale factor when shrinking, weights in
// 22-bit fixed point, a horizontal pass then a vertical one, each rounded to 8 bits. torchvision's
// Resize, CenterCrop and RandomResizedCrop on PIL images come down to this, so the pixels match.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace tessera::data {

/// A view of 8-bit RGB pixels: `width` x `height`, rows `stride` bytes apart.
struct RgbView {
    const std::uint8_t* data = nullptr;
    int width = 0, height = 0;
    std::size_t stride = 0;
    const std::uint8_t* row(int y) const { return data + std::size_t(y) * stride; }
};

/// A rectangle in source pixels, possibly fractional (left, top, right, bottom).
struct Box {
    double x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};

namespace detail {

inline constexpr int resample_precision_bits = 32 - 8 - 2;

/// For each output pixel of one axis: the first input pixel, the number of taps, and their weights.
struct Taps {
    int size = 0;  // weights per output pixel
    std::vector<int> first, count;
    std::vector<std::int32_t> weights;
};

// Pillow's precompute_coeffs + normalize_coeffs_8bpc for the bilinear filter, for outputs [from, to).
inline Taps bilinear_taps(int in_size, double in0, double in1, int out_size, int from, int to) {
    const double scale = (in1 - in0) / out_size;
    const double filter_scale = std::max(scale, 1.0);
    const double support = 1.0 * filter_scale;
    Taps t;
    t.size = int(std::ceil(support)) * 2 + 1;
    t.first.resize(to - from);
    t.count.resize(to - from);
    t.weights.assign(std::size_t(to - from) * t.size, 0);
    std::vector<double> w(t.size);
    for (int o = from; o < to; ++o) {
        const double center = in0 + (o + 0.5) * scale;
        const int lo = std::max(int(center - support + 0.5), 0);
        const int hi = std::min(int(center + support + 0.5), in_size);
        double total = 0;
        for (int x = 0; x < hi - lo; ++x) {
            const double d = std::abs((x + lo - center + 0.5) / filter_scale);
            w[x] = d < 1 ? 1 - d : 0;
            total += w[x];
        }
        std::int32_t* k = &t.weights[std::size_t(o - from) * t.size];
        for (int x = 0; x < hi - lo; ++x) {
            const double v = (total != 0 ? w[x] / total : w[x]) * (1 << resample_precision_bits);
            k[x] = std::int32_t(v < 0 ? v - 0.5 : v + 0.5);
        }
        t.first[o - from] = lo;
        t.count[o - from] = std::max(hi - lo, 0);
    }
    return t;
}

inline std::uint8_t clip8(std::int32_t v) {
    if (v >= (1 << resample_precision_bits << 8)) return 255;
    if (v <= 0) return 0;
    return std::uint8_t(v >> resample_precision_bits);
}

}  // namespace detail

/// Resizes `box` of `src` to out_width x out_height as PIL does, and writes the output pixels
/// [x, x + w) x [y, y + h) of that result to `dst` (rows `dst_stride` bytes apart), mirrored left to
/// right if `mirror`. Computing only a window is what makes Resize + CenterCrop cheap.
struct ResizeWindow {
    int out_width = 0, out_height = 0;
    int x = 0, y = 0, w = 0, h = 0;
};

class Resampler {
public:
    void resize(const RgbView& src, Box box, const ResizeWindow& win, std::uint8_t* dst, std::size_t dst_stride,
                bool mirror = false) {
        const detail::Taps across = detail::bilinear_taps(src.width, box.x0, box.x1, win.out_width, win.x, win.x + win.w);
        const detail::Taps down = detail::bilinear_taps(src.height, box.y0, box.y1, win.out_height, win.y, win.y + win.h);
        // The horizontal pass covers only the rows the vertical pass reads.
        int row_lo = src.height, row_hi = 0;
        for (int o = 0; o < win.h; ++o) {
            if (down.count[o] == 0) continue;
            row_lo = std::min(row_lo, down.first[o]);
            row_hi = std::max(row_hi, down.first[o] + down.count[o]);
        }
        if (row_lo >= row_hi) row_lo = row_hi = 0;
        const std::size_t tmp_stride = std::size_t(win.w) * 3;
        tmp_.resize(std::size_t(row_hi - row_lo) * tmp_stride);
        for (int y = row_lo; y < row_hi; ++y) {
            const std::uint8_t* in = src.row(y);
            std::uint8_t* out = tmp_.data() + std::size_t(y - row_lo) * tmp_stride;
            for (int o = 0; o < win.w; ++o) {
                const std::int32_t* k = &across.weights[std::size_t(o) * across.size];
                const std::uint8_t* p = in + std::size_t(across.first[o]) * 3;
                std::int32_t r = 1 << (detail::resample_precision_bits - 1), g = r, b = r;
                for (int t = 0; t < across.count[o]; ++t, p += 3) {
                    r += p[0] * k[t];
                    g += p[1] * k[t];
                    b += p[2] * k[t];
                }
                out[3 * o] = detail::clip8(r);
                out[3 * o + 1] = detail::clip8(g);
                out[3 * o + 2] = detail::clip8(b);
            }
        }
        for (int o = 0; o < win.h; ++o) {
            const std::int32_t* k = &down.weights[std::size_t(o) * down.size];
            std::uint8_t* out = dst + std::size_t(o) * dst_stride;
            acc_.assign(tmp_stride, 1 << (detail::resample_precision_bits - 1));
            for (int t = 0; t < down.count[o]; ++t) {
                const std::uint8_t* in = tmp_.data() + std::size_t(down.first[o] + t - row_lo) * tmp_stride;
                const std::int32_t weight = k[t];
                for (std::size_t i = 0; i < tmp_stride; ++i) acc_[i] += in[i] * weight;
            }
            if (!mirror) {
                for (std::size_t i = 0; i < tmp_stride; ++i) out[i] = detail::clip8(acc_[i]);
            } else {
                for (int x = 0; x < win.w; ++x)
                    for (int c = 0; c < 3; ++c) out[std::size_t(win.w - 1 - x) * 3 + c] = detail::clip8(acc_[std::size_t(x) * 3 + c]);
            }
        }
    }

private:
    std::vector<std::uint8_t> tmp_;
    std::vector<std::int32_t> acc_;
};

}  // namespace tessera::data
