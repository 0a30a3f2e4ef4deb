#pragma once
// Bilinear resampling with antialiasing, computed exactly as PIL's Image.resize(size, BILINEAR, box)
// (Pillow's Resample.c): a triangle filter widened by the scale factor when shrinking, weights in
// 22-bit fixed point, a horizontal pass then a vertical one, each rounded to 8 bits. torchvision's
// Resize, CenterCrop and RandomResizedCrop on PIL images come down to this, so the pixels match.
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "tessera/core/error.hpp"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace tessera::data {

/// A view of 8-bit RGB pixels: `width` x `height`, rows `stride` bytes apart, which are pixels
/// [x0, x0 + width) x [y0, y0 + height) of the image that boxes refer to (of `image_width` x
/// `image_height`; 0: the view is the whole image).
struct RgbView {
    const std::uint8_t* data = nullptr;
    int width = 0, height = 0;
    std::size_t stride = 0;
    int x0 = 0, y0 = 0, image_width = 0, image_height = 0;
    const std::uint8_t* row(int y) const { return data + std::size_t(y - y0) * stride; }
    int full_width() const { return image_width ? image_width : width; }
    int full_height() const { return image_height ? image_height : height; }
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

// The vertical pass, a plain loop the compiler vectorises, is compiled twice, for AVX2 (eight
// 32-bit products at once) and for the baseline, and the first call picks one for this machine.
// The horizontal pass needs its lanes arranged by hand (below).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define TESSERA_RESAMPLE_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define TESSERA_RESAMPLE_CLONES
#endif

inline std::uint8_t clip8(std::int32_t v) {
    if (v >= (1 << resample_precision_bits << 8)) return 255;
    if (v <= 0) return 0;
    return std::uint8_t(v >> resample_precision_bits);
}

/// One row through the horizontal taps, outputs [from, to); `in` is the row's pixel x0.
inline void horizontal_pass_scalar(const std::uint8_t* in, int x0, const Taps& across, int from, int to,
                                   std::uint8_t* out) {
    for (int o = from; o < to; ++o) {
        const std::int32_t* k = &across.weights[std::size_t(o) * across.size];
        const std::uint8_t* p = in + std::size_t(across.first[o] - x0) * 3;
        std::int32_t r = 1 << (resample_precision_bits - 1), g = r, b = r;
        for (int t = 0; t < across.count[o]; ++t, p += 3) {
            r += p[0] * k[t];
            g += p[1] * k[t];
            b += p[2] * k[t];
        }
        out[3 * o] = clip8(r);
        out[3 * o + 1] = clip8(g);
        out[3 * o + 2] = clip8(b);
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
// The same sums, two output pixels per 256-bit register: each pixel's bytes widened to four int32
// lanes (R, G, B and a byte ignored), times the tap's weight, added up. The shorter of the two tap
// lists is padded with its zero weights. Identical results: the same integer products and sums.
// Pixels are read four bytes at a time, so outputs whose taps reach the row's last pixel go
// through the scalar loop.
__attribute__((target("avx2"))) inline void horizontal_pass_avx2(const std::uint8_t* in, int x0, int x1,
                                                                 const Taps& across, int w, std::uint8_t* out) {
    int end = w;
    while (end > 0 && across.first[end - 1] + across.size >= x1) --end;
    end -= end % 2;
    horizontal_pass_scalar(in, x0, across, end, w, out);
    const __m256i half = _mm256_set1_epi32(1 << (resample_precision_bits - 1));
    auto four_bytes = [](const std::uint8_t* p) {
        std::int32_t v;
        std::memcpy(&v, p, 4);
        return _mm_cvtsi32_si128(v);
    };
    for (int o = 0; o < end; o += 2) {
        const std::int32_t* k0 = &across.weights[std::size_t(o) * across.size];
        const std::int32_t* k1 = k0 + across.size;
        const std::uint8_t* p0 = in + std::size_t(across.first[o] - x0) * 3;
        const std::uint8_t* p1 = in + std::size_t(across.first[o + 1] - x0) * 3;
        const int taps = std::max(across.count[o], across.count[o + 1]);
        __m256i acc = half;
        for (int t = 0; t < taps; ++t) {
            const __m256i pixels =
                _mm256_cvtepu8_epi32(_mm_unpacklo_epi32(four_bytes(p0 + 3 * t), four_bytes(p1 + 3 * t)));
            const __m256i weights = _mm256_setr_m128i(_mm_set1_epi32(k0[t]), _mm_set1_epi32(k1[t]));
            acc = _mm256_add_epi32(acc, _mm256_mullo_epi32(pixels, weights));
        }
        alignas(32) std::int32_t v[8];
        _mm256_store_si256(reinterpret_cast<__m256i*>(v), acc);
        for (int c = 0; c < 3; ++c) {
            out[3 * o + c] = clip8(v[c]);
            out[3 * o + 3 + c] = clip8(v[4 + c]);
        }
    }
}
#endif

/// One row through the horizontal taps: `w` RGB output pixels from the row's pixels [x0, x1),
/// which start at `in`.
inline void horizontal_pass(const std::uint8_t* in, int x0, int x1, const Taps& across, int w, std::uint8_t* out) {
#if defined(__x86_64__) && defined(__GNUC__)
    static const bool avx2 = __builtin_cpu_supports("avx2");
    if (avx2) return horizontal_pass_avx2(in, x0, x1, across, w, out);
#endif
    horizontal_pass_scalar(in, x0, across, 0, w, out);
}

/// One output row from `count` rows of the horizontal result (`stride` bytes apart, starting at
/// `in`), weighted by `k`; mirrored left to right if `mirror`.
TESSERA_RESAMPLE_CLONES
inline void vertical_pass(const std::uint8_t* in, std::size_t stride, const std::int32_t* k, int count,
                          std::int32_t* acc, std::uint8_t* out, int w, bool mirror) {
    const std::size_t n = std::size_t(w) * 3;
    for (std::size_t i = 0; i < n; ++i) acc[i] = 1 << (resample_precision_bits - 1);
    for (int t = 0; t < count; ++t) {
        const std::uint8_t* row = in + std::size_t(t) * stride;
        const std::int32_t weight = k[t];
        for (std::size_t i = 0; i < n; ++i) acc[i] += row[i] * weight;
    }
    if (!mirror) {
        for (std::size_t i = 0; i < n; ++i) out[i] = clip8(acc[i]);
        return;
    }
    for (int x = 0; x < w; ++x)
        for (int c = 0; c < 3; ++c) out[std::size_t(w - 1 - x) * 3 + c] = clip8(acc[std::size_t(x) * 3 + c]);
}

}  // namespace detail

/// The part of a resize that is wanted: output pixels [x, x + w) x [y, y + h) of an out_width x
/// out_height result. Computing only a window is what makes Resize + CenterCrop cheap.
struct ResizeWindow {
    int out_width = 0, out_height = 0;
    int x = 0, y = 0, w = 0, h = 0;
};

/// Resizes as PIL does; holds the scratch rows between the two passes.
class Resampler {
public:
    /// Resizes `box` of `src` and writes the window `win` of the result to `dst` (rows `dst_stride`
    /// bytes apart), mirrored left to right if `mirror`.
    void resize(const RgbView& src, Box box, const ResizeWindow& win, std::uint8_t* dst, std::size_t dst_stride,
                bool mirror = false) {
        const Taps across = taps_across(src, box, win), down = taps_down(src, box, win);
        TESSERA_CHECK(covers(src, across, down), "the view lacks pixels the resize reads");
        // The horizontal pass covers only the rows the vertical pass reads.
        int row_lo = src.full_height(), row_hi = 0;
        for (int o = 0; o < win.h; ++o) {
            if (down.count[o] == 0) continue;
            row_lo = std::min(row_lo, down.first[o]);
            row_hi = std::max(row_hi, down.first[o] + down.count[o]);
        }
        if (row_lo >= row_hi) row_lo = row_hi = src.y0;
        const std::size_t tmp_stride = std::size_t(win.w) * 3;
        tmp_.resize(std::size_t(row_hi - row_lo) * tmp_stride);
        for (int y = row_lo; y < row_hi; ++y)
            detail::horizontal_pass(src.row(y), src.x0, src.x0 + src.width, across, win.w,
                                    tmp_.data() + std::size_t(y - row_lo) * tmp_stride);
        acc_.resize(tmp_stride);
        for (int o = 0; o < win.h; ++o) {
            const std::uint8_t* first =
                tmp_.data() + (down.count[o] ? std::size_t(down.first[o] - row_lo) * tmp_stride : 0);
            detail::vertical_pass(first, tmp_stride, &down.weights[std::size_t(o) * down.size], down.count[o],
                                  acc_.data(), dst + std::size_t(o) * dst_stride, win.w, mirror);
        }
    }

    /// The source pixels resize() reads for `box` and `win`, in the coordinates of the whole image
    /// of `width` x `height`: decode only these.
    static Box source_needed(int width, int height, Box box, const ResizeWindow& win) {
        const RgbView whole{nullptr, width, height, 0};
        const Taps across = taps_across(whole, box, win), down = taps_down(whole, box, win);
        auto span = [](const Taps& t, int n) {
            int lo = INT32_MAX, hi = 0;
            for (int o = 0; o < n; ++o)
                if (t.count[o]) lo = std::min(lo, t.first[o]), hi = std::max(hi, t.first[o] + t.count[o]);
            return lo < hi ? std::pair{lo, hi} : std::pair{0, 0};
        };
        const auto [x0, x1] = span(across, win.w);
        const auto [y0, y1] = span(down, win.h);
        return {double(x0), double(y0), double(x1), double(y1)};
    }

private:
    using Taps = detail::Taps;
    static Taps taps_across(const RgbView& src, Box box, const ResizeWindow& win) {
        return detail::bilinear_taps(src.full_width(), box.x0, box.x1, win.out_width, win.x, win.x + win.w);
    }
    static Taps taps_down(const RgbView& src, Box box, const ResizeWindow& win) {
        return detail::bilinear_taps(src.full_height(), box.y0, box.y1, win.out_height, win.y, win.y + win.h);
    }
    static bool covers(const RgbView& src, const Taps& across, const Taps& down) {
        for (const auto* t : {&across, &down}) {
            const int lo = t == &across ? src.x0 : src.y0, hi = lo + (t == &across ? src.width : src.height);
            for (std::size_t o = 0; o < t->first.size(); ++o)
                if (t->count[o] && (t->first[o] < lo || t->first[o] + t->count[o] > hi)) return false;
        }
        return true;
    }

private:
    std::vector<std::uint8_t> tmp_;
    std::vector<std::int32_t> acc_;
};

}  // namespace tessera::data
