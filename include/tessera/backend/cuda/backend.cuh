#pragma once
// Definitions of tessera::cuda::Backend (declared in backend.hpp): kernels first, then the cuDNN and
// cuBLAS calls. Convolutions go to cuDNN; BatchNorm runs on kernels of our own, because cuDNN's
// fp32 NHWC BatchNorm took 0.7 s of a 0.78 s ResNet50 step (batch 256, H200). Include from exactly
// one .cu file of a program.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <map>
#include <tuple>
#include <vector>

#include "tessera/backend/cuda/backend.hpp"
#include "tessera/backend/cuda/check.hpp"
#include "tessera/models/network.hpp"

namespace tessera::cuda {

// ---- kernels ---------------------------------------------------------------------------------------

namespace kernels {

constexpr int threads = 256;
inline unsigned blocks_for(std::size_t n) { return unsigned(std::min<std::size_t>((n + threads - 1) / threads, 65535 * 8)); }

#define TESSERA_GRID_STRIDE(i, n) \
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < (n); i += std::size_t(blockDim.x) * gridDim.x)

__global__ void relu_forward(const float* x, float* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] = fmaxf(x[i], 0.f);
}
__global__ void relu_backward(const float* y, const float* dy, float* dx, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) dx[i] = y[i] > 0.f ? dy[i] : 0.f;
}
__global__ void add(const float* a, const float* b, float* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] = a[i] + b[i];
}
__global__ void accumulate(const float* x, float* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] += x[i];
}
__global__ void add_scalar(float* data, float value) { *data += value; }
__global__ void axpby(float a, const float* x, float b, float* y, std::size_t n) {
    if (b == 0.f) {
        TESSERA_GRID_STRIDE(i, n) y[i] = a * x[i];
    } else {
        TESSERA_GRID_STRIDE(i, n) y[i] = a * x[i] + b * y[i];
    }
}
__global__ void scale(float* y, float a, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] *= a;
}
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

// One thread per output value (n, oy, ox, c); argmax holds the winning pixel within the image.
__global__ void maxpool_forward(const float* x, int h, int w, int c, PoolGeometry g, float* y, std::int32_t* argmax,
                                int ho, int wo, std::size_t n) {
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
                const float v = x[((image * h + iy) * w + ix) * c + ch];
                if (v > best) best = v, winner = iy * w + ix;
            }
        }
        y[i] = best;
        argmax[i] = winner;
    }
}
__global__ void maxpool_backward(const float* dy, const std::int32_t* argmax, int c, int in_pixels, int out_pixels,
                                 float* dx, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const std::size_t image = i / c / out_pixels;
        atomicAdd(&dx[(image * in_pixels + argmax[i]) * c + i % c], dy[i]);
    }
}

__global__ void global_avgpool_forward(const float* x, int pixels, int c, float* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {  // i = (image, channel)
        const std::size_t image = i / c, ch = i % c;
        float sum = 0.f;
        for (int p = 0; p < pixels; ++p) sum += x[(image * pixels + p) * c + ch];
        y[i] = sum / float(pixels);
    }
}
__global__ void global_avgpool_backward(const float* dy, int pixels, int c, float* dx, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) dx[i] = dy[(i / c / pixels) * c + i % c] / float(pixels);
}

__global__ void broadcast_rows(const float* row, int width, float* out, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) out[i] = row[i % width];
}
__global__ void sum_rows(const float* m, int rows, int width, float* out) {  // out += column sums
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= width) return;
    float sum = 0.f;
    for (int r = 0; r < rows; ++r) sum += m[std::size_t(r) * width + col];
    out[col] += sum;
}

struct Normalisation {
    float mean[4], inv_std[4];
};
__global__ void normalize_images(const std::uint8_t* pixels, Normalisation norm, int c, float* x, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const int ch = int(i % c);
        x[i] = (pixels[i] * (1.f / 255.f) - norm.mean[ch]) * norm.inv_std[ch];
    }
}

