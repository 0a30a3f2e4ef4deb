#pragma once
// tessera::cuda::Backend: the layers' kernels on one NVIDIA GPU, NHWC: convolutions on cuDNN 9, the
// classifier on cuBLAS, the rest on kernels of our own.
//
// Precision: fp32 (TF32 tensor cores allowed or not), or mixed: activations and their gradients in
// bf16 or fp16, with fp32 master weights, fp32 weight gradients, fp32 BatchNorm statistics and fp32
// logits, as PyTorch's autocast. A layer's weights are cast to the compute type as it runs.
//
// This header is plain C++: it declares the backend, so code compiled by the host compiler (the
// trainer, runner, tests) can use it. The definitions, kernels included, are in backend.cuh, which
// exactly one .cu file of a program includes.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "tessera/backend/backend.hpp"
#include "tessera/backend/ops.hpp"
#include "tessera/core/arena.hpp"
#include "tessera/core/shape.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/parallel/communicator.hpp"

namespace tessera::cuda {

/// Device memory for an arena (cudaMalloc / cudaFree).
struct DeviceMemory {
    static void* allocate(std::size_t bytes);
    static void free(void* p);
};

struct Settings {
    int device = 0;
    bool tf32 = true;                                    // let cuDNN and cuBLAS use TF32 tensor cores for fp32
    DType compute = DType::f32;                          // activations: fp32, or bf16 / fp16 (mixed precision)
    std::size_t workspace_limit = std::size_t(1) << 30;  // the most cuDNN's workspace may take, bytes
};

/// Is a CUDA device there? Never throws; `why` says what is missing when not.
bool device_available(std::string* why = nullptr);

class Context {
public:
    explicit Context(Settings settings = {});
    ~Context();
    Context(const Context&) = delete;
    Context& operator=(const Context&) = delete;

    DType activations = DType::f32;       // settings.compute
    BasicArena<DeviceMemory> arena;       // activations and scratch of one step
    BasicTensorPool<DeviceMemory> grads;  // gradients flowing back, each freed once used
    bool training = true;
    bool input_is_private = false;                      // as cpu::Context: a ReLU may overwrite its input
    const float* network_input = nullptr;               // the first layer skips its dx
    parallel::GradientHook* gradient_hook = nullptr;    // as cpu::Context
    parallel::Communicator* batchnorm_group = nullptr;  // as cpu::Context (device collectives: NCCL)
    Settings settings;

    struct Impl;  // handles, stream, algorithm cache, workspace
    std::unique_ptr<Impl> impl;

    void synchronize();
    /// Bytes of device memory this process holds now (cudaMemGetInfo), for peak-memory reports.
    std::size_t device_bytes_in_use() const;
    /// Bytes of cuDNN workspace held now: what the chosen algorithms need, not workspace_limit.
    std::size_t workspace_bytes() const;
};

/// The device copy of a network's three flat buffers: `values` parameters, as many gradients (zeroed),
/// `buffers` statistics.
class DeviceParams {
public:
    DeviceParams(std::size_t values, std::size_t buffers);
    ~DeviceParams();
    DeviceParams(const DeviceParams&) = delete;
    DeviceParams& operator=(const DeviceParams&) = delete;

    /// The three device pointers as an M (ParamStore::Memory): values, grads, buffers.
    template <class M>
    M memory() const {
        return M{values_, grads_, buffers_};
    }
    /// Host values and statistics to the device; the device's values, gradients and statistics to
    /// the host (after the work queued so far).
    void upload(const float* values, const float* buffers);
    void download(float* values, float* grads, float* buffers) const;

private:
    float *values_ = nullptr, *grads_ = nullptr, *buffers_ = nullptr;
    std::size_t value_count_ = 0, buffer_count_ = 0;
};

struct Backend {
    using Context = cuda::Context;
    static constexpr const char* name = "cuda";
    static constexpr bool has_device_memory = true;
    using DeviceParams = cuda::DeviceParams;

