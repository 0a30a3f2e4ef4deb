#pragma once
// Definitions of tessera::cuda::Backend (declared in backend.hpp): kernels first, then the cuDNN and
// cuBLAS calls. Convolutions go to cuDNN; BatchNorm runs on kernels of our own, because cuDNN's
// fp32 NHWC BatchNorm took 0.7 s of a 0.78 s ResNet50 step (batch 256, H200). Include from exactly
// one .cu file of a program.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <map>
#include <tuple>
#include <type_traits>
#include <vector>

#include "tessera/backend/cuda/backend.hpp"
#include "tessera/backend/cuda/check.hpp"

namespace tessera::cuda {

// ---- kernels ---------------------------------------------------------------------------------------

namespace kernels {

constexpr int threads = 256;
inline unsigned blocks_for(std::size_t n) {
    return unsigned(std::min<std::size_t>((n + threads - 1) / threads, 65535 * 8));
}

#define TESSERA_GRID_STRIDE(i, n)                                                     \
    for (std::size_t i = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; i < (n); \
         i += std::size_t(blockDim.x) * gridDim.x)

// ---- element types ----
// Activations are float, __nv_bfloat16 or __half (Tensor::dtype); every kernel computes in float.
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
template <class T>
__device__ __forceinline__ T from_float(float v) {
    if constexpr (std::is_same_v<T, float>)
        return v;
    else if constexpr (std::is_same_v<T, __nv_bfloat16>)
        return __float2bfloat16(v);  // round to nearest even
    else
        return __float2half(v);
}

template <class T>
__global__ void relu_forward(const T* x, T* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] = from_float<T>(fmaxf(to_float(x[i]), 0.f));
}
template <class T>
__global__ void relu_backward(const T* y, const T* dy, T* dx, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) dx[i] = to_float(y[i]) > 0.f ? dy[i] : from_float<T>(0.f);
}
template <class T>
__global__ void add(const T* a, const T* b, T* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] = from_float<T>(to_float(a[i]) + to_float(b[i]));
}
template <class T, class U>
__global__ void accumulate(const T* x, U* y, std::size_t n) {  // y += x, in y's type
    TESSERA_GRID_STRIDE(i, n) y[i] = from_float<U>(to_float(y[i]) + to_float(x[i]));
}
template <class T>
__global__ void cast(const float* x, T* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] = from_float<T>(x[i]);
}
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
template <class T>
__global__ void normalize_images(const std::uint8_t* pixels, Normalisation norm, int c, T* x, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const int ch = int(i % c);
        x[i] = from_float<T>((pixels[i] * (1.f / 255.f) - norm.mean[ch]) * norm.inv_std[ch]);
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
                reduce[threadIdx.x] = is_max ? fmaxf(reduce[threadIdx.x], reduce[threadIdx.x + s])
                                             : reduce[threadIdx.x] + reduce[threadIdx.x + s];
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

template <class T>
struct MeanTerm {  // (x, 0)
    const T* x;
    __device__ float2 operator()(std::size_t i, int) const { return {to_float(x[i]), 0.f}; }
};
template <class T>
struct VarianceTerm {  // ((x - mean)^2, 0)
    const T* x;
    const float* mean;
    __device__ float2 operator()(std::size_t i, int c) const {
        const float d = to_float(x[i]) - mean[c];
        return {d * d, 0.f};
    }
};
template <class T>
struct GradientTerm {  // (dy, dy * xhat)
    const T* x;
    const T* dy;
    const float* mean;
    const float* inv_std;
    __device__ float2 operator()(std::size_t i, int c) const {
        const float g = to_float(dy[i]);
        return {g, g * (to_float(x[i]) - mean[c]) * inv_std[c]};
    }
};

template <class Term>
__global__ void channel_sums(std::size_t rows, int channels, Term term, double* sums /* 2 x channels */) {
    __shared__ float2 partial[bn_rows][bn_tile];
    const int c = blockIdx.x * bn_tile + threadIdx.x;
    float2 acc{0.f, 0.f};
    if (c < channels) {
        for (std::size_t r = blockIdx.y * std::size_t(bn_rows) + threadIdx.y; r < rows;
             r += std::size_t(gridDim.y) * bn_rows) {
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
__global__ void bn_finish_variance(const double* sums, int channels, std::size_t rows, float eps, float momentum,
                                   const float* mean, float* inv_std, float* running_mean, float* running_var) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    const double var = sums[c] / double(rows);
    inv_std[c] = float(1.0 / sqrt(var + eps));
    const double unbiased = rows > 1 ? var * double(rows) / double(rows - 1) : var;
    running_mean[c] = (1 - momentum) * running_mean[c] + momentum * mean[c];
    running_var[c] = float((1 - momentum) * running_var[c] + momentum * unbiased);
}
__global__ void bn_eval_statistics(const float* running_mean, const float* running_var, float eps, int channels,
                                   float* mean, float* inv_std) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < channels) mean[c] = running_mean[c], inv_std[c] = rsqrtf(running_var[c] + eps);
}
template <class T>
__global__ void bn_normalize(const T* x, const float* mean, const float* inv_std, const float* gamma, const float* beta,
                             int channels, T* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const int c = int(i % channels);
        y[i] = from_float<T>((to_float(x[i]) - mean[c]) * inv_std[c] * gamma[c] + beta[c]);
    }
}
__global__ void bn_parameter_gradients(const double* sums, int channels, float* dgamma, float* dbeta) {
    const int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c < channels) dbeta[c] += float(sums[c]), dgamma[c] += float(sums[channels + c]);
}
// training: dx = gamma * inv_std * (dy - mean(dy) - xhat * mean(dy * xhat)); eval: dx = gamma * inv_std * dy.
template <class T>
__global__ void bn_input_gradient(const T* x, const T* dy, const float* mean, const float* inv_std, const float* gamma,
                                  const double* sums, std::size_t rows, bool training, int channels, T* dx,
                                  std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const int c = int(i % channels);
        const float scale = gamma[c] * inv_std[c], g = to_float(dy[i]);
        if (!training) {
            dx[i] = from_float<T>(scale * g);
            continue;
        }
        const float xhat = (to_float(x[i]) - mean[c]) * inv_std[c];
        dx[i] = from_float<T>(scale *
                              (g - float(sums[c] / double(rows)) - xhat * float(sums[channels + c] / double(rows))));
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

Context::Context(Settings s) : activations(s.compute), settings(s), impl(std::make_unique<Impl>()) {
    std::string why;
    if (!device_available(&why))
        throw user_error("cuda", "no usable CUDA device: " + why,
                         "train on the CPU: device = \"cpu\" (or --device cpu)");
    if (cudnnGetVersion() / 10000 < CUDNN_MAJOR)
        throw user_error("cuda",
                         "cuDNN " + std::to_string(cudnnGetVersion()) + " is older than the " +
                             std::to_string(CUDNN_VERSION) + " tessera was built with",
                         "install cuDNN " + std::to_string(CUDNN_MAJOR) + " or newer");
    TESSERA_CUDA(cudaSetDevice(s.device));
    impl->baseline_bytes = used_device_bytes();
    TESSERA_CUDA(cudaStreamCreateWithFlags(&impl->stream, cudaStreamNonBlocking));
    TESSERA_CUDA(cudnnCreate(&impl->cudnn));
    TESSERA_CUDA(cudnnSetStream(impl->cudnn, impl->stream));
    TESSERA_CUDA(cublasCreate(&impl->cublas));
    TESSERA_CUDA(cublasSetStream(impl->cublas, impl->stream));
    // Tensor cores for bf16 and fp16; for fp32 only with TF32 allowed (then at TF32's precision).
    TESSERA_CUDA(cublasSetMathMode(impl->cublas, s.compute != DType::f32 ? CUBLAS_DEFAULT_MATH
                                                 : s.tf32                ? CUBLAS_TF32_TENSOR_OP_MATH
                                                                         : CUBLAS_PEDANTIC_MATH));
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
std::size_t Context::device_bytes_in_use() const {
    return used_device_bytes() - std::min(used_device_bytes(), impl->baseline_bytes);
}

DeviceParams::DeviceParams(std::size_t values, std::size_t buffers) : value_count_(values), buffer_count_(buffers) {
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
void DeviceParams::upload(const float* values, const float* buffers) {
    TESSERA_CUDA(cudaMemcpy(values_, values, value_count_ * sizeof(float), cudaMemcpyHostToDevice));
    TESSERA_CUDA(cudaMemcpy(buffers_, buffers, buffer_count_ * sizeof(float), cudaMemcpyHostToDevice));
}
void DeviceParams::download(float* values, float* grads, float* buffers) const {
    TESSERA_CUDA(cudaDeviceSynchronize());
    TESSERA_CUDA(cudaMemcpy(values, values_, value_count_ * sizeof(float), cudaMemcpyDeviceToHost));
    TESSERA_CUDA(cudaMemcpy(grads, grads_, value_count_ * sizeof(float), cudaMemcpyDeviceToHost));
    TESSERA_CUDA(cudaMemcpy(buffers, buffers_, buffer_count_ * sizeof(float), cudaMemcpyDeviceToHost));
}

// ---- cuDNN descriptors -------------------------------------------------------------------------------

namespace detail {

inline cudnnDataType_t cudnn_type(DType t) {
    return t == DType::f32 ? CUDNN_DATA_FLOAT : t == DType::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
}
inline cudaDataType_t cuda_type(DType t) {
    return t == DType::f32 ? CUDA_R_32F : t == DType::bf16 ? CUDA_R_16BF : CUDA_R_16F;
}

// Calls f with a value of the element type of dtype: float, __nv_bfloat16 or __half.
template <class F>
void with_element_type(DType dtype, F&& f) {
    switch (dtype) {
        case DType::f32:
            return f(float{});
        case DType::bf16:
            return f(__nv_bfloat16{});
        case DType::f16:
            return f(__half{});
    }
}

// RAII for the descriptors one call needs; cheap next to the work they describe.
struct TensorDesc {
    cudnnTensorDescriptor_t d{};
    TensorDesc(Shape s, DType t) {
        TESSERA_CUDA(cudnnCreateTensorDescriptor(&d));
        TESSERA_CUDA(cudnnSetTensor4dDescriptor(d, CUDNN_TENSOR_NHWC, cudnn_type(t), s.n, s.c, s.h, s.w));
    }
    ~TensorDesc() { cudnnDestroyTensorDescriptor(d); }
};
struct FilterDesc {  // KRSC = tessera's OHWI
    cudnnFilterDescriptor_t d{};
    FilterDesc(const ConvGeometry& g, DType t) {
        TESSERA_CUDA(cudnnCreateFilterDescriptor(&d));
        TESSERA_CUDA(cudnnSetFilter4dDescriptor(d, cudnn_type(t), CUDNN_TENSOR_NHWC, g.out_channels, g.in_channels,
                                                g.kernel, g.kernel));
    }
    ~FilterDesc() { cudnnDestroyFilterDescriptor(d); }
};
// Accumulation in fp32 whatever the data type (cuDNN's PSEUDO_HALF and PSEUDO_BFLOAT16 configurations);
// tensor cores for bf16 and fp16, and for fp32 when TF32 is allowed.
struct ConvDesc {
    cudnnConvolutionDescriptor_t d{};
    ConvDesc(const ConvGeometry& g, DType t, bool tf32) {
        TESSERA_CUDA(cudnnCreateConvolutionDescriptor(&d));
        TESSERA_CUDA(cudnnSetConvolution2dDescriptor(d, g.pad, g.pad, g.stride, g.stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                     CUDNN_DATA_FLOAT));
        TESSERA_CUDA(cudnnSetConvolutionMathType(d, t != DType::f32 || tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH));
    }
    ~ConvDesc() { cudnnDestroyConvolutionDescriptor(d); }
};
// Everything one convolution's three calls describe: input, output, filter, the convolution.
struct ConvDescriptors {
    TensorDesc x, y;
    FilterDesc w;
    ConvDesc conv;
    ConvDescriptors(const ConvGeometry& g, Shape x_shape, DType t, bool tf32)
        : x(x_shape, t), y(g.output_shape(x_shape), t), w(g, t), conv(g, t, tf32) {}
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
    const ShapeKey key{x.n,
                       x.h,
                       x.w,
                       x.c,
                       g.out_channels,
                       g.kernel,
                       g.stride,
                       g.pad,
                       int(kind) + 3 * ctx.settings.tf32 + 6 * int(ctx.activations)};
    auto it = ctx.impl->algorithms.find(key);
    if (it != ctx.impl->algorithms.end()) return it->second;
    const int algo = find();
    ctx.impl->algorithms.emplace(key, algo);
    return algo;
}

// n fp32 values (a layer's master weights, the logits' gradient) as the compute type T: the values
// themselves for fp32, else a copy cast into the arena (released with the caller's mark). Weights
// are cast as each layer runs: one pass over them, and never a copy older than the weights.
template <class T>
const T* converted(Context& ctx, const float* values, std::size_t n) {
    if constexpr (std::is_same_v<T, float>) {
        return values;
    } else {
        T* copy = reinterpret_cast<T*>(ctx.arena.allocate_bytes(n * sizeof(T)));
        if (n) kernels::cast<<<kernels::blocks_for(n), kernels::threads, 0, ctx.impl->stream>>>(values, copy, n);
        TESSERA_CUDA(cudaGetLastError());
        return copy;
    }
}
inline const void* converted(Context& ctx, const float* values, std::size_t n, DType t) {
    const void* result = nullptr;
    with_element_type(t, [&](auto e) { result = converted<decltype(e)>(ctx, values, n); });
    return result;
}

// Column-major C (m x n, of type c_type) = op(A) op(B) + beta C, A and B of type ab_type, summed in
// fp32 (TF32 tensor cores for fp32 data when allowed).
inline void gemm(Context& ctx, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k, const void* a,
                 int lda, const void* b, int ldb, DType ab_type, float beta, void* c, int ldc, DType c_type) {
    const float one = 1.f;
    const cublasComputeType_t compute =
        ab_type == DType::f32 && ctx.settings.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    TESSERA_CUDA(cublasGemmEx(ctx.impl->cublas, op_a, op_b, m, n, k, &one, a, cuda_type(ab_type), lda, b,
                              cuda_type(ab_type), ldb, &beta, c, cuda_type(c_type), ldc, compute, CUBLAS_GEMM_DEFAULT));
}

inline void same_type(const Tensor& a, const Tensor& b, const char* op) {
    TESSERA_CHECK(a.dtype == b.dtype,
                  std::string(op) + ": a " + dtype_name(a.dtype) + " tensor meets a " + dtype_name(b.dtype) + " one");
}

}  // namespace detail

// ---- the backend ------------------------------------------------------------------------------------

void* Backend::stream(Context& ctx) { return ctx.impl->stream; }

std::string Backend::kernels(Context&) {
    int device = 0;
    cudaDeviceProp properties{};
    if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&properties, device) != cudaSuccess)
        return "cudnn " + std::to_string(cudnnGetVersion()) + ", cublas";
    return "cudnn " + std::to_string(cudnnGetVersion()) + ", cublas on " + properties.name;
}

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

void Backend::conv_forward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& y) {
    detail::OpTimer timer(ctx, "conv forward");
    using namespace detail;
    same_type(x, y, "conv forward");
    const ConvDescriptors d(g, x.shape, x.dtype, ctx.settings.tf32);
    auto& impl = *ctx.impl;
    const auto mark = ctx.arena.mark();
    const void* weights = converted(ctx, w, std::size_t(g.out_channels) * g.patch(), x.dtype);
    const auto algo = cudnnConvolutionFwdAlgo_t(algorithm(ctx, g, x.shape, forward, [&] {
        cudnnConvolutionFwdAlgoPerf_t perf[8];
        int found = 0;
        TESSERA_CUDA(cudnnFindConvolutionForwardAlgorithmEx(impl.cudnn, d.x.d, x.data, d.w.d, weights, d.conv.d, d.y.d,
                                                            y.data, 8, &found, perf, impl.workspace,
                                                            ctx.settings.workspace_limit));
        return fastest(perf, found, "cudnnFindConvolutionForwardAlgorithmEx");
    }));
    const float one = 1.f, zero = 0.f;
    TESSERA_CUDA(cudnnConvolutionForward(impl.cudnn, &one, d.x.d, x.data, d.w.d, weights, d.conv.d, algo,
                                         impl.workspace, ctx.settings.workspace_limit, &zero, d.y.d, y.data));
    ctx.arena.release(mark);
}

