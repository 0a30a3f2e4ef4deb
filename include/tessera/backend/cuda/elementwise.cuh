#pragma once
// ReLU, the residual add and gradient accumulation: grid-stride over packs of V values (V = 8, one
// 16-byte access of bf16 or fp16, two of fp32, where the tensors allow; else 1).
#include "tessera/backend/cuda/context.cuh"

namespace tessera::cuda {

namespace kernels {

#define TESSERA_PACKS(i, packs) TESSERA_GRID_STRIDE(i, packs)

template <int V, class T>
__global__ void relu_forward(const T* x, T* y, std::size_t packs) {
    TESSERA_PACKS(i, packs) {
        float v[V];
        load<V>(x + i * V, v);
#pragma unroll
        for (int j = 0; j < V; ++j) v[j] = fmaxf(v[j], 0.f);
        store<V>(y + i * V, v);
    }
}
template <int V, class T>
__global__ void relu_backward(const T* y, const T* dy, T* dx, std::size_t packs) {
    TESSERA_PACKS(i, packs) {
        float mask[V], g[V];
        load<V>(y + i * V, mask);
        load<V>(dy + i * V, g);
#pragma unroll
        for (int j = 0; j < V; ++j) g[j] = mask[j] > 0.f ? g[j] : 0.f;
        store<V>(dx + i * V, g);
    }
}
template <int V, class T>
__global__ void add(const T* a, const T* b, T* y, std::size_t packs) {
    TESSERA_PACKS(i, packs) {
        float u[V], v[V];
        load<V>(a + i * V, u);
        load<V>(b + i * V, v);
#pragma unroll
        for (int j = 0; j < V; ++j) u[j] += v[j];
        store<V>(y + i * V, u);
    }
}
template <int V, class T, class U>
__global__ void accumulate(const T* x, U* y, std::size_t packs) {  // y += x, in y's type
    TESSERA_PACKS(i, packs) {
        float u[V], v[V];
        load<V>(y + i * V, u);
        load<V>(x + i * V, v);
#pragma unroll
        for (int j = 0; j < V; ++j) u[j] += v[j];
        store<V>(y + i * V, u);
    }
}

#undef TESSERA_PACKS

}  // namespace kernels

namespace detail {
// Calls f(T{}, V) with the tensors' element type and vector width over n values.
template <class F>
void with_packs(DType dtype, std::size_t n, std::initializer_list<const void*> tensors, F&& f) {
    with_element_type(dtype, [&](auto t) { with_vector_width(vector_width(n, tensors), [&](auto v) { f(t, v); }); });
}
}  // namespace detail

void Backend::relu_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "relu forward");
    detail::same_type(x, y, "relu forward");
    detail::with_packs(x.dtype, x.size(), {x.data, y.data}, [&](auto t, auto v) {
        using T = decltype(t);
        constexpr int V = decltype(v)::value;
        detail::launch(ctx, kernels::relu_forward<V, T>, x.size() / V, x.as<T>(), y.as<T>(), x.size() / V);
    });
}
void Backend::relu_backward(Context& ctx, const Tensor& y, const Tensor& dy, const Tensor& dx) {
    detail::OpTimer timer(ctx, "relu backward");
    detail::same_type(y, dy, "relu backward");
    detail::with_packs(y.dtype, y.size(), {y.data, dy.data, dx.data}, [&](auto t, auto v) {
        using T = decltype(t);
        constexpr int V = decltype(v)::value;
        detail::launch(ctx, kernels::relu_backward<V, T>, y.size() / V, y.as<T>(), dy.as<T>(), dx.as<T>(),
                       y.size() / V);
    });
}
void Backend::add(Context& ctx, const Tensor& a, const Tensor& b, const Tensor& y) {
    detail::OpTimer timer(ctx, "add");
    detail::same_type(a, b, "add");
    detail::with_packs(y.dtype, y.size(), {a.data, b.data, y.data}, [&](auto t, auto v) {
        using T = decltype(t);
        constexpr int V = decltype(v)::value;
        detail::launch(ctx, kernels::add<V, T>, y.size() / V, a.as<T>(), b.as<T>(), y.as<T>(), y.size() / V);
    });
}
void Backend::accumulate(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "accumulate");
    detail::same_type(x, y, "accumulate");
    detail::with_packs(y.dtype, y.size(), {x.data, y.data}, [&](auto t, auto v) {
        using T = decltype(t);
        constexpr int V = decltype(v)::value;
        detail::launch(ctx, kernels::accumulate<V, T, T>, y.size() / V, x.as<T>(), y.as<T>(), y.size() / V);
    });
}

}  // namespace tessera::cuda