// One block per sample: softmax cross-entropy with label smoothing, its gradient, and the rank of
// the true class (for top-1/top-5), as cpu::softmax_cross_entropy.
__global__ void softmax_cross_entropy(const float* logits, const std::int32_t* labels, int k, float smoothing,
                                      float* dlogits, int n, float* loss, int* rank) {
    __shared__ float reduce[threads];
    const int sample = blockIdx.x;
    const float* z = logits + std::size_t(sample) * k;
    const int label = labels[sample];
    auto block_reduce = [&](float v, bool is_max) {
        reduce[threadIdx.x] = v;
        __syncthreads();
        for (int s = blockDim.x / 2; s > 0; s /= 2) {
            if (threadIdx.x < s)
                reduce[threadIdx.x] = is_max ? fmaxf(reduce[threadIdx.x], reduce[threadIdx.x + s]) : reduce[threadIdx.x] + reduce[threadIdx.x + s];
            __syncthreads();
        }
        const float r = reduce[0];
        __syncthreads();
        return r;
    };
    float local_max = -INFINITY;
    for (int j = threadIdx.x; j < k; j += blockDim.x) local_max = fmaxf(local_max, z[j]);
    const float zmax = block_reduce(local_max, true);
    float local_sum = 0.f, local_sum_z = 0.f, local_rank = 0.f;
    const float z_label = z[label];
    for (int j = threadIdx.x; j < k; j += blockDim.x) {
        local_sum += expf(z[j] - zmax);
        local_sum_z += z[j] - zmax;
        local_rank += (z[j] > z_label) || (z[j] == z_label && j < label);
    }
    const float sum = block_reduce(local_sum, false);
    const float sum_z = block_reduce(local_sum_z, false);
    const float ranked = block_reduce(local_rank, false);
    const float log_sum = logf(sum), off = smoothing / k, on = 1.f - smoothing + off;
    if (threadIdx.x == 0) {
        loss[sample] = -(on - off) * (z_label - zmax - log_sum) - off * (sum_z - k * log_sum);
        rank[sample] = int(ranked);
    }
    if (dlogits)
        for (int j = threadIdx.x; j < k; j += blockDim.x)
            dlogits[std::size_t(sample) * k + j] = (expf(z[j] - zmax - log_sum) - (j == label ? on : off)) / n;
}

// ---- BatchNorm over the (rows, C) view of NHWC tensors ----
// Per-channel sums run on 32-channel tiles (one warp reads 128 contiguous bytes of a row) with 8 rows
// per block; blocks along y take strided rows; partial sums meet in double atomics.
constexpr int bn_tile = 32, bn_rows = 8;

struct MeanTerm {  // (x, 0)
    const float* x;
    __device__ float2 operator()(std::size_t i, int) const { return {x[i], 0.f}; }
};
struct VarianceTerm {  // ((x - mean)^2, 0)
    const float* x;
    const float* mean;
    __device__ float2 operator()(std::size_t i, int c) const {
        const float d = x[i] - mean[c];
        return {d * d, 0.f};
    }
};
struct GradientTerm {  // (dy, dy * xhat)
    const float* x;
    const float* dy;
    const float* mean;
    const float* inv_std;
    __device__ float2 operator()(std::size_t i, int c) const { return {dy[i], dy[i] * (x[i] - mean[c]) * inv_std[c]}; }
};

template <class Term>
__global__ void channel_sums(std::size_t rows, int channels, Term term, double* sums /* 2 x channels */) {
    __shared__ float2 partial[bn_rows][bn_tile];
    const int c = blockIdx.x * bn_tile + threadIdx.x;
    float2 acc{0.f, 0.f};
    if (c < channels) {
        for (std::size_t r = blockIdx.y * std::size_t(bn_rows) + threadIdx.y; r < rows; r += std::size_t(gridDim.y) * bn_rows) {
            const float2 t = term(r * channels + c, c);
            acc.x += t.x;
            acc.y += t.y;
        }
    }
    partial[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < channels) {
        double a = 0, b = 0;
        for (int y = 0; y < bn_rows; ++y) a += partial[y][threadIdx.x].x, b += partial[y][threadIdx.x].y;
        atomicAdd(&sums[c], a);
        atomicAdd(&sums[channels + c], b);
    }
}

