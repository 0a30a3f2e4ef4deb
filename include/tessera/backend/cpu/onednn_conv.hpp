#pragma once
// Convolutions through oneDNN (the library PyTorch's CPU convolutions use), on tessera's own layouts:
// activations NHWC, filters OHWI. oneDNN picks its kernels when the process runs, from what cpuid
// reports (AVX2, AVX-512, AMX), so one build is fast on every x86-64 CPU.
//
// One OneDnnConv holds the three primitives of one convolution at one input shape: forward,
// backward data and backward weights, each with the filter layout it prefers (a blocked one) and the
// reorders between that layout and OHWI. The filter gradient is accumulated (+=), as every tessera
// kernel does, by a reorder with a sum post-op.
//
// In bf16 (mixed precision) the activations and their gradients are bf16, the filters are cast to
// bf16 by the reorders into the primitives' layouts, and the filter gradient is computed and
// accumulated in fp32: fp32 master weights, as on CUDA and under PyTorch's autocast.
//
// Some filter gradients run as one oneDNN call per thread, each on one thread over its share of the
// batch, their sums then added in the shares' order (filter_gradient_by_batch_shares); bf16 stride-1
// 3x3 ones of up to 64 channels run on tessera's own kernel instead (PairedFilterGradient) on CPUs
// without AMX, where it beat oneDNN's. filter_gradient_calls holds the rule and its measurements.
#include <dnnl.hpp>
#include <omp.h>

#include <cstddef>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "tessera/backend/cpu/openmp_threads.hpp"
#include "tessera/backend/cpu/paired_filter_gradient.hpp"
#include "tessera/backend/ops.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

/// Whether oneDNN's kernels here (chosen from cpuid) include those of `isa`: oneDNN's ISA values are
/// bit sets, each holding the bits of the sets it extends.
inline bool onednn_runs(dnnl_cpu_isa_t isa) {
    const unsigned bits = unsigned(isa);
    return (unsigned(dnnl_get_effective_cpu_isa()) & bits) == bits;
}

/// Whether oneDNN runs AVX-512 kernels here (avx512_core or above).
inline bool onednn_has_avx512() { return onednn_runs(dnnl_cpu_isa_avx512_core); }

/// Whether the CPU multiplies bf16 in hardware (AVX512-BF16, which every AMX-BF16 CPU also has).
inline bool has_bf16_instructions() { return onednn_runs(dnnl_cpu_isa_avx512_core_bf16); }

/// Whether oneDNN runs AMX kernels here (avx512_core_amx): its bf16 convolutions then multiply on the
/// tile unit, several times faster than AVX512-BF16's dot products.
inline bool onednn_has_amx() { return onednn_runs(dnnl_cpu_isa_avx512_core_amx); }

/// Whether a filter gradient runs as one oneDNN call per thread, each on one thread over its share of
/// the batch (the shares' sums then added in order, so the result does not depend on timing),
/// instead of one call on all of them. oneDNN 2.6's bf16 kernel (jit_bf16, avx512_core_bf16) splits
/// a strided 3x3 convolution's filter gradient poorly between threads: one call on 2 threads took as
/// long as on one, and inside a training step (its verbose log) 4.0 and 5.1 ms instead of about 1.
/// CpuFilterGradient in bench/blocks.cpp, 2 threads, AMD EPYC with AVX512-BF16, ms per call, whole
/// batch against shares: ResNet-20's 16->32 at 28x28, batch 128, 1.29 against 0.73, 32->64 at 14x14
/// 1.70 against 0.95; ResNet50's, batch 32, from 64 channels at 56x56 on, gained little or lost
/// (512->512 at 7x7: 19.3 against 29.5), and fp32 gained nothing.
/// On AMX (oneDNN's avx512_core_amx) the tile kernel splits a stride-1 one poorly too where the
/// output is small: CpuFilterGradient on an Intel Xeon with AMX, batch 128, medians of 3, ms, whole
/// against shares: 64->64 at 7x7 0.902 against 0.639, while 32->32 at 14x14 (0.480 against 0.530) and
/// 16->16 at 28x28 (0.535 against 0.543) gained nothing; the strided ones were within 5%.
inline bool filter_gradient_by_batch_shares(const ConvGeometry& g, Shape x, DType activations) {
    if (activations != DType::bf16 || g.kernel != 3 || g.in_channels > 64) return false;
    const Shape y = g.output_shape(x);
    return g.stride > 1 || (onednn_has_amx() && y.h * y.w <= 64);
}

/// How a OneDnnConv computes its filter gradient: by the rule below, or as told (the benchmark that
/// measures the rule). whole_batch: one oneDNN call; batch_shares: one per thread, over its share of
/// the batch; image_pairs: PairedFilterGradient, tessera's own AVX512-BF16 kernel.
enum class FilterGradientCalls { by_rule, whole_batch, batch_shares, image_pairs };

