#pragma once
// VectorKernels: flat fp32 vectors for optimizers' hosts, loss scaling, clipping and the weights'
// average.
#include "tessera/backend/cuda/context.cuh"

namespace tessera::cuda {

namespace kernels {

__global__ void add_scalar(float* data, float value) { *data += value; }
__global__ void axpby(float a, const float* x, float b, float* y, std::size_t n) {
    if (b == 0.f) {
        TESSERA_GRID_STRIDE(i, n) y[i] = a * x[i];
    } else {
        TESSERA_GRID_STRIDE(i, n) y[i] = a * x[i] + b * y[i];
    }
}
__global__ void scale(float* y, float a, std::size_t n) { TESSERA_GRID_STRIDE(i, n) y[i] *= a; }
// Each block sums its share in double, then adds it to *total.
__global__ void sum_squares(const float* x, std::size_t n, double* total) {
    __shared__ double partial[threads];
    double sum = 0;
    TESSERA_GRID_STRIDE(i, n) sum += double(x[i]) * x[i];
    partial[threadIdx.x] = sum;
    __syncthreads();
    for (int stride = threads / 2; stride > 0; stride /= 2) {
        if (int(threadIdx.x) < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) atomicAdd(total, partial[0]);
}

}  // namespace kernels

void Backend::fill_zero(Context& ctx, float* data, std::size_t count) {
    detail::OpTimer timer(ctx, "fill zero");
    TESSERA_CUDA(cudaMemsetAsync(data, 0, count * sizeof(float), ctx.impl->stream));
}
void Backend::add_scalar(Context& ctx, float* data, float value) {
    kernels::add_scalar<<<1, 1, 0, ctx.impl->stream>>>(data, value);
}

void Backend::axpby(Context& ctx, float a, const float* x, float b, float* y, std::size_t n) {
    if (n) kernels::axpby<<<kernels::blocks_for(n), kernels::threads, 0, ctx.impl->stream>>>(a, x, b, y, n);
    TESSERA_CUDA(cudaGetLastError());
}
void Backend::scale(Context& ctx, float* y, std::size_t n, float a) {
    if (n) kernels::scale<<<kernels::blocks_for(n), kernels::threads, 0, ctx.impl->stream>>>(y, a, n);
    TESSERA_CUDA(cudaGetLastError());
}
double Backend::sum_squares(Context& ctx, const float* x, std::size_t n) {
    auto* total = reinterpret_cast<double*>(ctx.arena.allocate_floats(2));
    TESSERA_CUDA(cudaMemsetAsync(total, 0, sizeof(double), ctx.impl->stream));
    if (n)
        kernels::sum_squares<<<std::min(kernels::blocks_for(n), 1024u), kernels::threads, 0, ctx.impl->stream>>>(x, n,
                                                                                                                 total);
    TESSERA_CUDA(cudaGetLastError());
    double result = 0;
    TESSERA_CUDA(cudaMemcpyAsync(&result, total, sizeof(double), cudaMemcpyDeviceToHost, ctx.impl->stream));
    TESSERA_CUDA(cudaStreamSynchronize(ctx.impl->stream));
    return result;
}

}  // namespace tessera::cuda