__global__ void bn_finish_mean(const double* sums, int channels, std::size_t rows, float* mean) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < channels) mean[c] = float(sums[c] / double(rows));
}
// inv_std from the biased variance; running statistics with the unbiased one, as PyTorch.
__global__ void bn_finish_variance(const double* sums, int channels, std::size_t rows, float eps, float momentum, const float* mean,
                                   float* inv_std, float* running_mean, float* running_var) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    const double var = sums[c] / double(rows);
    inv_std[c] = float(1.0 / sqrt(var + eps));
    const double unbiased = rows > 1 ? var * double(rows) / double(rows - 1) : var;
    running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean[c];
    running_var[c] = float((1 - momentum) * running_var[c] + momentum * unbiased);
}
__global__ void bn_eval_statistics(const float* running_mean, const float* running_var, float eps, int channels, float* mean,
                                   float* inv_std) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < channels) mean[c] = running_mean[c], inv_std[c] = rsqrtf(running_var[c] + eps);
}
__global__ void bn_normalize(const float* x, const float* mean, const float* inv_std, const float* gamma, const float* beta,
                             int channels, float* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const int c = int(i % channels);
        y[i] = (x[i] - mean[c]) * inv_std[c] * gamma[c] + beta[c];
    }
}
__global__ void bn_parameter_gradients(const double* sums, int channels, float* dgamma, float* dbeta) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < channels) dbeta[c] += float(sums[c]), dgamma[c] += float(sums[channels + c]);
}
// training: dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)); eval: dx = gamma * inv_std * dy.
__global__ void bn_input_gradient(const float* x, const float* dy, const float* mean, const float* inv_std, const float* gamma,
                                  const double* sums, std::size_t rows, bool training, int channels, float* dx, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const int c = int(i % channels);
        const float scale = gamma[c] * inv_std[c];
        if (!training) {
            dx[i] = scale * dy[i];
            continue;
        }
        const float xhat = (x[i] - mean[c]) * inv_std[c];
        dx[i] = scale * (dy[i] - float(sums[c] / double(rows)) - xhat * float(sums[channels + c] / double(rows)));
    }
}

}  // namespace kernels

// ---- context ---------------------------------------------------------------------------------------

void* DeviceMemory::allocate(std::size_t bytes) {
    void* p = nullptr;
    TESSERA_CUDA(cudaMalloc(&p, bytes));
    return p;
}
void DeviceMemory::free(void* p) { cudaFree(p); }

bool device_available(std::string* why) {
    int count = 0;
    const cudaError_t status = cudaGetDeviceCount(&count);
    if (status != cudaSuccess || count == 0) {
        if (why) {
            if (status == cudaErrorInsufficientDriver)
                *why = "the NVIDIA driver is missing or older than the CUDA runtime this build uses";
            else if (status == cudaErrorNoDevice || count == 0)
                *why = "no NVIDIA GPU on this machine";
            else
                *why = cudaGetErrorString(status);
        }
        cudaGetLastError();
        return false;
    }
    return true;
}

// A key for everything cached per shape: convolution algorithms.
using ShapeKey = std::tuple<int, int, int, int, int, int, int, int, int>;  // n h w c out k stride pad kind

struct Context::Impl {
    cudaStream_t stream{};
    cudnnHandle_t cudnn{};
    cublasHandle_t cublas{};
    void* workspace = nullptr;
    std::map<ShapeKey, int> algorithms;  // found once per shape with cudnnFind*AlgorithmEx
    std::size_t baseline_bytes = 0;
    // Per-step host staging for labels and results.
    std::int32_t* labels = nullptr;
    float* losses = nullptr;
    int* ranks = nullptr;
    std::uint8_t* pixels = nullptr;
    std::size_t pixels_capacity = 0;
    int labels_capacity = 0;
    // TESSERA_PROFILE=1: each operation is timed with events (synchronising after each) and the
    // totals are printed when the context ends. For finding where a step's time goes, not for speed.
    bool profile = std::getenv("TESSERA_PROFILE") != nullptr;
    std::map<std::string, std::pair<double, long>> profile_ms;  // name -> (milliseconds, calls)
};

namespace detail {
class OpTimer {
public:
    OpTimer(Context& ctx, const char* name) : impl_(*ctx.impl), name_(name) {
        if (!impl_.profile) return;
        cudaEventCreate(&start_);
        cudaEventCreate(&stop_);
        cudaEventRecord(start_, impl_.stream);
    }
    ~OpTimer() {
        if (!impl_.profile) return;
        cudaEventRecord(stop_, impl_.stream);
        cudaEventSynchronize(stop_);
        float ms = 0;
        cudaEventElapsedTime(&ms, start_, stop_);
        auto& entry = impl_.profile_ms[name_];
        entry.first += ms;
        entry.second += 1;
        cudaEventDestroy(start_);
        cudaEventDestroy(stop_);
    }

private:
    Context::Impl& impl_;
    const char* name_;
    cudaEvent_t start_{}, stop_{};
};
}  // namespace detail

inline std::size_t used_device_bytes() {
    std::size_t free_bytes = 0, total = 0;
    cudaMemGetInfo(&free_bytes, &total);
    return total - free_bytes;
}

