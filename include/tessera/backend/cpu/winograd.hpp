#pragma once
// fp32 3x3 convolutions with stride 1 and padding 1 by Winograd's minimal filtering F(4x4, 3x3)
// (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks", CVPR 2016, section 4): each
// 4x4 tile of the output from a 6x6 patch of the input, in 36 products per channel pair instead of
// 144, so 4x fewer multiplications than the direct convolution. The compiled inference path
// (export/cpu_inference.hpp) runs ResNet's stride-1 3x3 convolutions here where it is faster (pays);
// oneDNN 2.6 has no Winograd kernel for AVX2, and an AVX-512 one for fp32 only.
//
// With d a 6x6 input patch, g a 3x3 filter and the matrices below (points 0, 1, -1, 2, -2, infinity):
//   Y = A^T [ (G g G^T) . (B^T d B) ] A        (. the element-wise product)
// Over channels the element-wise products become 36 independent matrix products, one per point p:
//   U[p][c][k] = (G g[k][c] G^T)[p]       the filters, transformed once per network
//   V[p][t][c] = (B^T d[t][c] B)[p]       per input tile t
//   M[p][t][k] = sum over c of V[p][t][c] U[p][c][k]     (OpenBLAS's sgemm, gemm.hpp)
//   y[t][k]    = A^T M[.][t][k] A (+ bias, + the value already in y, then ReLU: oneDNN's post-ops)
// The tiles are taken a chunk at a time, sized so that one point's V stays in L2 through its product.
//
// Activations are oneDNN's: blocked nChw8c / nChw16c, or NHWC, described by strides (Layout); the
// transforms run over B channels at once, B of them contiguous in each layout, so that they vectorise.
// fp32 rounding of the transforms costs accuracy: Deploy.WinogradMatchesTheDirectConvolution bounds it.
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <string_view>
#include <vector>

#include "tessera/backend/cpu/dispatch.hpp"
#include "tessera/backend/cpu/gemm.hpp"
#include "tessera/backend/cpu/openmp_threads.hpp"
#include "tessera/backend/ops.hpp"
#include "tessera/core/error.hpp"