/// The rule. image_pairs for bf16 3x3 stride-1 convolutions of up to 64 input channels, on CPUs with
/// AVX512-BF16 and no AMX. CpuFilterGradient in bench/blocks.cpp, 2 threads, batch 128, ms per call,
/// oneDNN (whole batch) against image pairs:
///  - AMD EPYC with AVX512-BF16: 16 channels at 28x28 1.55 and 1.54 against 1.23 and 1.27; 32 at
///    14x14 1.43 and 1.37 against 1.25 and 1.23; 64 at 7x7 1.67 and 1.87 against 1.45 and 1.49. Wider
///    layers stay with oneDNN: a thread's copy of dw outgrows the cache.
///  - Intel Xeon with AMX (oneDNN's avx512_core_amx): 0.57, 0.51 and 0.97 against 2.12, 2.03 and
///    2.08; the tile unit wins every shape by 2x to 4x.
inline FilterGradientCalls filter_gradient_calls(const ConvGeometry& g, Shape x, DType activations) {
    if (activations == DType::bf16 && PairedFilterGradient::fits(g) && g.in_channels <= 64 && has_bf16_instructions() &&
        !onednn_has_amx())
        return FilterGradientCalls::image_pairs;
    return filter_gradient_by_batch_shares(g, x, activations) ? FilterGradientCalls::batch_shares
                                                              : FilterGradientCalls::whole_batch;
}

namespace onednn_detail {

using tag = dnnl::memory::format_tag;
using dt = dnnl::memory::data_type;

inline dnnl::memory::dim dim(int v) { return dnnl::memory::dim(v); }

/// `data` as a memory of `desc` (a handle: nothing is copied), of desc's element type.
inline dnnl::memory handle(const dnnl::memory::desc& desc, const dnnl::engine& engine, const void* data) {
    return dnnl::memory(desc, engine, const_cast<void*>(data));
}

/// One convolution at one input shape, as oneDNN describes it: NHWC activations, filters in any
/// layout the primitive prefers, the user's filters OHWI fp32.
struct Problem {
    dnnl::memory::desc src, dst, any_weights, any_gradient, user_weights;
    dnnl::memory::dims strides, padding;

    Problem(const ConvGeometry& g, Shape x, DType activations) : strides{g.stride, g.stride}, padding{g.pad, g.pad} {
        const Shape y = g.output_shape(x);
        const dnnl::memory::dims weights{g.out_channels, g.in_channels, g.kernel, g.kernel};
        const dt compute = activations == DType::bf16 ? dt::bf16 : dt::f32;
        src = {{dim(x.n), dim(x.c), dim(x.h), dim(x.w)}, compute, tag::nhwc};
        dst = {{dim(y.n), dim(y.c), dim(y.h), dim(y.w)}, compute, tag::nhwc};
        any_weights = {weights, compute, tag::any};
        any_gradient = {weights, dt::f32, tag::any};
        user_weights = {weights, dt::f32, tag::ohwi};
    }
    dnnl::convolution_forward::primitive_desc forward(const dnnl::primitive_attr& attr,
                                                      const dnnl::engine& engine) const {
        return {{dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct, src, any_weights, dst, strides,
                 padding, padding},
                attr,
                engine};
    }
};

/// The primitives' attributes: one scratchpad, the caller's, allocated once, not per call.
inline dnnl::primitive_attr user_scratchpad() {
    dnnl::primitive_attr attr;
    attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
    return attr;
}

/// A scratchpad of `bytes`.
inline dnnl::memory scratchpad(const dnnl::engine& engine, std::size_t bytes) {
    return dnnl::memory({{dnnl::memory::dim(bytes)}, dt::u8, tag::x}, engine);
}

/// A filter gradient: oneDNN's primitive, the gradient in the layout it writes, and the reorder that
/// adds it into the OHWI fp32 gradient (a reorder with a sum post-op: dw +=).
struct FilterGradient {
    dnnl::convolution_backward_weights primitive;
    dnnl::memory gradient;
    dnnl::reorder add;
    dnnl::memory::desc src, dst;
    std::size_t scratchpad_bytes = 0;