Context::Context(Settings s) : settings(s), impl(std::make_unique<Impl>()) {
    std::string why;
    if (!device_available(&why))
        throw user_error("cuda", "no usable CUDA device: " + why, "train on the CPU: device = \"cpu\" (or --device cpu)");
    if (cudnnGetVersion() / 10000 < CUDNN_MAJOR)
        throw user_error("cuda", "cuDNN " + std::to_string(cudnnGetVersion()) + " is older than the " +
                                     std::to_string(CUDNN_VERSION) + " tessera was built with",
                         "install cuDNN " + std::to_string(CUDNN_MAJOR) + " or newer");
    TESSERA_CUDA(cudaSetDevice(s.device));
    impl->baseline_bytes = used_device_bytes();
    TESSERA_CUDA(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
    TESSERA_CUDA(cudnnCreate(&impl->cudnn));
    TESSERA_CUDA(cudnnSetStream(impl->cudnn, impl->stream));
    TESSERA_CUDA(cublasCreate(&impl->cublas));
    TESSERA_CUDA(cublasSetStream(impl->cublas, impl->stream));
    TESSERA_CUDA(cublasSetMathMode(impl->cublas, s.tf32 ? CUBLAS_TF32_TENSOR_OP_MATH : CUBLAS_PEDANTIC_MATH));
    TESSERA_CUDA(cudaMalloc(&impl->workspace, std::max<std::size_t>(s.workspace_limit, 1)));
}

Context::~Context() {
    if (!impl) return;
    cudaStreamSynchronize(impl->stream);
    if (impl->profile) {
        std::vector<std::pair<double, std::string>> rows;
        double total = 0;
        for (auto& [name, entry] : impl->profile_ms) rows.push_back({entry.first, name}), total += entry.first;
        std::sort(rows.rbegin(), rows.rend());
        std::fprintf(stderr, "profile: %.1f ms in all\n", total);
        for (auto& [ms, name] : rows)
            std::fprintf(stderr, "profile: %-28s %10.1f ms %6.1f%% %8ld calls\n", name.c_str(), ms, 100 * ms / total,
                         impl->profile_ms[name].second);
    }
    cudaFree(impl->workspace);
    cudaFreeHost(impl->labels);
    cudaFreeHost(impl->losses);
    cudaFreeHost(impl->ranks);
    cudaFreeHost(impl->pixels);
    cublasDestroy(impl->cublas);
    cudnnDestroy(impl->cudnn);
    cudaStreamDestroy(impl->stream);
}

void Context::synchronize() { TESSERA_CUDA(cudaStreamSynchronize(impl->stream)); }
std::size_t Context::device_bytes_in_use() const { return used_device_bytes() - std::min(used_device_bytes(), impl->baseline_bytes); }

DeviceParams::DeviceParams(const models::ParamStore& host)
    : value_count_(host.values.size()), buffer_count_(host.buffers.size()) {
    TESSERA_CUDA(cudaMalloc(&values_, std::max<std::size_t>(1, value_count_) * sizeof(float)));
    TESSERA_CUDA(cudaMalloc(&grads_, std::max<std::size_t>(1, value_count_) * sizeof(float)));
    TESSERA_CUDA(cudaMalloc(&buffers_, std::max<std::size_t>(1, buffer_count_) * sizeof(float)));
    TESSERA_CUDA(cudaMemset(grads_, 0, value_count_ * sizeof(float)));
}
DeviceParams::~DeviceParams() {
    cudaFree(values_);
    cudaFree(grads_);
    cudaFree(buffers_);
}
void DeviceParams::upload(const models::ParamStore& host) {
    TESSERA_CUDA(cudaMemcpy(values_, host.values.data(), value_count_ * sizeof(float), cudaMemcpyHostToDevice));
    TESSERA_CUDA(cudaMemcpy(buffers_, host.buffers.data(), buffer_count_ * sizeof(float), cudaMemcpyHostToDevice));
}
void DeviceParams::download(models::ParamStore& host) const {
    TESSERA_CUDA(cudaDeviceSynchronize());
    TESSERA_CUDA(cudaMemcpy(host.values.data(), values_, value_count_ * sizeof(float), cudaMemcpyDeviceToHost));
    TESSERA_CUDA(cudaMemcpy(host.grads.data(), grads_, value_count_ * sizeof(float), cudaMemcpyDeviceToHost));
    TESSERA_CUDA(cudaMemcpy(host.buffers.data(), buffers_, buffer_count_ * sizeof(float), cudaMemcpyDeviceToHost));
}

// ---- cuDNN descriptors -------------------------------------------------------------------------------

namespace detail {

// RAII for the descriptors one call needs; cheap next to the work they describe.
struct TensorDesc {
    cudnnTensorDescriptor_t d{};
    explicit TensorDesc(Shape s) {
        TESSERA_CUDA(cudnnCreateTensorDescriptor(&d));
        TESSERA_CUDA(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NHWC, CUDNN_DATA_FLOAT, s.n, s.c, s.h, s.w));
    }
    ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
};
struct FilterDesc {  // KRSC = tessera's OHWI
    cudnnFilterDescriptor_t d{};
    explicit FilterDesc(const ConvGeometry& g) {
        TESSERA_CUDA(cudnnCreateFilterDescriptor(&d));
        TESSERA_CUDA(cudnnSetFilter4dDescriptor(d, CUDNN_DATA_FLOAT, CUDNN_TENSOR_NHWC, g.out_channels, g.in_channels, g.kernel, g.kernel));
    }
    ~FilterDesc() { cudnnDestroyFilterDescriptor(d); }
};
struct ConvDesc {
    cudnnConvolutionDescriptor_t d{};
    ConvDesc(const ConvGeometry& g, bool tf32) {
        TESSERA_CUDA(cudnnCreateConvolutionDescriptor(&d));
        TESSERA_CUDA(cudnnSetConvolution2dDescriptor(d, g.pad, g.pad, g.stride, g.stride, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
        TESSERA_CUDA(cudnnSetConvolutionMathType(d, tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));
    }
    ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d); }
};

enum ConvKind { forward, backward_data, backward_filter };

// cudnnFind*AlgorithmEx lists algorithms fastest first; the first that ran is the one.
template <class Perf>
int fastest(const Perf* perf, int found, const char* call) {
    for (int i = 0; i < found; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS) return int(perf[i].algo);
    throw internal_error(call, "no algorithm for this convolution");
}

// The fastest algorithm that fits the workspace, measured once per shape and kind.
template <class Find>
int algorithm(Context& ctx, const ConvGeometry& g, Shape x, ConvKind kind, Find find) {
    const ShapeKey key{x.n, x.h, x.w, x.c, g.out_channels, g.kernel, g.stride, g.pad, int(kind) + 3 * ctx.settings.tf32};
    auto it = ctx.impl->algorithms.find(key);
    if (it != ctx.impl->algorithms.end()) return it->second;
    const int algo = find();
    ctx.impl->algorithms.emplace(key, algo);
    return algo;
}

}  // namespace detail