namespace tessera::cpu::winograd {

constexpr int tile = 4;     // output pixels per tile side: F(4x4, 3x3)
constexpr int patch = 6;    // input pixels per patch side: tile + 3 - 1
constexpr int points = 36;  // patch * patch

/// Whether a convolution is one this file computes: 3x3, stride 1, padding 1, channels in blocks of 8.
inline bool computes(const ConvGeometry& g) {
    return g.kernel == 3 && g.stride == 1 && g.pad == 1 && g.in_channels % 8 == 0 && g.out_channels % 8 == 0;
}

/// Whether the compiled inference path uses this file: yes, unless the environment sets
/// TESSERA_WINOGRAD=0, which runs oneDNN's direct kernels instead (to compare the two, or to rule
/// Winograd's rounding out).
inline bool enabled() {
    const char* v = std::getenv("TESSERA_WINOGRAD");
    return !(v && std::string_view(v) == "0");
}

/// Where element (n, channel block cb, y, x, lane) of an activation lives: n * image + cb * block +
/// (y * width + x) * pixel + lane, with `lanes` channels per block (8 or 16), the width the
/// transforms run at.
struct Layout {
    std::size_t image, block, pixel;
    int lanes;
};

/// The shape of one convolution: n images of c channels, h x w, into k channels.
struct Shape {
    int n, c, h, w, k;
    int tiles_h() const { return (h + tile - 1) / tile; }
    int tiles_w() const { return (w + tile - 1) / tile; }
    std::size_t tiles() const { return std::size_t(n) * std::size_t(tiles_h()) * std::size_t(tiles_w()); }
};

/// Whether it is faster here than oneDNN's direct kernel (enough_channels: the half that holds at
/// every batch size), as measured on ResNet's shapes (bench/blocks.cpp,
/// CpuConv/inference; README, "CPU inference, compiled"):
///   - at least 64 channels in and out: with fewer, the products (tiles x c by c x k) are too thin for
///     sgemm, and ResNet-20's 16- and 32-channel layers at batch 128 ran at 0.7x and 0.9x oneDNN's speed;
///   - at least 16 tiles: the transformed filters are 4x the filters' size (36 values per 3x3), read
///     once per chunk of tiles, and ResNet50's 7x7 layer at batch 1 (4 tiles) ran at 0.8x.
inline bool enough_channels(int c, int k) { return c >= 64 && k >= 64; }
inline bool pays(const Shape& s) { return enough_channels(s.c, s.k) && s.tiles() >= 16; }

/// U[p][c][k] from filters w[k][c][3][3] (oihw), in double, rounded once.
inline std::vector<float> transform_filters(const float* w, int k, int c) {
    // G, 6x3.
    static constexpr double G[patch][3] = {{1. / 4, 0, 0},
                                           {-1. / 6, -1. / 6, -1. / 6},
                                           {-1. / 6, 1. / 6, -1. / 6},
                                           {1. / 24, 1. / 12, 1. / 6},
                                           {1. / 24, -1. / 12, 1. / 6},
                                           {0, 0, 1}};
    std::vector<float> u(std::size_t(points) * std::size_t(c) * std::size_t(k));
    for (int o = 0; o < k; ++o)
        for (int i = 0; i < c; ++i) {
            const float* g = w + (std::size_t(o) * std::size_t(c) + std::size_t(i)) * 9;
            double gg[patch][3];  // G g
            for (int r = 0; r < patch; ++r)
                for (int q = 0; q < 3; ++q) gg[r][q] = G[r][0] * g[q] + G[r][1] * g[3 + q] + G[r][2] * g[6 + q];
            for (int r = 0; r < patch; ++r)
                for (int q = 0; q < patch; ++q) {
                    const double v = gg[r][0] * G[q][0] + gg[r][1] * G[q][1] + gg[r][2] * G[q][2];  // (G g G^T)
                    u[(std::size_t(r * patch + q) * std::size_t(c) + std::size_t(i)) * std::size_t(k) +
                      std::size_t(o)] = float(v);
                }
        }
    return u;
}

namespace detail {

// The tile t's image and its top-left output pixel.
struct TileAt {
    int n, y, x;
    TileAt(const Shape& s, std::size_t t) {
        const std::size_t per_image = std::size_t(s.tiles_h()) * std::size_t(s.tiles_w());
        n = int(t / per_image);
        const int r = int(t % per_image);
        y = r / s.tiles_w() * tile;
        x = r % s.tiles_w() * tile;
    }
};

// B lanes of fp32 as one value (GCC's vector extension): each clone of the loops below (dispatch.hpp)
// computes it in that clone's widest registers (two SSE, one AVX or half an AVX-512 for B = 8).
// (The attribute must sit on a typedef in a class template: on an alias template GCC drops it.)
template <int B>
struct LanesOf {
    typedef float type __attribute__((vector_size(B * sizeof(float))));
};
template <int B>
using Lanes = typename LanesOf<B>::type;
static_assert(sizeof(Lanes<8>) == 8 * sizeof(float));

template <int B>
TESSERA_CPU_INLINE inline void load(Lanes<B>& v, const float* p) {
    std::memcpy(&v, p, sizeof v);
}
template <int B>
TESSERA_CPU_INLINE inline void store(float* p, const Lanes<B>& v) {
    std::memcpy(p, &v, sizeof v);
}

// B^T applied to six vectors d[0], d[step], ..., d[5 step]: out[i * out_step] = sum over r of B^T[i][r] d[r].
template <int B>
TESSERA_CPU_INLINE inline void input_1d(const Lanes<B>* d, int step, Lanes<B>* out, int out_step) {
    const Lanes<B> d0 = d[0], d1 = d[step], d2 = d[2 * step], d3 = d[3 * step], d4 = d[4 * step], d5 = d[5 * step];
    out[0] = 4.f * d0 - 5.f * d2 + d4;
    out[out_step] = -4.f * (d1 + d2) + d3 + d4;
    out[2 * out_step] = 4.f * (d1 - d2) - d3 + d4;
    out[3 * out_step] = 2.f * (d3 - d1) - d2 + d4;
    out[4 * out_step] = 2.f * (d1 - d3) - d2 + d4;
    out[5 * out_step] = 4.f * d1 - 5.f * d3 + d5;
}

// A^T applied to six vectors: out[i * out_step] = sum over r of A^T[i][r] m[r].
template <int B>
TESSERA_CPU_INLINE inline void output_1d(const Lanes<B>* m, int step, Lanes<B>* out, int out_step) {
    const Lanes<B> m0 = m[0], m1 = m[step], m2 = m[2 * step], m3 = m[3 * step], m4 = m[4 * step], m5 = m[5 * step];
    const Lanes<B> s12 = m1 + m2, d12 = m1 - m2, s34 = m3 + m4, d34 = m3 - m4;
    out[0] = m0 + s12 + s34;
    out[out_step] = d12 + 2.f * d34;
    out[2 * out_step] = s12 + 4.f * s34;
    out[3 * out_step] = d12 + 8.f * d34 + m5;
}

// V[p][slot][c] for the tiles first + [begin, end), slot = t - first; V's points are v_step floats apart.
template <int B>
TESSERA_CPU_CLONES void inputs(const float* __restrict x, Layout in, Shape s, float* __restrict v, std::size_t v_step,
                               std::size_t first, std::size_t begin, std::size_t end) {
    Lanes<B> d[patch][patch], rows[patch][patch], out[patch][patch];
    for (std::size_t slot = begin; slot < end; ++slot) {
        const TileAt at(s, first + slot);
        for (int cb = 0; cb < s.c / B; ++cb) {
            const float* image = x + std::size_t(at.n) * in.image + std::size_t(cb) * in.block;
            for (int r = 0; r < patch; ++r) {
                const int y = at.y - 1 + r;
                for (int q = 0; q < patch; ++q) {
                    const int xx = at.x - 1 + q;
                    if (y < 0 || y >= s.h || xx < 0 || xx >= s.w)
                        d[r][q] = Lanes<B>{};
                    else
                        load<B>(d[r][q], image + (std::size_t(y) * std::size_t(s.w) + std::size_t(xx)) * in.pixel);
                }
            }
#pragma GCC unroll 6
            for (int q = 0; q < patch; ++q) input_1d<B>(&d[0][q], patch, &rows[0][q], patch);  // B^T d
#pragma GCC unroll 6
            for (int r = 0; r < patch; ++r) input_1d<B>(&rows[r][0], 1, &out[r][0], 1);  // (B^T d) B
            float* dst = v + slot * std::size_t(s.c) + std::size_t(cb) * B;
#pragma GCC unroll 6
            for (int r = 0; r < patch; ++r)
#pragma GCC unroll 6
                for (int q = 0; q < patch; ++q) store<B>(dst + std::size_t(r * patch + q) * v_step, out[r][q]);
        }
    }
}

// y for the tiles first + [begin, end) from M[p][slot][k]: bias, then the value already in y where
// `accumulate`, then ReLU where `relu`, as oneDNN's post-ops (sum, eltwise_relu) order them.
template <int B>
TESSERA_CPU_CLONES void outputs(const float* __restrict m, std::size_t m_step, const float* __restrict bias,
                                bool accumulate, bool relu, float* __restrict y, Layout out, Shape s, std::size_t first,
                                std::size_t begin, std::size_t end) {
    Lanes<B> mm[patch][patch], cols[tile][patch], res[tile][tile];
    for (std::size_t slot = begin; slot < end; ++slot) {
        const TileAt at(s, first + slot);
        for (int kb = 0; kb < s.k / B; ++kb) {
            const float* src = m + slot * std::size_t(s.k) + std::size_t(kb) * B;
#pragma GCC unroll 6
            for (int r = 0; r < patch; ++r)
#pragma GCC unroll 6
                for (int q = 0; q < patch; ++q) load<B>(mm[r][q], src + std::size_t(r * patch + q) * m_step);
#pragma GCC unroll 6
            for (int q = 0; q < patch; ++q) output_1d<B>(&mm[0][q], patch, &cols[0][q], patch);  // A^T M
#pragma GCC unroll 4
            for (int r = 0; r < tile; ++r) output_1d<B>(&cols[r][0], 1, &res[r][0], 1);  // (A^T M) A
            Lanes<B> b{}, old;
            if (bias) load<B>(b, bias + kb * B);
            float* image = y + std::size_t(at.n) * out.image + std::size_t(kb) * out.block;
            for (int r = 0; r < tile && at.y + r < s.h; ++r)
                for (int q = 0; q < tile && at.x + q < s.w; ++q) {
                    float* p = image + (std::size_t(at.y + r) * std::size_t(s.w) + std::size_t(at.x + q)) * out.pixel;
                    Lanes<B> value = res[r][q] + b;
                    if (accumulate) {
                        load<B>(old, p);
                        value += old;
                    }
                    if (relu) value = value > 0.f ? value : Lanes<B>{};
                    store<B>(p, value);
                }
        }
    }
}

}  // namespace detail

/// Tiles per chunk: one point's V (chunk x c floats) in about 256 KiB, half a core's L2 on the CPUs
/// measured, and at least 16 tiles.
inline std::size_t chunk_tiles(const Shape& s) {
    return std::min(s.tiles(), std::max<std::size_t>(16, (std::size_t(1) << 16) / std::size_t(s.c)));
}

/// The floats between one point's rows and the next in V (channels = c) or M (channels = k): a chunk's
/// rows and 16 floats more, so that the 36 points of one tile do not fall in the same cache sets, as
/// they would a power of two apart.
inline std::size_t point_stride(std::size_t chunk, int channels) { return chunk * std::size_t(channels) + 16; }

/// The floats of workspace forward() needs: V and M of one chunk.
inline std::size_t workspace_floats(const Shape& s, std::size_t chunk) {
    return std::size_t(points) * (point_stride(chunk, s.c) + point_stride(chunk, s.k));
}
inline std::size_t workspace_floats(const Shape& s) { return workspace_floats(s, chunk_tiles(s)); }

namespace detail {

// forward() with B = in.lanes = out.lanes.
template <int B>
void forward_lanes(const OpenMpThreads& threads, const float* x, Layout in, const std::vector<float>& u,
                   const float* bias, bool accumulate, bool relu, float* y, Layout out, Shape s, float* workspace,
                   std::size_t chunk) {
    set_gemm_threads(1);
    const std::size_t c = std::size_t(s.c), k = std::size_t(s.k);
    const std::size_t v_step = point_stride(chunk, s.c), m_step = point_stride(chunk, s.k);
    float* v = workspace;
    float* m = workspace + std::size_t(points) * v_step;
    for (std::size_t first = 0; first < s.tiles(); first += chunk) {
        const std::size_t count = std::min(chunk, s.tiles() - first);
        threads.parallel_for(
            count, [&](std::size_t begin, std::size_t end) { inputs<B>(x, in, s, v, v_step, first, begin, end); });
        threads.parallel_for(std::size_t(points), [&](std::size_t begin, std::size_t end) {
            for (std::size_t p = begin; p < end; ++p)
                gemm(false, false, count, k, c, 1.f, v + p * v_step, c, u.data() + p * c * k, k, 0.f, m + p * m_step,
                     k);
        });
        threads.parallel_for(count, [&](std::size_t begin, std::size_t end) {
            outputs<B>(m, m_step, bias, accumulate, relu, y, out, s, first, begin, end);
        });
    }
}

}  // namespace detail

/// y = conv3x3(x, w) (+ bias) (+ y) (ReLU), with u = transform_filters(w), `chunk` tiles at a time
/// (chunk_tiles(s) unless a test asks for fewer). x and y have the same lanes (8 or 16), dividing c
/// and k. `workspace` holds workspace_floats(s, chunk).
inline void forward(const OpenMpThreads& threads, const float* x, Layout in, const std::vector<float>& u,
                    const float* bias, bool accumulate, bool relu, float* y, Layout out, Shape s, float* workspace,
                    std::size_t chunk) {
    TESSERA_CHECK(in.lanes == out.lanes && (in.lanes == 8 || in.lanes == 16),
                  "winograd::forward reads and writes 8 or 16 lanes, the same on both sides");
    if (in.lanes == 16)
        detail::forward_lanes<16>(threads, x, in, u, bias, accumulate, relu, y, out, s, workspace, chunk);
    else
        detail::forward_lanes<8>(threads, x, in, u, bias, accumulate, relu, y, out, s, workspace, chunk);
}
inline void forward(const OpenMpThreads& threads, const float* x, Layout in, const std::vector<float>& u,
                    const float* bias, bool accumulate, bool relu, float* y, Layout out, Shape s, float* workspace) {
    forward(threads, x, in, u, bias, accumulate, relu, y, out, s, workspace, chunk_tiles(s));
}

}  // namespace tessera::cpu::winograd