// dw (fp32) += the filter gradient; dx = the input gradient, unless dx is null. In bf16 and fp16,
// cuDNN writes the filter gradient in the compute type (as it does under PyTorch's autocast), into
// scratch that is then added to the fp32 gradient.
void Backend::conv_backward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& dy,
                            float* dw, const Tensor& dx) {
    detail::OpTimer timer(ctx, "conv backward");
    using namespace detail;
    same_type(x, dy, "conv backward");
    const ConvDescriptors d(g, x.shape, x.dtype, ctx.settings.tf32);
    auto& impl = *ctx.impl;
    const float one = 1.f, zero = 0.f;
    const std::size_t weight_count = std::size_t(g.out_channels) * g.patch();
    const bool fp32 = x.dtype == DType::f32;
    const auto mark = ctx.arena.mark();
    // The filter gradient's destination: dw itself in fp32 (accumulated, beta 1), else scratch.
    void* filter_grad = fp32 ? static_cast<void*>(dw) : ctx.arena.allocate_bytes(weight_count * element_bytes(x.dtype));
    const float& filter_beta = fp32 ? one : zero;
    const auto filter_algo = cudnnConvolutionBwdFilterAlgo_t(algorithm(ctx, g, x.shape, backward_filter, [&] {
        // The search writes its output: give it scratch, not the gradients being accumulated.
        const auto search_mark = ctx.arena.mark();
        float* scratch = ctx.arena.allocate_bytes(weight_count * element_bytes(x.dtype));
        cudnnConvolutionBwdFilterAlgoPerf_t perf[8];
        int found = 0;
        TESSERA_CUDA(cudnnFindConvolutionBackwardFilterAlgorithmEx(impl.cudnn, d.x.d, x.data, d.y.d, dy.data, d.conv.d,
                                                                   d.w.d, scratch, 8, &found, perf, impl.workspace,
                                                                   ctx.settings.workspace_limit));
        ctx.arena.release(search_mark);
        return fastest(perf, found, "cudnnFindConvolutionBackwardFilterAlgorithmEx");
    }));
    {
        detail::OpTimer filter_timer(ctx, "conv backward filter");
        TESSERA_CUDA(cudnnConvolutionBackwardFilter(impl.cudnn, &one, d.x.d, x.data, d.y.d, dy.data, d.conv.d,
                                                    filter_algo, impl.workspace, ctx.settings.workspace_limit,
                                                    &filter_beta, d.w.d, filter_grad));
        if (!fp32)
            with_element_type(x.dtype, [&](auto t) {
                kernels::accumulate<<<kernels::blocks_for(weight_count), kernels::threads, 0, impl.stream>>>(
                    static_cast<const decltype(t)*>(filter_grad), dw, weight_count);
            });
        TESSERA_CUDA(cudaGetLastError());
    }
    if (dx.data) {
        same_type(x, dx, "conv backward");
        const void* weights = converted(ctx, w, weight_count, x.dtype);
        const auto data_algo = cudnnConvolutionBwdDataAlgo_t(algorithm(ctx, g, x.shape, backward_data, [&] {
            cudnnConvolutionBwdDataAlgoPerf_t perf[8];
            int found = 0;
            TESSERA_CUDA(cudnnFindConvolutionBackwardDataAlgorithmEx(impl.cudnn, d.w.d, weights, d.y.d, dy.data,
                                                                     d.conv.d, d.x.d, dx.data, 8, &found, perf,
                                                                     impl.workspace, ctx.settings.workspace_limit));
            return fastest(perf, found, "cudnnFindConvolutionBackwardDataAlgorithmEx");
        }));
        detail::OpTimer data_timer(ctx, "conv backward data");
        TESSERA_CUDA(cudnnConvolutionBackwardData(impl.cudnn, &one, d.w.d, weights, d.y.d, dy.data, d.conv.d, data_algo,
                                                  impl.workspace, ctx.settings.workspace_limit, &zero, d.x.d, dx.data));
    }
    ctx.arena.release(mark);
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
    const unsigned row_blocks =
        unsigned(std::clamp<std::size_t>(rows / (kernels::bn_rows * 16), 1, std::max(1, 1024 / tiles)));
    kernels::channel_sums<<<dim3(tiles, row_blocks), dim3(kernels::bn_tile, kernels::bn_rows), 0, ctx.impl->stream>>>(
        rows, c, term, sums);
    TESSERA_CUDA(cudaGetLastError());
    return sums;
}
inline unsigned channel_blocks(int c) { return unsigned((c + kernels::threads - 1) / kernels::threads); }
}  // namespace detail