// ---- the backend ------------------------------------------------------------------------------------

void* Backend::stream(Context& ctx) { return ctx.impl->stream; }

void Backend::fill_zero(Context& ctx, float* data, std::size_t count) {
    detail::OpTimer timer(ctx, "fill zero");
    TESSERA_CUDA(cudaMemsetAsync(data, 0, count * sizeof(float), ctx.impl->stream));
}
void Backend::add_scalar(Context& ctx, float* data, float value) { kernels::add_scalar<<<1, 1, 0, ctx.impl->stream>>>(data, value); }

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
    if (n) kernels::sum_squares<<<std::min(kernels::blocks_for(n), 1024u), kernels::threads, 0, ctx.impl->stream>>>(x, n, total);
    TESSERA_CUDA(cudaGetLastError());
    double result = 0;
    TESSERA_CUDA(cudaMemcpyAsync(&result, total, sizeof(double), cudaMemcpyDeviceToHost, ctx.impl->stream));
    TESSERA_CUDA(cudaStreamSynchronize(ctx.impl->stream));
    return result;
}

void Backend::conv_forward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& y) {
    detail::OpTimer timer(ctx, "conv forward");
    using namespace detail;
    TensorDesc xd(x.shape), yd(y.shape);
    FilterDesc wd(g);
    ConvDesc cd(g, ctx.settings.tf32);
    auto& impl = *ctx.impl;
    const auto algo = cudnnConvolutionFwdAlgo_t(algorithm(ctx, g, x.shape, forward, [&] {
        cudnnConvolutionFwdAlgoPerf_t perf[8];
        int found = 0;
        TESSERA_CUDA(cudnnFindConvolutionForwardAlgorithmEx(impl.cudnn, xd.d, x.data, wd.d, w, cd.d, yd.d, y.data, 8, &found, perf,
                                                            impl.workspace, ctx.settings.workspace_limit));
        return fastest(perf, found, "cudnnFindConvolutionForwardAlgorithmEx");
    }));
    const float one = 1.f, zero = 0.f;
    TESSERA_CUDA(cudnnConvolutionForward(impl.cudnn, &one, xd.d, x.data, wd.d, w, cd.d, algo, impl.workspace,
                                         ctx.settings.workspace_limit, &zero, yd.d, y.data));
}