    static void* stream(Context& ctx);
    /// The kernels this process runs: "cudnn 9.x, cublas on <the device's name>".
    static std::string kernels(Context& ctx);
    static void fill_zero(Context& ctx, float* data, std::size_t count);
    static void add_scalar(Context& ctx, float* data, float value);
    /// Flat device vectors of n floats: y = a x + b y (y unread when b is 0); y *= a; the sum of
    /// squares (read back: synchronises).
    static void axpby(Context& ctx, float a, const float* x, float b, float* y, std::size_t n);
    static void scale(Context& ctx, float* y, std::size_t n, float a);
    static double sum_squares(Context& ctx, const float* x, std::size_t n);

    /// The network's `count` fp32 weights at `values` cast to the compute type (bf16, fp16) once, for
    /// the convolutions and the classifier of one forward and its backward, instead of once per layer
    /// and pass; end_weight_copies() when the weights may change (models/network.hpp calls both).
    /// Nothing in fp32.
    static void begin_weight_copies(Context& ctx, const float* values, std::size_t count);
    static void end_weight_copies(Context& ctx);

    static void conv_forward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& y);
    static void conv_backward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& dy,
                              float* dw, const Tensor& dx);
    static void batchnorm_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved,
                                  const Tensor& y);
    static void batchnorm_backward(Context& ctx, const Tensor& x, const Tensor& dy, const BatchNormParams& p,
                                   BatchNormSaved saved, float* dgamma, float* dbeta, const Tensor& dx);
    /// BatchNorm then ReLU in the same passes (backend.hpp's FusedBatchNormReLU); backward recomputes
    /// the ReLU's mask from x, so y is not read.
    static void batchnorm_relu_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved,
                                       const Tensor& y);
    static void batchnorm_relu_backward(Context& ctx, const Tensor& x, const Tensor& y, const Tensor& dy,
                                        const BatchNormParams& p, BatchNormSaved saved, float* dgamma, float* dbeta,
                                        const Tensor& dx);
    static void relu_forward(Context& ctx, const Tensor& x, const Tensor& y);
    static void relu_backward(Context& ctx, const Tensor& y, const Tensor& dy, const Tensor& dx);
    static void add(Context& ctx, const Tensor& a, const Tensor& b, const Tensor& y);
    static void accumulate(Context& ctx, const Tensor& x, const Tensor& y);
    static void maxpool_forward(Context& ctx, const Tensor& x, const PoolGeometry& g, const Tensor& y,
                                std::int32_t* argmax);
    static void maxpool_backward(Context& ctx, const Tensor& dy, const std::int32_t* argmax, const PoolGeometry& g,
                                 const Tensor& dx);
    static void global_avgpool_forward(Context& ctx, const Tensor& x, const Tensor& y);
    static void global_avgpool_backward(Context& ctx, const Tensor& dy, const Tensor& dx);
    static void linear_forward(Context& ctx, const Tensor& x, const float* w, const float* b, int out, const Tensor& y);
    static void linear_backward(Context& ctx, const Tensor& x, const float* w, const Tensor& dy, int out, float* dw,
                                float* db, const Tensor& dx);
    /// pixels (host, uint8 NHWC) -> x (device). mean and inv_std are host arrays of C floats.
    static void normalize_images(Context& ctx, const std::uint8_t* pixels, const float* mean, const float* inv_std,
                                 const Tensor& x);
    /// labels are host memory; the result is read back, so this synchronises once per step.
    /// Waits for the stream; bf16 and fp16 tensors come back widened to float.
    static void copy_to_host(Context& ctx, const Tensor& x, float* host);
    static LossResult softmax_cross_entropy(Context& ctx, const Tensor& logits, const std::int32_t* labels,
                                            float label_smoothing, float* dlogits);
};

static_assert(tessera::Backend<Backend>, "cuda::Backend lacks a kernel of backend/backend.hpp's checklist");
static_assert(FusedBatchNormReLU<Backend>, "cuda::Backend's fused BatchNorm + ReLU does not match the concept");

}  // namespace tessera::cuda
