#pragma once
// The filter gradient of a bf16 3x3 convolution with stride 1, by tessera's own AVX512-BF16 kernel:
// the quick start's 16-, 32- and 64-channel convolutions on CPUs without AMX, where oneDNN 2.6's
// jit_bf16 kernel ran well below the forward's rate (filter_gradient_calls in onednn_conv.hpp: the
// rule and its figures; on AMX oneDNN's tile kernels are 2x to 4x faster than this one).
//
// The filter gradient is a product whose sum runs over every output pixel of the batch:
//   dw[o][kh][kw][c] += sum over n, h, w of dy[n][h][w][o] * x[n][h+kh-1][w+kw-1][c]   (0 outside x)
// vdpbf16ps multiplies two pairs of bf16 values and adds both products to one fp32 lane, so the sum
// is taken two terms at a time. Here the two terms of a pair are the same pixel of two images, n and
// n+1, not two neighbouring pixels: every tap (kh, kw) of every pixel then reads its pairs with one
// plain load from one packed copy of x, with no im2col. Per pair of images, in cache:
//   xp[h][w][c]  = (x[n][h-1][w-1][c], x[n+1][h-1][w-1][c]), zero-padded by one pixel all round,
//   dyp[h][w][o] = (dy[n][h][w][o], dy[n+1][h][w][o]),
//   dw[o][kh][kw][c] += sum over h, w of dot(dyp[h][w][o], xp[h+kh][w+kw][c]).
// An odd batch's last image is paired with a zero image.
//
// The kernel keeps a tile of 8 output channels by 48 of dw's 9C columns (kh, kw, c) in 24 registers
// while it runs over the pixels of a group of image pairs: per pixel, 3 loads of x pairs, 8
// broadcasts of dy pairs and 24 vdpbf16ps. Each thread takes a contiguous share of the image pairs
// (Split) and sums into a copy of dw of its own; the copies are then added into dw in thread order,
// so the result does not depend on timing.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define TESSERA_HAS_PAIRED_FILTER_GRADIENT 1
#define TESSERA_AVX512_BF16 __attribute__((target("avx512f,avx512bw,avx512vl,avx512bf16")))
#else
#define TESSERA_HAS_PAIRED_FILTER_GRADIENT 0
#endif

#include "tessera/backend/cpu/openmp_threads.hpp"
#include "tessera/backend/ops.hpp"
#include "tessera/core/thread_pool.hpp"

namespace tessera::cpu {

#if TESSERA_HAS_PAIRED_FILTER_GRADIENT
namespace paired_detail {

constexpr int tile_rows = 8;     // output channels per tile
constexpr int tile_vectors = 3;  // columns per tile, in vectors of 16: 48 (kh, kw, c)

/// Memory on cache-line boundaries: the kernel's 64-byte loads and stores then never straddle two.
template <class T>
struct CacheLines {
    using value_type = T;
    CacheLines() = default;
    template <class U>
    CacheLines(const CacheLines<U>&) {}
    T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), std::align_val_t(64))); }
    void deallocate(T* p, std::size_t) { ::operator delete(p, std::align_val_t(64)); }
    bool operator==(const CacheLines&) const = default;
};