// Synchronised (ctx.batchnorm_group set, as torch.nn.SyncBatchNorm): the per-channel sums are
// all-reduced on the device, and the row count is every rank's: their training batches are all of
// one size. dgamma and dbeta stay this rank's sums, which the gradient all-reduce then averages.
void Backend::batchnorm_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved,
                                const Tensor& y) {
    detail::OpTimer timer(ctx, "batchnorm forward");
    detail::same_type(x, y, "batchnorm forward");
    const int c = x.shape.c;
    parallel::Communicator* group = ctx.batchnorm_group;
    const std::size_t total_rows = x.shape.pixels() * (group ? group->size() : 1);
    auto stream = ctx.impl->stream;
    auto mark = ctx.arena.mark();
    float* mean = saved.mean;
    float* inv_std = saved.inv_std;
    detail::with_element_type(x.dtype, [&](auto t) {
        using T = decltype(t);
        const T* xs = x.as<T>();
        if (ctx.training) {
            double* sums = detail::channel_sums(ctx, x.shape, kernels::MeanTerm<T>{xs});
            if (group) group->all_reduce_sum(sums, std::size_t(c), stream);
            kernels::bn_finish_mean<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(sums, c, total_rows,
                                                                                                mean);
            sums = detail::channel_sums(ctx, x.shape, kernels::VarianceTerm<T>{xs, mean});
            if (group) group->all_reduce_sum(sums, std::size_t(c), stream);
            kernels::bn_finish_variance<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(
                sums, c, total_rows, p.eps, p.momentum, mean, inv_std, p.running_mean, p.running_var);
        } else {
            mean = ctx.arena.allocate_floats(c);
            inv_std = ctx.arena.allocate_floats(c);
            kernels::bn_eval_statistics<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(
                p.running_mean, p.running_var, p.eps, c, mean, inv_std);
        }
        TESSERA_CUDA(cudaGetLastError());
        kernels::bn_normalize<<<kernels::blocks_for(y.size()), kernels::threads, 0, stream>>>(
            xs, mean, inv_std, p.gamma, p.beta, c, y.as<T>(), y.size());
        TESSERA_CUDA(cudaGetLastError());
    });
    ctx.arena.release(mark);
}

