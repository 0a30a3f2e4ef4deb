#pragma once
// Convolutions on cuDNN: descriptors, the algorithm each shape runs (found once with
// cudnnFind*AlgorithmEx), forward and backward.
#include "tessera/backend/cuda/context.cuh"
#include "tessera/backend/cuda/elementwise.cuh"

namespace tessera::cuda {

namespace detail {

inline cudnnDataType_t cudnn_type(DType t) {
    return t == DType::f32 ? CUDNN_DATA_FLOAT : t == DType::bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_HALF;
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

}  // namespace detail

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

}  // namespace tessera::cuda
