#pragma once
// A batch's pixels in (through pinned memory), and tensors out to the host.
#include <cstdint>
#include <vector>

#include "tessera/backend/cuda/context.cuh"

namespace tessera::cuda {

namespace kernels {

struct Normalisation {
    float mean[4], inv_std[4];
};
template <class T>
__global__ void normalize_images(const std::uint8_t* pixels, Normalisation norm, int c, T* x, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const int ch = int(i % c);
        x[i] = from_float<T>((pixels[i] * (1.f / 255.f) - norm.mean[ch]) * norm.inv_std[ch]);
    }
}

}  // namespace kernels

void Backend::copy_to_host(Context& ctx, const Tensor& x, float* host) {
    const std::size_t n = x.size();
    if (x.dtype == DType::f32) {
        TESSERA_CUDA(cudaMemcpyAsync(host, x.data, n * sizeof(float), cudaMemcpyDeviceToHost, ctx.impl->stream));
        TESSERA_CUDA(cudaStreamSynchronize(ctx.impl->stream));
        return;
    }
    std::vector<std::uint16_t> raw(n);  // bf16 or fp16 bits
    TESSERA_CUDA(cudaMemcpyAsync(raw.data(), x.data, n * 2, cudaMemcpyDeviceToHost, ctx.impl->stream));
    TESSERA_CUDA(cudaStreamSynchronize(ctx.impl->stream));
    for (std::size_t i = 0; i < n; ++i) {
        if (x.dtype == DType::bf16)
            host[i] = __bfloat162float(__nv_bfloat16_raw{raw[i]});
        else
            host[i] = __half2float(__half_raw{raw[i]});
    }
}

void Backend::normalize_images(Context& ctx, const std::uint8_t* pixels, const float* mean, const float* inv_std,
                               const Tensor& x) {
    detail::OpTimer timer(ctx, "normalize images");
    auto& impl = *ctx.impl;
    const std::size_t n = x.size();
    TESSERA_CHECK(x.shape.c <= 4, "normalize_images handles up to 4 channels");
    if (impl.pixels_capacity < n) {
        cudaFreeHost(impl.pixels);
        TESSERA_CUDA(cudaMallocHost(reinterpret_cast<void**>(&impl.pixels), n));
        impl.pixels_capacity = n;
    }
    // The batch's bytes go through pinned memory (the stream must be done with the last batch's).
    TESSERA_CUDA(cudaStreamSynchronize(impl.stream));
    std::copy(pixels, pixels + n, impl.pixels);
    auto* device_pixels = reinterpret_cast<std::uint8_t*>(ctx.arena.allocate_floats((n + 3) / 4));
    TESSERA_CUDA(cudaMemcpyAsync(device_pixels, impl.pixels, n, cudaMemcpyHostToDevice, impl.stream));
    kernels::Normalisation norm{};
    for (int c = 0; c < x.shape.c; ++c) norm.mean[c] = mean[c], norm.inv_std[c] = inv_std[c];
    detail::with_element_type(x.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(normalize_images<T>, n, device_pixels, norm, x.shape.c, x.as<T>(), n);
    });
}

}  // namespace tessera::cuda
