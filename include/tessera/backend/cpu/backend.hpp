#pragma once
// tessera::cpu::Backend: the tag type layers take as their Backend parameter. It names the context
// type and the kernels; a second backend (CUDA) provides the same names over device memory.
#include <dnnl_debug.h>

#include <algorithm>
#include <string>

#include "tessera/backend/backend.hpp"
#include "tessera/backend/cpu/batchnorm.hpp"
#include "tessera/backend/cpu/context.hpp"
#include "tessera/backend/cpu/conv.hpp"
#include "tessera/backend/cpu/elementwise.hpp"
#include "tessera/backend/cpu/linear.hpp"
#include "tessera/backend/cpu/loss.hpp"
#include "tessera/backend/cpu/pool.hpp"

namespace tessera::cpu {

/// The instruction set oneDNN runs its kernels with, chosen from cpuid: "avx2", "avx512_core_amx".
inline std::string onednn_isa() {
    std::string isa = dnnl_cpu_isa2str(dnnl_get_effective_cpu_isa());  // "cpu_isa_avx2"
    if (isa.rfind("cpu_isa_", 0) == 0) isa.erase(0, 8);
    return isa;
}

struct Backend {
    using Context = cpu::Context;
    static constexpr const char* name = "cpu";
    static constexpr bool has_device_memory = false;  // layers work on the host's parameter buffers
    struct DeviceParams {};                           // never made

    static void* stream(Context&) { return nullptr; }
    /// The kernels this process runs, as oneDNN and OpenBLAS chose them from cpuid when it started:
    /// "onednn avx2, openblas Haswell".
    static std::string kernels(Context&) { return "onednn " + onednn_isa() + ", openblas " + openblas_get_corename(); }
    static void fill_zero(Context&, float* data, std::size_t count) { std::fill(data, data + count, 0.f); }
    static void add_scalar(Context&, float* data, float value) { *data += value; }
    /// Flat vectors of n floats: y = a x + b y (y unread when b is 0); y *= a; the sum of squares.
    static void axpby(Context& ctx, float a, const float* x, float b, float* y, std::size_t n) {
        cpu::axpby(ctx, a, x, b, y, n);
    }
    static void scale(Context& ctx, float* y, std::size_t n, float a) { cpu::scale(ctx, y, n, a); }
    static double sum_squares(Context&, const float* x, std::size_t n) { return cpu::sum_squares(x, n); }

    static void conv_forward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& y) {
        cpu::conv_forward(ctx, x, w, g, y);
    }
    static void conv_backward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& dy,
                              float* dw, const Tensor& dx) {
        cpu::conv_backward(ctx, x, w, g, dy, dw, dx);
    }
    static void batchnorm_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved,
                                  const Tensor& y) {
        cpu::batchnorm_forward(ctx, x, p, saved, ctx.training, false, y);
    }
    static void batchnorm_backward(Context& ctx, const Tensor& x, const Tensor& dy, const BatchNormParams& p,
                                   BatchNormSaved saved, float* dgamma, float* dbeta, const Tensor& dx) {
        cpu::batchnorm_backward(ctx, x, Tensor{}, dy, p, saved, ctx.training, dgamma, dbeta, dx);
    }
    /// BatchNorm then ReLU in the same passes (backend.hpp's FusedBatchNormReLU).
    static void batchnorm_relu_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved,
                                       const Tensor& y) {
        cpu::batchnorm_forward(ctx, x, p, saved, ctx.training, true, y);
    }
    static void batchnorm_relu_backward(Context& ctx, const Tensor& x, const Tensor& y, const Tensor& dy,
                                        const BatchNormParams& p, BatchNormSaved saved, float* dgamma, float* dbeta,
                                        const Tensor& dx) {
        cpu::batchnorm_backward(ctx, x, y, dy, p, saved, ctx.training, dgamma, dbeta, dx);
    }
    static void relu_forward(Context& ctx, const Tensor& x, const Tensor& y) { cpu::relu_forward(ctx, x, y); }
    static void relu_backward(Context& ctx, const Tensor& y, const Tensor& dy, const Tensor& dx) {
        cpu::relu_backward(ctx, y, dy, dx);
    }
    static void add(Context& ctx, const Tensor& a, const Tensor& b, const Tensor& y) { cpu::add(ctx, a, b, y); }
    static void accumulate(Context& ctx, const Tensor& x, const Tensor& y) { cpu::accumulate(ctx, x, y); }
    static void maxpool_forward(Context& ctx, const Tensor& x, const PoolGeometry& g, const Tensor& y,
                                std::int32_t* argmax) {
        cpu::maxpool_forward(ctx, x, g, y, argmax);
    }
    static void maxpool_backward(Context& ctx, const Tensor& dy, const std::int32_t* argmax, const PoolGeometry&,
                                 const Tensor& dx) {
        cpu::maxpool_backward(ctx, dy, argmax, dx);
    }
    static void global_avgpool_forward(Context& ctx, const Tensor& x, const Tensor& y) {
        cpu::global_avgpool_forward(ctx, x, y);
    }
    static void global_avgpool_backward(Context& ctx, const Tensor& dy, const Tensor& dx) {
        cpu::global_avgpool_backward(ctx, dy, dx);
    }
    static void linear_forward(Context& ctx, const Tensor& x, const float* w, const float* b, int out,
                               const Tensor& y) {
        cpu::linear_forward(ctx, x, w, b, out, y);
    }
    static void linear_backward(Context& ctx, const Tensor& x, const float* w, const Tensor& dy, int out, float* dw,
                                float* db, const Tensor& dx) {
        cpu::linear_backward(ctx, x, w, dy, out, dw, db, dx);
    }
    static void normalize_images(Context& ctx, const std::uint8_t* pixels, const float* mean, const float* inv_std,
                                 const Tensor& x) {
        cpu::normalize_images(ctx, pixels, mean, inv_std, x);
    }
    static void copy_to_host(Context&, const Tensor& x, float* host) { cpu::widen_to(x, host); }
    static LossResult softmax_cross_entropy(Context&, const Tensor& logits, const std::int32_t* labels,
                                            float label_smoothing, float* dlogits) {
        return cpu::softmax_cross_entropy(logits, labels, label_smoothing, dlogits);
    }
};

static_assert(tessera::Backend<Backend>, "cpu::Backend lacks a kernel of backend/backend.hpp's checklist");
static_assert(tessera::FusedBatchNormReLU<Backend>, "cpu::Backend runs BatchNorm and ReLU in the same passes");

}  // namespace tessera::cpu