void Backend::batchnorm_backward(Context& ctx, const Tensor& x, const Tensor& dy, const BatchNormParams& p,
                                 BatchNormSaved saved, float* dgamma, float* dbeta, const Tensor& dx) {
    detail::OpTimer timer(ctx, "batchnorm backward");
    detail::same_type(x, dy, "batchnorm backward");
    const int c = x.shape.c;
    auto stream = ctx.impl->stream;
    auto mark = ctx.arena.mark();
    const float* mean = saved.mean;
    const float* inv_std = saved.inv_std;
    if (!ctx.training) {
        float* m = ctx.arena.allocate_floats(c);
        float* s = ctx.arena.allocate_floats(c);
        kernels::bn_eval_statistics<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(
            p.running_mean, p.running_var, p.eps, c, m, s);
        mean = m, inv_std = s;
    }
    parallel::Communicator* group = ctx.training ? ctx.batchnorm_group : nullptr;
    const std::size_t total_rows = x.shape.pixels() * (group ? group->size() : 1);
    detail::with_element_type(x.dtype, [&](auto t) {
        using T = decltype(t);
        double* sums =
            detail::channel_sums(ctx, x.shape, kernels::GradientTerm<T>{x.as<T>(), dy.as<T>(), mean, inv_std});
        kernels::bn_parameter_gradients<<<detail::channel_blocks(c), kernels::threads, 0, stream>>>(sums, c, dgamma,
                                                                                                    dbeta);
        TESSERA_CUDA(cudaGetLastError());
        if (dx.data) {
            if (group) group->all_reduce_sum(sums, 2 * std::size_t(c), stream);  // after this rank's dgamma and dbeta
            kernels::bn_input_gradient<<<kernels::blocks_for(dx.size()), kernels::threads, 0, stream>>>(
                x.as<T>(), dy.as<T>(), mean, inv_std, p.gamma, sums, total_rows, ctx.training, c, dx.as<T>(),
                dx.size());
            TESSERA_CUDA(cudaGetLastError());
        }
    });
    ctx.arena.release(mark);
}