void Backend::conv_backward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& dy, float* dw,
                            const Tensor& dx) {
    detail::OpTimer timer(ctx, "conv backward");
    using namespace detail;
    TensorDesc xd(x.shape), dyd(dy.shape);
    FilterDesc wd(g);
    ConvDesc cd(g, ctx.settings.tf32);
    auto& impl = *ctx.impl;
    const float one = 1.f, zero = 0.f;
    const auto filter_algo = cudnnConvolutionBwdFilterAlgo_t(algorithm(ctx, g, x.shape, backward_filter, [&] {
        // The search writes its output: give it scratch, not the gradients being accumulated.
        auto mark = ctx.arena.mark();
        float* scratch = ctx.arena.allocate_floats(std::size_t(g.out_channels) * g.patch());
        cudnnConvolutionBwdFilterAlgoPerf_t perf[8];
        int found = 0;
        TESSERA_CUDA(cudnnFindConvolutionBackwardFilterAlgorithmEx(impl.cudnn, xd.d, x.data, dyd.d, dy.data, cd.d, wd.d, scratch, 8,
                                                                   &found, perf, impl.workspace, ctx.settings.workspace_limit));
        ctx.arena.release(mark);
        return fastest(perf, found, "cudnnFindConvolutionBackwardFilterAlgorithmEx");
    }));
    {
        detail::OpTimer filter_timer(ctx, "conv backward filter");
        TESSERA_CUDA(cudnnConvolutionBackwardFilter(impl.cudnn, &one, xd.d, x.data, dyd.d, dy.data, cd.d, filter_algo, impl.workspace,
                                                    ctx.settings.workspace_limit, &one, wd.d, dw));
    }
    if (!dx.data) return;
    const auto data_algo = cudnnConvolutionBwdDataAlgo_t(algorithm(ctx, g, x.shape, backward_data, [&] {
        cudnnConvolutionBwdDataAlgoPerf_t perf[8];
        int found = 0;
        TESSERA_CUDA(cudnnFindConvolutionBackwardDataAlgorithmEx(impl.cudnn, wd.d, w, dyd.d, dy.data, cd.d, xd.d, dx.data, 8, &found,
                                                                 perf, impl.workspace, ctx.settings.workspace_limit));
        return fastest(perf, found, "cudnnFindConvolutionBackwardDataAlgorithmEx");
    }));
    detail::OpTimer data_timer(ctx, "conv backward data");
    TESSERA_CUDA(cudnnConvolutionBackwardData(impl.cudnn, &one, wd.d, w, dyd.d, dy.data, cd.d, data_algo, impl.workspace,
                                              ctx.settings.workspace_limit, &zero, xd.d, dx.data));
}

namespace detail {
// Per-channel sums of term over the rows of x: 2 x C doubles from the arena, zeroed, then summed.
template <class Term>
double* channel_sums(Context& ctx, Shape shape, Term term) {
    const int c = shape.c;
    auto* sums = reinterpret_cast<double*>(ctx.arena.allocate_floats(4 * std::size_t(c)));
    TESSERA_CUDA(cudaMemsetAsync(sums, 0, 2 * std::size_t(c) * sizeof(double), ctx.impl->stream));
    const int tiles = (c + kernels::bn_tile - 1) / kernels::bn_tile;
    const std::size_t rows = shape.pixels();
    const unsigned row_blocks = unsigned(std::clamp<std::size_t>(rows / (kernels::bn_rows * 16), 1, std::max(1, 1024 / tiles)));
    kernels::channel_sums<<<dim3(tiles, row_blocks), dim3(kernels::bn_tile, kernels::bn_rows), 0, ctx.impl->stream>>>(rows, c, term, sums);
    TESSERA_CUDA(cudaGetLastError());
    return sums;
}
inline unsigned channel_blocks(int c) { return unsigned((c + kernels::threads - 1) / kernels::threads); }
}  // namespace detail

void Backend::batchnorm_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved, const Tensor& y) {
    detail::OpTimer timer(ctx, "batchnorm forward");
    const int c = x.shape.c;
    const std::size_t rows = x.shape.pixels();
    auto stream = ctx.impl->stream;
    auto mark = ctx.arena.mark();
    float* mean = saved.mean;
    float* inv_std = saved.inv_std;
    if (ctx.training) {
        const double* sums = detail::channel_sums(ctx, x.shape, kernels::MeanTerm{x.data});
        kernels::bn_finish_mean<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(sums, c, rows, mean);
        sums = detail::channel_sums(ctx, x.shape, kernels::VarianceTerm{x.data, mean});
        kernels::bn_finish_variance<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(
            sums, c, rows, p.eps, p.momentum, mean, inv_std, p.running_mean, p.running_var);
    } else {
        mean = ctx.arena.allocate_floats(c);
        inv_std = ctx.arena.allocate_floats(c);
        kernels::bn_eval_statistics<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(p.running_mean, p.running_var, p.eps, c,
                                                                                              mean, inv_std);
    }
    TESSERA_CUDA(cudaGetLastError());
    kernels::bn_normalize<<<kernels::blocks_for(y.size()), kernels::threads, 0, stream>>>(x.data, mean, inv_std, p.gamma, p.beta, c,
                                                                                        y.data, y.size());
    TESSERA_CUDA(cudaGetLastError());
    ctx.arena.release(mark);
}