/// 16 bf16 values at p, each in the low half of a 32-bit lane. (The zero-masking forms here and in
/// pair_up: the plain _mm512_cvtepu16_epi32 and _mm512_slli_epi32 trip GCC 12's -Wmaybe-uninitialized.)
TESSERA_AVX512_BF16 inline __m512i to_low_halves(const std::uint16_t* p) {
    return _mm512_maskz_cvtepu16_epi32(0xffff, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}

/// out[i] = (a[i], b[i]) for i < count (a multiple of 16), b null: zeros.
TESSERA_AVX512_BF16 inline void pair_up(const std::uint16_t* a, const std::uint16_t* b, std::uint32_t* out,
                                        std::size_t count) {
    for (std::size_t i = 0; i < count; i += 16) {
        const __m512i high = b ? _mm512_maskz_slli_epi32(0xffff, to_low_halves(b + i), 16) : _mm512_setzero_si512();
        _mm512_storeu_si512(out + i, _mm512_or_si512(to_low_halves(a + i), high));
    }
}

/// The sizes of one image pair's packed tensors, in pairs.
struct Packed {
    int h, w, c, k;
    std::size_t x() const { return std::size_t(h + 2) * std::size_t(w + 2) * std::size_t(c); }
    std::size_t dy() const { return std::size_t(h) * std::size_t(w) * std::size_t(k); }
};

/// Packs images a and b (b null: a zero image) of x (H, W, C) and dy (H, W, K) into xp and dyp.
TESSERA_AVX512_BF16 inline void pack(const Packed& p, const std::uint16_t* xa, const std::uint16_t* xb,
                                     const std::uint16_t* dya, const std::uint16_t* dyb, std::uint32_t* xp,
                                     std::uint32_t* dyp) {
    const std::size_t row = std::size_t(p.w + 2) * std::size_t(p.c), image_row = std::size_t(p.w) * std::size_t(p.c);
    std::memset(xp, 0, row * sizeof(std::uint32_t));
    std::memset(xp + std::size_t(p.h + 1) * row, 0, row * sizeof(std::uint32_t));
    for (int h = 0; h < p.h; ++h) {
        std::uint32_t* out = xp + std::size_t(h + 1) * row;
        std::memset(out, 0, std::size_t(p.c) * sizeof(std::uint32_t));
        std::memset(out + row - std::size_t(p.c), 0, std::size_t(p.c) * sizeof(std::uint32_t));
        const std::size_t at = std::size_t(h) * image_row;
        pair_up(xa + at, xb ? xb + at : nullptr, out + p.c, image_row);
    }
    pair_up(dya, dyb, dyp, p.dy());
}

/// dw_tile[i][j] += sum over `pairs` packed image pairs and their pixels of dot(dyp[.][i], xp[. + tap_j][j]):
/// dyp points at the tile's first output channel, taps[v] at the first pair its vector v reads.
TESSERA_AVX512_BF16 inline void tile(const Packed& p, int pairs, const std::uint32_t* dyp,
                                     const std::uint32_t* const* taps, float* dw_tile, std::size_t dw_row) {
    __m512 acc[tile_rows][tile_vectors];
    for (auto& row : acc)
        for (auto& a : row) a = _mm512_setzero_ps();
    const std::size_t x_row = std::size_t(p.w + 2) * std::size_t(p.c);
    for (int pair = 0; pair < pairs; ++pair) {
        const std::uint32_t* dy_pair = dyp + std::size_t(pair) * p.dy();
        const std::size_t x_pair = std::size_t(pair) * p.x();
        for (int h = 0; h < p.h; ++h) {
            const std::uint32_t* dy_row = dy_pair + std::size_t(h) * std::size_t(p.w) * std::size_t(p.k);
            const std::size_t x_at = x_pair + std::size_t(h) * x_row;
            for (int w = 0; w < p.w; ++w) {
                __m512bh x[tile_vectors];
                for (int v = 0; v < tile_vectors; ++v)
                    x[v] = __m512bh(_mm512_loadu_si512(taps[v] + x_at + std::size_t(w) * std::size_t(p.c)));
                const std::uint32_t* dy = dy_row + std::size_t(w) * std::size_t(p.k);
                for (int i = 0; i < tile_rows; ++i) {
                    const __m512bh d = __m512bh(_mm512_set1_epi32(int(dy[i])));
                    for (int v = 0; v < tile_vectors; ++v) acc[i][v] = _mm512_dpbf16_ps(acc[i][v], d, x[v]);
                }
            }
        }
    }
    for (int i = 0; i < tile_rows; ++i)
        for (int v = 0; v < tile_vectors; ++v) {
            float* out = dw_tile + std::size_t(i) * dw_row + std::size_t(v) * 16;
            _mm512_storeu_ps(out, _mm512_add_ps(_mm512_loadu_ps(out), acc[i][v]));
        }
}

}  // namespace paired_detail

/// The filter gradient of one convolution at one input shape, with the buffers it packs into and the
/// threads' copies of dw, allocated once. The caller checks that the CPU has AVX512-BF16.
class PairedFilterGradient {
public:
    /// Whether it computes g's filter gradient: 3x3, stride 1, padding 1, channels in and out
    /// multiples of 16 (whole vectors and tiles).
    static bool fits(const ConvGeometry& g) {
        return g.kernel == 3 && g.stride == 1 && g.pad == 1 && g.in_channels % 16 == 0 && g.out_channels % 16 == 0;
    }