// A grid-stride kernel over n values, on the context's stream.
#define TESSERA_LAUNCH(kernel, n, ...)                                                                          \
    do {                                                                                                        \
        if (n) kernels::kernel<<<kernels::blocks_for(n), kernels::threads, 0, ctx.impl->stream>>>(__VA_ARGS__); \
        TESSERA_CUDA(cudaGetLastError());                                                                       \
    } while (0)

void Backend::relu_forward(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "relu forward");
    detail::same_type(x, y, "relu forward");
    detail::with_element_type(x.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(relu_forward<T>, x.size(), x.as<T>(), y.as<T>(), x.size());
    });
}
void Backend::relu_backward(Context& ctx, const Tensor& y, const Tensor& dy, const Tensor& dx) {
    detail::OpTimer timer(ctx, "relu backward");
    detail::same_type(y, dy, "relu backward");
    detail::with_element_type(y.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(relu_backward<T>, y.size(), y.as<T>(), dy.as<T>(), dx.as<T>(), y.size());
    });
}
void Backend::add(Context& ctx, const Tensor& a, const Tensor& b, const Tensor& y) {
    detail::OpTimer timer(ctx, "add");
    detail::same_type(a, b, "add");
    detail::with_element_type(y.dtype, [&](auto t) {
        using T = decltype(t);
        TESSERA_LAUNCH(add<T>, y.size(), a.as<T>(), b.as<T>(), y.as<T>(), y.size());
    });
}
void Backend::accumulate(Context& ctx, const Tensor& x, const Tensor& y) {
    detail::OpTimer timer(ctx, "accumulate");
    detail::same_type(x, y, "accumulate");
    detail::with_element_type(y.dtype, [&](auto t) {
        using T = decltype(t);
        if (y.size())
            kernels::accumulate<<<kernels::blocks_for(y.size()), kernels::threads, 0, ctx.impl->stream>>>(
                x.as<T>(), y.as<T>(), y.size());
        TESSERA_CUDA(cudaGetLastError());
    });
}

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