void Backend::batchnorm_backward(Context& ctx, const Tensor& x, const Tensor& dy, const BatchNormParams& p, BatchNormSaved saved,
                                 float* dgamma, float* dbeta, const Tensor& dx) {
    detail::OpTimer timer(ctx, "batchnorm backward");
    const int c = x.shape.c;
    auto stream = ctx.impl->stream;
    auto mark = ctx.arena.mark();
    const float* mean = saved.mean;
    const float* inv_std = saved.inv_std;
    if (!ctx.training) {
        float* m = ctx.arena.allocate_floats(c);
        float* s = ctx.arena.allocate_floats(c);
        kernels::bn_eval_statistics<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(p.running_mean, p.running_var, p.eps, c, m, s);
        mean = m, inv_std = s;
    }
    const double* sums = detail::channel_sums(ctx, x.shape, kernels::GradientTerm{x.data, dy.data, mean, inv_std});
    kernels::bn_parameter_gradients<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(sums, c, dgamma, dbeta);
    TESSERA_CUDA(cudaGetLastError());
    if (dx.data) {
        kernels::bn_input_gradient<<<kernels::blocks_for(dx.size()), kernels::threads, 0, stream>>>(
            x.data, dy.data, mean, inv_std, p.gamma, sums, x.shape.pixels(), ctx.training, c, dx.data, dx.size());
        TESSERA_CUDA(cudaGetLastError());
    }
    ctx.arena.release(mark);
}

#define TESSERA_LAUNCH(kernel, n, ...)                                                                            \
    do {                                                                                                          \
        if (n) kernels::kernel<<<kernels::blocks_for(n), kernels::threads, 0, ctx.impl->stream>>>(__VA_ARGS__);  \
        TESSERA_CUDA(cudaGetLastError());                                                                         \
    } while (0)

void Backend::relu_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "relu forward");
    TESSERA_LAUNCH(relu_forward, x.size(), x.data, y.data, x.size());
}
void Backend::relu_backward(Context& ctx, const Tensor& y, const Tensor& dy, const Tensor& dx) {
    detail::OpTimer timer(ctx, "relu backward");
    TESSERA_LAUNCH(relu_backward, y.size(), y.data, dy.data, dx.data, y.size());
}
void Backend::add(Context& ctx, const Tensor& a, const Tensor& b, const Tensor& y) {
    detail::OpTimer timer(ctx, "add");
    TESSERA_LAUNCH(add, y.size(), a.data, b.data, y.data, y.size());
}
void Backend::accumulate(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "accumulate");
    TESSERA_LAUNCH(accumulate, y.size(), x.data, y.data, y.size());
}

void Backend::maxpool_forward(Context& ctx, const Tensor& x, const PoolGeometry& g, const Tensor& y, std::int32_t* argmax) {
    detail::OpTimer timer(ctx, "maxpool forward");
    TESSERA_LAUNCH(maxpool_forward, y.size(), x.data, x.shape.h, x.shape.w, x.shape.c, g, y.data, argmax, y.shape.h, y.shape.w, y.size());
}
void Backend::maxpool_backward(Context& ctx, const Tensor& dy, const std::int32_t* argmax, const Tensor& dx) {
    detail::OpTimer timer(ctx, "maxpool backward");
    fill_zero(ctx, dx.data, dx.size());
    TESSERA_LAUNCH(maxpool_backward, dy.size(), dy.data, argmax, dx.shape.c, dx.shape.h * dx.shape.w, dy.shape.h * dy.shape.w, dx.data,
                   dy.size());
}
void Backend::global_avgpool_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "avgpool forward");
    TESSERA_LAUNCH(global_avgpool_forward, y.size(), x.data, x.shape.h * x.shape.w, x.shape.c, y.data, y.size());
}
void Backend::global_avgpool_backward(Context& ctx, const Tensor& dy, const Tensor& dx) {
    detail::OpTimer timer(ctx, "avgpool backward");
    TESSERA_LAUNCH(global_avgpool_backward, dx.size(), dy.data, dx.shape.h * dx.shape.w, dx.shape.c, dx.data, dx.size());
}