    PairedFilterGradient(const ConvGeometry& g, Shape x, int threads)
        : packed_{x.h, x.w, g.in_channels, g.out_channels}, batch_(x.n),
          split_(std::size_t((x.n + 1) / 2), std::size_t(std::max(1, threads)), 1),
          // Image pairs packed and run together: enough pixels per tile (about 256) that loading and
          // storing the tile's sums costs little, few enough that they stay in cache.
          group_(std::max(1, 256 / (x.h * x.w))), columns_(g.patch()), threads_(split_.chunks) {
        for (auto& t : threads_) {
            t.xp.resize(std::size_t(group_) * packed_.x());
            t.dyp.resize(std::size_t(group_) * packed_.dy());
            t.dw.resize(std::size_t(packed_.k) * columns_);
        }
    }

    /// dw (O, 3, 3, I; fp32) += the filter gradient of x (N, H, W, I) and dy (N, H, W, O), both bf16.
    void accumulate(const void* x, const void* dy, float* dw) {
        const auto* xs = static_cast<const std::uint16_t*>(x);
        const auto* dys = static_cast<const std::uint16_t*>(dy);
        OpenMpThreads(int(threads_.size())).parallel_for(threads_.size(), [&](std::size_t t0, std::size_t t1) {
            for (std::size_t t = t0; t < t1; ++t) share(t, xs, dys);
        });
        for (const Thread& t : threads_) add(t.dw.data(), dw, t.dw.size());
    }

private:
    struct Thread {  // each array's rows are whole cache lines: channels come in sixteens
        std::vector<std::uint32_t, paired_detail::CacheLines<std::uint32_t>> xp, dyp;
        std::vector<float, paired_detail::CacheLines<float>> dw;
    };

    // Thread t's share of the image pairs, into its own copy of dw.
    void share(std::size_t t, const std::uint16_t* x, const std::uint16_t* dy) {
        Thread& self = threads_[t];
        std::fill(self.dw.begin(), self.dw.end(), 0.f);
        const std::size_t x_image = std::size_t(packed_.h) * std::size_t(packed_.w) * std::size_t(packed_.c),
                          dy_image = std::size_t(packed_.h) * std::size_t(packed_.w) * std::size_t(packed_.k);
        for (std::size_t first = split_.begin(t); first < split_.end(t); first += std::size_t(group_)) {
            const int pairs = int(std::min(std::size_t(group_), split_.end(t) - first));
            for (int i = 0; i < pairs; ++i) {
                const std::size_t a = 2 * (first + std::size_t(i)), b = a + 1;
                const bool has_b = b < std::size_t(batch_);
                paired_detail::pack(packed_, x + a * x_image, has_b ? x + b * x_image : nullptr, dy + a * dy_image,
                                    has_b ? dy + b * dy_image : nullptr, self.xp.data() + std::size_t(i) * packed_.x(),
                                    self.dyp.data() + std::size_t(i) * packed_.dy());
            }
            run(pairs, self);
        }
    }

    // The tiles of dw over `pairs` packed image pairs.
    void run(int pairs, Thread& self) const {
        using namespace paired_detail;
        const std::size_t c = std::size_t(packed_.c), x_row = std::size_t(packed_.w + 2) * c;
        for (std::size_t column = 0; column < columns_; column += tile_vectors * 16) {
            const std::uint32_t* taps[tile_vectors];
            for (int v = 0; v < tile_vectors; ++v) {  // column = (kh * 3 + kw) * C + channel
                const std::size_t at = column + std::size_t(v) * 16, tap = at / c;
                taps[v] = self.xp.data() + (tap / 3) * x_row + (tap % 3) * c + at % c;
            }
            for (int o = 0; o < packed_.k; o += tile_rows)
                tile(packed_, pairs, self.dyp.data() + o, taps, self.dw.data() + std::size_t(o) * columns_ + column,
                     columns_);
        }
    }

    TESSERA_AVX512_BF16 static void add(const float* from, float* to, std::size_t n) {
        for (std::size_t i = 0; i < n; ++i) to[i] += from[i];
    }

    paired_detail::Packed packed_;
    int batch_;
    Split split_;
    int group_;
    std::size_t columns_;  // 9 * input channels
    std::vector<Thread> threads_;
};
#else
class PairedFilterGradient {  // x86-64 only
public:
    static bool fits(const ConvGeometry&) { return false; }
    PairedFilterGradient(const ConvGeometry&, Shape, int) {}
    void accumulate(const void*, const void*, float*) {}
};
#endif

}  // namespace tessera::cpu
