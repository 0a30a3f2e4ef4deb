#pragma once
// The context (stream, handles, the algorithm cache, the workspace, the per-step host staging and the
// TESSERA_PROFILE timer), device memory, the device copy of the parameters, and the compute-type
// copies of master weights.
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <vector>

#include "tessera/backend/cuda/algorithm_cache.hpp"
#include "tessera/backend/cuda/kernels.cuh"

namespace tessera::cuda {

namespace kernels {

template <class T>
__global__ void cast(const float* x, T* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) y[i] = from_float<T>(x[i]);
}

}  // namespace kernels

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

// Device memory that grows to the largest size asked of it and never shrinks, so that only a run's
// first step allocates (cuDNN's workspace, the weights' copy). Work queued on the stream may still
// use the old block, so the stream is drained before it is freed.
struct GrowingBuffer {
    void* data = nullptr;
    std::size_t bytes = 0;

    void* reserve(cudaStream_t stream, std::size_t wanted) {
        if (wanted <= bytes) return data;
        TESSERA_CUDA(cudaStreamSynchronize(stream));
        TESSERA_CUDA(cudaFree(data));
        data = nullptr;
        bytes = 0;
        TESSERA_CUDA(cudaMalloc(&data, wanted));
        bytes = wanted;
        return data;
    }
    GrowingBuffer() = default;
    GrowingBuffer(const GrowingBuffer&) = delete;
    GrowingBuffer& operator=(const GrowingBuffer&) = delete;
    ~GrowingBuffer() { cudaFree(data); }
};

