#pragma once
// Max pooling (with the winners' positions for backward) and global average pooling.
#include <cmath>

#include "tessera/backend/cuda/context.cuh"

namespace tessera::cuda {

namespace kernels {

// One thread per output value (n, oy, ox, c); argmax holds the winning pixel within the image.
template <class T>
__global__ void maxpool_forward(const T* x, int h, int w, int c, PoolGeometry g, T* y, std::int32_t* argmax, int ho,
                                int wo, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const int ch = int(i % c), ox = int(i / c % wo), oy = int(i / c / wo % ho);
        const std::size_t image = i / c / wo / ho;
        float best = -INFINITY;
        std::int32_t winner = 0;
        for (int ky = 0; ky < g.kernel; ++ky) {
            const int iy = oy * g.stride - g.pad + ky;
            if (iy < 0 || iy >= h) continue;
            for (int kx = 0; kx < g.kernel; ++kx) {
                const int ix = ox * g.stride - g.pad + kx;
                if (ix < 0 || ix >= w) continue;
                const float v = to_float(x[((image * h + iy) * w + ix) * c + ch]);
                if (v > best) best = v, winner = iy * w + ix;
            }
        }
        y[i] = from_float<T>(best);
        argmax[i] = winner;
    }
}
// One thread per input value: the sum of dy over the windows this pixel won. A gather, so no
// atomics (which would round at every addition in bf16) and no zeroing first.
template <class T>
__global__ void maxpool_backward(const T* dy, const std::int32_t* argmax, int h, int w, int c, PoolGeometry g, int ho,
                                 int wo, T* dx, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const int ch = int(i % c), ix = int(i / c % w), iy = int(i / c / w % h);
        const std::size_t image = i / c / w / h;
        const int pixel = iy * w + ix;
        // Windows oy cover iy when oy * stride - pad <= iy <= oy * stride - pad + kernel - 1.
        const int oy_first = max(0, (iy + g.pad - g.kernel + g.stride) / g.stride),
                  oy_last = min(ho - 1, (iy + g.pad) / g.stride);
        const int ox_first = max(0, (ix + g.pad - g.kernel + g.stride) / g.stride),
                  ox_last = min(wo - 1, (ix + g.pad) / g.stride);
        float sum = 0.f;
        for (int oy = oy_first; oy <= oy_last; ++oy)
            for (int ox = ox_first; ox <= ox_last; ++ox) {
                const std::size_t o = ((image * ho + oy) * wo + ox) * c + ch;
                if (argmax[o] == pixel) sum += to_float(dy[o]);
            }
        dx[i] = from_float<T>(sum);
    }
}

template <class T>
__global__ void global_avgpool_forward(const T* x, int pixels, int c, T* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {  // i = (image, channel)
        const std::size_t image = i / c, ch = i % c;
        float sum = 0.f;
        for (int p = 0; p < pixels; ++p) sum += to_float(x[(image * pixels + p) * c + ch]);
        y[i] = from_float<T>(sum / float(pixels));
    }
}
template <class T>
__global__ void global_avgpool_backward(const T* dy, int pixels, int c, T* dx, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) dx[i] = from_float<T>(to_float(dy[(i / c / pixels) * c + i % c]) / float(pixels));
}

}  // namespace kernels

void Backend::maxpool_forward(Context& ctx, const Tensor& x, const PoolGeometry& g, const Tensor& y,
                              std::int32_t* argmax) {
    detail::OpTimer timer(ctx, "maxpool forward");
    detail::with_element_type(x.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(maxpool_forward<T>, y.size(), x.as<T>(), x.shape.h, x.shape.w, x.shape.c, g, y.as<T>(), argmax,
                       y.shape.h, y.shape.w, y.size());
    });
}
void Backend::maxpool_backward(Context& ctx, const Tensor& dy, const std::int32_t* argmax, const PoolGeometry& g,
                               const Tensor& dx) {
    detail::OpTimer timer(ctx, "maxpool backward");
    detail::with_element_type(dx.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(maxpool_backward<T>, dx.size(), dy.as<T>(), argmax, dx.shape.h, dx.shape.w, dx.shape.c, g,
                       dy.shape.h, dy.shape.w, dx.as<T>(), dx.size());
    });
}
void Backend::global_avgpool_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "avgpool forward");
    detail::with_element_type(x.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(global_avgpool_forward<T>, y.size(), x.as<T>(), x.shape.h * x.shape.w, x.shape.c, y.as<T>(),
                       y.size());
    });
}
void Backend::global_avgpool_backward(Context& ctx, const Tensor& dy, const Tensor& dx) {
    detail::OpTimer timer(ctx, "avgpool backward");
    detail::with_element_type(dx.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(global_avgpool_backward<T>, dx.size(), dy.as<T>(), dx.shape.h * dx.shape.w, dx.shape.c,
                       dx.as<T>(), dx.size());
    });
}

}  // namespace tessera::cuda