// Row-major products through column-major cuBLAS: a row-major (r x c) matrix is a column-major (c x r) one.
// x (N, In) and the weights in the compute type; the logits y (N, Out) and all gradients but dx in fp32.
void Backend::linear_forward(Context& ctx, const Tensor& x, const float* w, const float* b, int out, const Tensor& y) {
    detail::OpTimer timer(ctx, "linear forward");
    TESSERA_CHECK(y.dtype == DType::f32, "linear forward: the logits are fp32");
    const int n = x.shape.n, in = int(x.size() / n);
    const auto mark = ctx.arena.mark();
    const void* weights = detail::converted(ctx, w, std::size_t(out) * in, x.dtype);
    TESSERA_LAUNCH(broadcast_rows, y.size(), b, out, y.data, y.size());
    // y^T (out x n) += W (out x in) x^T: column-major W is (in x out), so op = T.
    detail::gemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, weights, in, x.data, in, x.dtype, 1.f, y.data, out,
                 DType::f32);
    ctx.arena.release(mark);
}
void Backend::linear_backward(Context& ctx, const Tensor& x, const float* w, const Tensor& dy, int out, float* dw,
                              float* db, const Tensor& dx) {
    detail::OpTimer timer(ctx, "linear backward");
    TESSERA_CHECK(dy.dtype == DType::f32, "linear backward: the logits' gradient is fp32");
    const int n = x.shape.n, in = int(x.size() / n);
    const auto mark = ctx.arena.mark();
    const void* dy_compute = detail::converted(ctx, dy.data, dy.size(), x.dtype);
    // dW (out x in, row-major) += dy^T x: column-major (in x out) = x^T (in x n) dy (n x out).
    detail::gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, x.data, in, dy_compute, out, x.dtype, 1.f, dw, in,
                 DType::f32);
    kernels::sum_rows<<<(out + kernels::threads - 1) / kernels::threads, kernels::threads, 0, ctx.impl->stream>>>(
        dy.data, n, out, db);
    TESSERA_CUDA(cudaGetLastError());
    // dx (n x in) = dy W: column-major (in x n) = column-major W (in x out) times dy^T (out x n).
    if (dx.data) {
        const void* weights = detail::converted(ctx, w, std::size_t(out) * in, x.dtype);
        detail::gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, weights, in, dy_compute, out, x.dtype, 0.f, dx.data, in,
                     dx.dtype);
    }
    ctx.arena.release(mark);
}

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