struct Context::Impl {
    cudaStream_t stream{};
    cudnnHandle_t cudnn{};
    cublasHandle_t cublas{};
    // cuDNN's workspace: as large as the largest need of an algorithm run so far; the searches take
    // workspace_limit apart, for the time they run (conv.cuh's FindWorkspace).
    GrowingBuffer workspace;
    // The network's weights in the compute type, valid from begin_weight_copies to end_weight_copies.
    struct WeightCopy {
        const float* values = nullptr;  // the fp32 weights copied
        std::size_t count = 0;
        DType type = DType::f32;  // of the copy
        GrowingBuffer copy;
        bool valid = false;
    } weights;
    void* withheld = nullptr;   // TESSERA_DEVICE_MEMORY_GIB's (device_memory_limit)
    AlgorithmCache algorithms;  // each convolution's, found with cudnnFind*AlgorithmEx
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

// TESSERA_DEVICE_MEMORY_GIB=G makes this process see a card of G GiB: whatever the device has beyond
// G is allocated here and never used, so a run that needs more fails as it would on the smaller
// card. For showing on a large card that a recipe fits a small one (the seed's 24 GB A10G).
inline void* withhold_device_memory() {
    const char* text = std::getenv("TESSERA_DEVICE_MEMORY_GIB");
    if (!text || !*text) return nullptr;
    char* end = nullptr;
    const double gib = std::strtod(text, &end);
    if (*end != '\0' || !(gib > 0))
        throw user_error("TESSERA_DEVICE_MEMORY_GIB", "\"" + std::string(text) + "\" is not a positive number of GiB",
                         "set it to the memory of the card to emulate, e.g. 24, or unset it");
    std::size_t free_bytes = 0, total = 0;
    TESSERA_CUDA(cudaMemGetInfo(&free_bytes, &total));
    const auto limit = std::size_t(gib * double(std::size_t(1) << 30));
    if (limit >= total) return nullptr;
    void* withheld = nullptr;
    // Fails only where others already hold more than total - limit: then less than the limit is free.
    if (cudaMalloc(&withheld, total - limit) != cudaSuccess) {
        cudaGetLastError();
        return nullptr;
    }
    return withheld;
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
    impl->withheld = withhold_device_memory();
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
    cudaFree(impl->withheld);
    cudaFreeHost(impl->labels);
    cudaFreeHost(impl->losses);
    cudaFreeHost(impl->ranks);
    cudaFreeHost(impl->pixels);
    cublasDestroy(impl->cublas);
    cudnnDestroy(impl->cudnn);
    cudaStreamDestroy(impl->stream);
}

void Context::synchronize() { TESSERA_CUDA(cudaStreamSynchronize(impl->stream)); }
std::size_t Context::workspace_bytes() const { return impl->workspace.bytes; }
std::size_t Context::device_bytes_in_use() const {
    return used_device_bytes() - std::min(used_device_bytes(), impl->baseline_bytes);
}

// Setup's copies and fills run on the legacy default stream, which the context's non-blocking stream
// does not wait for (and a copy from pageable memory may return before its DMA ends): wait for them
// before any step's kernel can read the parameters or their zeroed gradients.
inline void finish_setup() { TESSERA_CUDA(cudaDeviceSynchronize()); }

DeviceParams::DeviceParams(std::size_t values, std::size_t buffers) : value_count_(values), buffer_count_(buffers) {
    TESSERA_CUDA(cudaMalloc(&values_, std::max<std::size_t>(1, value_count_) * sizeof(float)));
    TESSERA_CUDA(cudaMalloc(&grads_, std::max<std::size_t>(1, value_count_) * sizeof(float)));
    TESSERA_CUDA(cudaMalloc(&buffers_, std::max<std::size_t>(1, buffer_count_) * sizeof(float)));
    TESSERA_CUDA(cudaMemset(grads_, 0, value_count_ * sizeof(float)));
    finish_setup();
}
DeviceParams::~DeviceParams() {
    cudaFree(values_);
    cudaFree(grads_);
    cudaFree(buffers_);
}
void DeviceParams::upload(const float* values, const float* buffers) {
    TESSERA_CUDA(cudaMemcpy(values_, values, value_count_ * sizeof(float), cudaMemcpyHostToDevice));
    TESSERA_CUDA(cudaMemcpy(buffers_, buffers, buffer_count_ * sizeof(float), cudaMemcpyHostToDevice));
    finish_setup();
}
void DeviceParams::download(float* values, float* grads, float* buffers) const {
    TESSERA_CUDA(cudaDeviceSynchronize());
    TESSERA_CUDA(cudaMemcpy(values, values_, value_count_ * sizeof(float), cudaMemcpyDeviceToHost));
    TESSERA_CUDA(cudaMemcpy(grads, grads_, value_count_ * sizeof(float), cudaMemcpyDeviceToHost));
    TESSERA_CUDA(cudaMemcpy(buffers, buffers_, buffer_count_ * sizeof(float), cudaMemcpyDeviceToHost));
}

void* Backend::stream(Context& ctx) { return ctx.impl->stream; }

std::string Backend::kernels(Context&) {
    int device = 0;
    cudaDeviceProp properties{};
    if (cudaGetDevice(&device) != cudaSuccess || cudaGetDeviceProperties(&properties, device) != cudaSuccess)
        return "cudnn " + std::to_string(cudnnGetVersion()) + ", cublas";
    return "cudnn " + std::to_string(cudnnGetVersion()) + ", cublas on " + properties.name;
}

namespace detail {

// A grid-stride kernel over n values on the context's stream (TESSERA_LAUNCH, for kernels whose
// template arguments hold a comma).
template <class... Params, class... Args>
void launch(Context& ctx, void (*kernel)(Params...), std::size_t n, Args... args) {
    if (n) kernel<<<kernels::blocks_for(n), kernels::threads, 0, ctx.impl->stream>>>(args...);
    TESSERA_CUDA(cudaGetLastError());
}

// n fp32 values (a layer's master weights, the logits' gradient) as the compute type T: the values
// themselves for fp32; the network's copy while one is valid (begin_weight_copies: cast once per
// forward and backward, never older than the weights); else a copy cast into the arena (released
// with the caller's mark).
template <class T>
const T* converted(Context& ctx, const float* values, std::size_t n) {
    const auto& w = ctx.impl->weights;
    if constexpr (std::is_same_v<T, float>) {
        return values;
    } else if (constexpr DType type = std::is_same_v<T, __half> ? DType::f16 : DType::bf16;
               w.valid && w.type == type && values >= w.values && values + n <= w.values + w.count) {
        return static_cast<const T*>(w.copy.data) + (values - w.values);
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

}  // namespace detail

void Backend::begin_weight_copies(Context& ctx, const float* values, std::size_t count) {
    auto& w = ctx.impl->weights;
    w.valid = false;
    if (ctx.activations == DType::f32 || count == 0) return;
    void* copy = w.copy.reserve(ctx.impl->stream, count * element_bytes(ctx.activations));
    detail::with_element_type(ctx.activations, [&](auto e) {
        using T = decltype(e);
        detail::launch(ctx, kernels::cast<T>, count, values, static_cast<T*>(copy), count);
    });
    w.values = values;
    w.count = count;
    w.type = ctx.activations;
    w.valid = true;
}
void Backend::end_weight_copies(Context& ctx) { ctx.impl->weights.valid = false; }

}  // namespace tessera::cuda