    FilterGradient() = default;
    FilterGradient(const dnnl::engine& engine, const Problem& p,
                   const dnnl::convolution_forward::primitive_desc& forward)
        : src(p.src), dst(p.dst) {
        const dnnl::convolution_backward_weights::primitive_desc pd(
            dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, p.src, p.any_gradient, p.dst,
                                                     p.strides, p.padding, p.padding),
            user_scratchpad(), engine, forward);
        primitive = dnnl::convolution_backward_weights(pd);
        gradient = dnnl::memory(pd.diff_weights_desc(), engine);
        dnnl::primitive_attr accumulate;
        dnnl::post_ops sum;
        sum.append_sum(1.f);
        accumulate.set_post_ops(sum);
        add = dnnl::reorder(
            dnnl::reorder::primitive_desc(engine, gradient.get_desc(), engine, p.user_weights, accumulate));
        scratchpad_bytes = pd.scratchpad_desc().get_size();
    }
    /// gradient = the filter gradient of (x, dy), x and dy given as raw handles of src's and dst's type.
    void compute(dnnl::stream& s, const dnnl::engine& engine, const void* x, const void* dy,
                 const dnnl::memory& scratchpad) {
        primitive.execute(s, {{DNNL_ARG_SRC, handle(src, engine, x)},
                              {DNNL_ARG_DIFF_DST, handle(dst, engine, dy)},
                              {DNNL_ARG_DIFF_WEIGHTS, gradient},
                              {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
};

/// One share of the batch's filter gradient, on one thread: its own primitive (made for one thread),
/// stream and scratchpad, and where its images start in the batch's x and dy.
struct BatchShare {
    FilterGradient gradient;
    dnnl::stream stream;
    dnnl::memory scratchpad;
    std::size_t x_offset, dy_offset;  // bytes
};

/// OpenMP's thread count for primitives made while it lives, as oneDNN reads it when it plans a
/// primitive's split between threads; the count before is restored after.
class OpenMpThreadsForPlanning {
public:
    explicit OpenMpThreadsForPlanning(int threads) : before_(omp_get_max_threads()) { omp_set_num_threads(threads); }
    ~OpenMpThreadsForPlanning() { omp_set_num_threads(before_); }
    OpenMpThreadsForPlanning(const OpenMpThreadsForPlanning&) = delete;
    OpenMpThreadsForPlanning& operator=(const OpenMpThreadsForPlanning&) = delete;

private:
    int before_;
};

}  // namespace onednn_detail

class OneDnnConv {
public:
    OneDnnConv(const dnnl::engine& engine, const ConvGeometry& g, Shape x, DType activations,
               FilterGradientCalls calls = FilterGradientCalls::by_rule)
        : engine_(engine) {
        using namespace onednn_detail;
        const Problem p(g, x, activations);
        src_ = p.src;
        dst_ = p.dst;
        user_weights_ = p.user_weights;
        const dnnl::primitive_attr attr = user_scratchpad();

        const dnnl::convolution_forward::primitive_desc forward = p.forward(attr, engine);
        const dnnl::convolution_backward_data::primitive_desc backward_data(
            dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, p.src, p.any_weights, p.dst,
                                                  p.strides, p.padding, p.padding),
            attr, engine, forward);
        forward_ = dnnl::convolution_forward(forward);
        backward_data_ = dnnl::convolution_backward_data(backward_data);
        kernel_ = forward.impl_info_str();
        forward_weights_ = weights_in(forward.weights_desc());
        data_weights_ = weights_in(backward_data.weights_desc());

        const int threads = omp_get_max_threads();
        if (calls == FilterGradientCalls::by_rule) calls = filter_gradient_calls(g, x, activations);
        if (calls == FilterGradientCalls::image_pairs) {
            TESSERA_CHECK(activations == DType::bf16 && PairedFilterGradient::fits(g) && has_bf16_instructions(),
                          "OneDnnConv: image_pairs computes bf16 3x3 stride-1 filter gradients, with AVX512-BF16");
            pairs_.emplace(g, x, threads);
        } else if (calls == FilterGradientCalls::batch_shares && threads > 1 && x.n > 1) {
            const Split split(std::size_t(x.n), std::size_t(threads), 1);
            const Shape y = g.output_shape(x);
            const std::size_t x_image = Shape{1, x.h, x.w, x.c}.size() * element_bytes(activations),
                              dy_image = Shape{1, y.h, y.w, y.c}.size() * element_bytes(activations);
            const OpenMpThreadsForPlanning one(1);
            for (std::size_t t = 0; t < split.chunks; ++t) {
                const Shape share{int(split.end(t) - split.begin(t)), x.h, x.w, x.c};
                const Problem q(g, share, activations);
                FilterGradient gradient(engine, q, q.forward(attr, engine));
                dnnl::memory pad = scratchpad(engine, gradient.scratchpad_bytes);
                shares_.push_back({std::move(gradient), dnnl::stream(engine), pad, split.begin(t) * x_image,
                                   split.begin(t) * dy_image});
            }
        } else {
            whole_ = FilterGradient(engine, p, forward);
        }
        scratchpad_ =
            scratchpad(engine, std::max({forward.scratchpad_desc().get_size(),
                                         backward_data.scratchpad_desc().get_size(), whole_.scratchpad_bytes}));
    }

    /// y = conv(x, w); x, y, dx and dy are in the activations' type, w and dw fp32.
    void forward(dnnl::stream& s, const float* x, const float* w, float* y) {
        forward_.execute(s, {{DNNL_ARG_SRC, in(src_, x)},
                             {DNNL_ARG_WEIGHTS, weights(s, forward_weights_, w)},
                             {DNNL_ARG_DST, in(dst_, y)},
                             {DNNL_ARG_SCRATCHPAD, scratchpad_}});
        s.wait();
    }

    /// dx = conv_transpose(dy, w).
    void backward_data(dnnl::stream& s, const float* dy, const float* w, float* dx) {
        backward_data_.execute(s, {{DNNL_ARG_DIFF_DST, in(dst_, dy)},
                                   {DNNL_ARG_WEIGHTS, weights(s, data_weights_, w)},
                                   {DNNL_ARG_DIFF_SRC, in(src_, dx)},
                                   {DNNL_ARG_SCRATCHPAD, scratchpad_}});
        s.wait();
    }

    /// dw += the filter gradient of (x, dy).
    void backward_weights(dnnl::stream& s, const float* x, const float* dy, float* dw) {
        if (pairs_) {
            pairs_->accumulate(x, dy, dw);
            return;
        }
        dnnl::memory user = in(user_weights_, dw);
        if (shares_.empty()) {
            whole_.compute(s, engine_, x, dy, scratchpad_);
            whole_.add.execute(s, whole_.gradient, user);
            s.wait();
            return;
        }
        // Share t on thread t, its primitive planned for one thread (oneDNN runs it on the calling thread
        // inside this parallel region); then the shares' gradients added in order.
        OpenMpThreads(int(shares_.size())).parallel_for(shares_.size(), [&](std::size_t t0, std::size_t t1) {
            for (std::size_t t = t0; t < t1; ++t) {
                onednn_detail::BatchShare& share = shares_[t];
                share.gradient.compute(share.stream, engine_, reinterpret_cast<const char*>(x) + share.x_offset,
                                       reinterpret_cast<const char*>(dy) + share.dy_offset, share.scratchpad);
                share.stream.wait();
            }
        });
        for (onednn_detail::BatchShare& share : shares_) share.gradient.add.execute(s, share.gradient.gradient, user);
        s.wait();
    }

    /// oneDNN's name for the forward kernel it chose ("jit:avx2", "brg:avx512_core_amx", …).
    const std::string& kernel() const { return kernel_; }

private:
    dnnl::memory in(const dnnl::memory::desc& desc, const float* data) const {  // data: of desc's type
        return onednn_detail::handle(desc, engine_, data);
    }

    /// The layout a primitive wants its filters in, with the reorder from OHWI (none when it is OHWI).
    struct Weights {
        dnnl::memory memory;
        dnnl::reorder from_user;
        bool reordered = false;
    };
    Weights weights_in(const dnnl::memory::desc& wanted) {
        if (wanted == user_weights_) return {};
        dnnl::memory memory(wanted, engine_);
        return {memory, dnnl::reorder(dnnl::reorder::primitive_desc(engine_, user_weights_, engine_, wanted)), true};
    }
    /// w in the layout `target` wants: the filters change every step, so they are reordered every call.
    dnnl::memory weights(dnnl::stream& s, Weights& target, const float* w) {
        dnnl::memory user = in(user_weights_, w);
        if (!target.reordered) return user;
        target.from_user.execute(s, user, target.memory);
        return target.memory;
    }

    dnnl::engine engine_;
    dnnl::memory::desc src_, dst_, user_weights_;
    dnnl::convolution_forward forward_;
    dnnl::convolution_backward_data backward_data_;
    onednn_detail::FilterGradient whole_;            // the filter gradient in one call,
    std::vector<onednn_detail::BatchShare> shares_;  // or by shares of the batch,
    std::optional<PairedFilterGradient> pairs_;      // or by tessera's kernel
    Weights forward_weights_, data_weights_;
    dnnl::memory scratchpad_;
    std::string kernel_;
};

/// oneDNN's engine and stream, and the convolutions met so far, one per (geometry, input shape, type):
/// a network has a few dozen, and a run meets two batch shapes at most (a last partial batch).
class OneDnnConvs {
public:
    OneDnnConv& at(const ConvGeometry& g, Shape x, DType activations = DType::f32) {
        const auto key =
            std::make_tuple(g.in_channels, g.out_channels, g.kernel, g.stride, g.pad, x.n, x.h, x.w, activations);
        auto it = convs_.find(key);
        if (it == convs_.end())
            it = convs_.emplace(key, std::make_unique<OneDnnConv>(engine_, g, x, activations)).first;
        return *it->second;
    }
    dnnl::stream& stream() { return stream_; }

private:
    dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream_{engine_};
    std::map<std::tuple<int, int, int, int, int, int, int, int, DType>, std::unique_ptr<OneDnnConv>> convs_;
};

}  // namespace tessera::cpu