LossResult Backend::softmax_cross_entropy(Context& ctx, const Tensor& logits, const std::int32_t* labels,
                                          float label_smoothing, float* dlogits) {
    detail::OpTimer timer(ctx, "loss");
    auto& impl = *ctx.impl;
    TESSERA_CHECK(logits.dtype == DType::f32, "the loss takes fp32 logits");
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
    TESSERA_CUDA(
        cudaMemcpyAsync(device_labels, impl.labels, n * sizeof(std::int32_t), cudaMemcpyHostToDevice, impl.stream));
    kernels::softmax_cross_entropy<<<n, kernels::threads, 0, impl.stream>>>(
        logits.data, device_labels, k, label_smoothing, dlogits, n, device_losses, device_ranks);
    TESSERA_CUDA(cudaGetLastError());
    TESSERA_CUDA(cudaMemcpyAsync(impl.losses, device_losses, n * sizeof(float), cudaMemcpyDeviceToHost, impl.stream));
    TESSERA_CUDA(cudaMemcpyAsync(impl.ranks, device_ranks, n * sizeof(int), cudaMemcpyDeviceToHost, impl.stream));
    TESSERA_CUDA(cudaStreamSynchronize(impl.stream));  // the loss is read on the host: the step's one synchronisation
    LossResult r;
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