// Row-major products through column-major cuBLAS: a row-major (r x c) matrix is a column-major (c x r) one.
void Backend::linear_forward(Context& ctx, const Tensor& x, const float* w, const float* b, int out, const Tensor& y) {
    detail::OpTimer timer(ctx, "linear forward");
    const int n = x.shape.n, in = int(x.size() / n);
    TESSERA_LAUNCH(broadcast_rows, y.size(), b, out, y.data, y.size());
    const float one = 1.f;
    // y^T (out x n) = W (out x in) x^T: column-major W is (in x out), so op = T.
    TESSERA_CUDA(cublasSgemm(ctx.impl->cublas, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, &one, w, in, x.data, in, &one, y.data, out));
}
void Backend::linear_backward(Context& ctx, const Tensor& x, const float* w, const Tensor& dy, int out, float* dw, float* db,
                              const Tensor& dx) {
    detail::OpTimer timer(ctx, "linear backward");
    const int n = x.shape.n, in = int(x.size() / n);
    const float one = 1.f, zero = 0.f;
    // dW (out x in, row-major) += dy^T x: column-major (in x out) = x^T (in x n) dy (n x out).
    TESSERA_CUDA(cublasSgemm(ctx.impl->cublas, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, &one, x.data, in, dy.data, out, &one, dw, in));
    kernels::sum_rows<<<(out + kernels::threads - 1) / kernels::threads, kernels::threads, 0, ctx.impl->stream>>>(dy.data, n, out, db);
    TESSERA_CUDA(cudaGetLastError());
    // dx (n x in) = dy W: column-major (in x n) = W^T... = column-major W (in x out) times dy^T (out x n).
    if (dx.data)
        TESSERA_CUDA(cublasSgemm(ctx.impl->cublas, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, &one, w, in, dy.data, out, &zero, dx.data, in));
}

void Backend::normalize_images(Context& ctx, const std::uint8_t* pixels, const float* mean, const float* inv_std, const Tensor& x) {
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
    TESSERA_LAUNCH(normalize_images, n, device_pixels, norm, x.shape.c, x.data, n);
}

cpu::LossResult Backend::softmax_cross_entropy(Context& ctx, const Tensor& logits, const std::int32_t* labels, float label_smoothing,
                                               float* dlogits) {
    detail::OpTimer timer(ctx, "loss");
    auto& impl = *ctx.impl;
    const int n = logits.shape.n, k = int(logits.size() / n);
    if (impl.labels_capacity < n) {
        cudaFreeHost(impl.labels);
        cudaFreeHost(impl.losses);
        cudaFreeHost(impl.ranks);
        TESSERA_CUDA(cudaMallocHost(reinterpret_cast<void**>(&impl.labels), n * sizeof(std::int32_t)));
        TESSERA_CUDA(cudaMallocHost(reinterpret_cast<void**>(&impl.losses), n * sizeof(float)));
        TESSERA_CUDA(cudaMallocHost(reinterpret_cast<void**>(&impl.ranks), n * sizeof(int)));
        impl.labels_capacity = n;
    }
    std::copy(labels, labels + n, impl.labels);
    auto* device_labels = reinterpret_cast<std::int32_t*>(ctx.arena.allocate_floats(n));
    auto* device_losses = ctx.arena.allocate_floats(n);
    auto* device_ranks = reinterpret_cast<int*>(ctx.arena.allocate_floats(n));
    TESSERA_CUDA(cudaMemcpyAsync(device_labels, impl.labels, n * sizeof(std::int32_t), cudaMemcpyHostToDevice, impl.stream));
    kernels::softmax_cross_entropy<<<n, kernels::threads, 0, impl.stream>>>(logits.data, device_labels, k, label_smoothing, dlogits, n,
                                                                            device_losses, device_ranks);
    TESSERA_CUDA(cudaGetLastError());
    TESSERA_CUDA(cudaMemcpyAsync(impl.losses, device_losses, n * sizeof(float), cudaMemcpyDeviceToHost, impl.stream));
    TESSERA_CUDA(cudaMemcpyAsync(impl.ranks, device_ranks, n * sizeof(int), cudaMemcpyDeviceToHost, impl.stream));
    TESSERA_CUDA(cudaStreamSynchronize(impl.stream));  // the loss is read on the host: the step's one synchronisation
    cpu::LossResult r;
    for (int i = 0; i < n; ++i) {
        r.loss += impl.losses[i];
        r.top1 += impl.ranks[i] < 1;
        r.top5 += impl.ranks[i] < 5;
    }
    r.loss /= n;
    return r;
}

#undef TESSERA_LAUNCH

}  // namespace tessera::cuda
