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
#include <dnnl.hpp>

#include <map>
#include <memory>
#include <string>
#include <tuple>

#include "tessera/backend/ops.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

/// Whether oneDNN runs AVX-512 kernels here (avx512_core or above, from cpuid).
inline bool onednn_has_avx512() {
    const unsigned isa = unsigned(dnnl_get_effective_cpu_isa()), avx512 = unsigned(dnnl_cpu_isa_avx512_core);
    return (isa & avx512) == avx512;
}

class OneDnnConv {
public:
    using tag = dnnl::memory::format_tag;
    using dt = dnnl::memory::data_type;

    OneDnnConv(const dnnl::engine& engine, const ConvGeometry& g, Shape x, DType activations) : engine_(engine) {
        const Shape y = g.output_shape(x);
        const dnnl::memory::dims src{dim(x.n), dim(x.c), dim(x.h), dim(x.w)},
            dst{dim(y.n), dim(y.c), dim(y.h), dim(y.w)}, weights{g.out_channels, g.in_channels, g.kernel, g.kernel},
            strides{g.stride, g.stride}, padding{g.pad, g.pad};
        const dt compute = activations == DType::bf16 ? dt::bf16 : dt::f32;
        src_ = {src, compute, tag::nhwc};
        dst_ = {dst, compute, tag::nhwc};
        user_weights_ = {weights, dt::f32, tag::ohwi};
        const dnnl::memory::desc any_weights(weights, compute, tag::any), any_gradient(weights, dt::f32, tag::any);
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // one scratchpad, allocated here, not per call

        const dnnl::convolution_forward::primitive_desc forward(
            dnnl::convolution_forward::desc(dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
                                            src_, any_weights, dst_, strides, padding, padding),
            attr, engine);
        const dnnl::convolution_backward_data::primitive_desc backward_data(
            dnnl::convolution_backward_data::desc(dnnl::algorithm::convolution_direct, src_, any_weights, dst_, strides,
                                                  padding, padding),
            attr, engine, forward);
        const dnnl::convolution_backward_weights::primitive_desc backward_weights(
            dnnl::convolution_backward_weights::desc(dnnl::algorithm::convolution_direct, src_, any_gradient, dst_,
                                                     strides, padding, padding),
            attr, engine, forward);
        forward_ = dnnl::convolution_forward(forward);
        backward_data_ = dnnl::convolution_backward_data(backward_data);
        backward_weights_ = dnnl::convolution_backward_weights(backward_weights);
        kernel_ = forward.impl_info_str();

        forward_weights_ = weights_in(forward.weights_desc());
        data_weights_ = weights_in(backward_data.weights_desc());
        weights_gradient_ = dnnl::memory(backward_weights.diff_weights_desc(), engine);
        dnnl::primitive_attr accumulate;
        dnnl::post_ops sum;
        sum.append_sum(1.f);
        accumulate.set_post_ops(sum);
        add_gradient_ = dnnl::reorder(
            dnnl::reorder::primitive_desc(engine, weights_gradient_.get_desc(), engine, user_weights_, accumulate));
        const std::size_t scratch =
            std::max({forward.scratchpad_desc().get_size(), backward_data.scratchpad_desc().get_size(),
                      backward_weights.scratchpad_desc().get_size()});
        scratchpad_ = dnnl::memory({{dnnl::memory::dim(scratch)}, dt::u8, tag::x}, engine);
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
        backward_weights_.execute(s, {{DNNL_ARG_SRC, in(src_, x)},
                                      {DNNL_ARG_DIFF_DST, in(dst_, dy)},
                                      {DNNL_ARG_DIFF_WEIGHTS, weights_gradient_},
                                      {DNNL_ARG_SCRATCHPAD, scratchpad_}});
        dnnl::memory user = in(user_weights_, dw);
        add_gradient_.execute(s, weights_gradient_, user);
        s.wait();
    }

    /// oneDNN's name for the forward kernel it chose ("jit:avx2", "brg:avx512_core_amx", …).
    const std::string& kernel() const { return kernel_; }

private:
    static dnnl::memory::dim dim(int v) { return dnnl::memory::dim(v); }

    dnnl::memory in(const dnnl::memory::desc& desc, const float* data) const {  // data: a handle, of desc's type
        return dnnl::memory(desc, engine_, const_cast<float*>(data));
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
    dnnl::convolution_backward_weights backward_weights_;
    Weights forward_weights_, data_weights_;
    dnnl::memory weights_gradient_, scratchpad_;
    dnnl::reorder add_gradient_;
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
