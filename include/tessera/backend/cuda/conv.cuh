#pragma once
// Convolutions on cuDNN: descriptors, the algorithm each shape runs (found once with
// cudnnFind*AlgorithmEx), forward and backward.
#include "tessera/backend/cuda/algorithm_cache.hpp"
#include "tessera/backend/cuda/channel_padding.hpp"
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
// The math type a convolution's descriptor is made with, and searched in: tensor cores for bf16 and
// fp16, and for fp32 when TF32 is allowed.
inline cudnnMathType_t search_math_type(DType t, bool tf32) {
    return t != DType::f32 || tf32 ? CUDNN_TENSOR_OP_MATH : CUDNN_FMA_MATH;
}
// Accumulation in fp32 whatever the data type (cuDNN's PSEUDO_HALF and PSEUDO_BFLOAT16 configurations);
// tensor cores for bf16 and fp16, and for fp32 when TF32 is allowed.
struct ConvDesc {
    cudnnConvolutionDescriptor_t d{};
    ConvDesc(const ConvGeometry& g, DType t, bool tf32) {
        TESSERA_CUDA(cudnnCreateConvolutionDescriptor(&d));
        TESSERA_CUDA(cudnnSetConvolution2dDescriptor(d, g.pad, g.pad, g.stride, g.stride, 1, 1, CUDNN_CROSS_CORRELATION,
                                                     CUDNN_DATA_FLOAT));
        TESSERA_CUDA(cudnnSetConvolutionMathType(d, search_math_type(t, tf32)));
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

// cudnnFind*AlgorithmEx lists algorithms fastest first; the first that ran is the one, with the math
// type it ran in.
template <class Perf>
ConvChoice fastest(const Perf* perf, int found, int batch, const char* call) {
    for (int i = 0; i < found; ++i)
        if (perf[i].status == CUDNN_STATUS_SUCCESS) return {int(perf[i].algo), int(perf[i].mathType), batch};
    throw internal_error(call, "no algorithm for this convolution");
}

// The scratch a search (cudnnFind*AlgorithmEx, which returns when its timings are done) may try
// algorithms in: workspace_limit, or half as much again and again down to 16 MiB where the card has
// less free (cudnnFind then skips the algorithms that need more), for as long as the search runs.
struct FindWorkspace {
    void* data = nullptr;
    std::size_t bytes = 0;
    explicit FindWorkspace(const Context& ctx) {
        for (bytes = ctx.settings.workspace_limit; bytes > 0; bytes = bytes / 2 >= (16u << 20) ? bytes / 2 : 0) {
            if (cudaMalloc(&data, bytes) == cudaSuccess) return;
            cudaGetLastError();  // the failed allocation is not an error of the next call
        }
        data = nullptr;
    }
    ~FindWorkspace() { cudaFree(data); }
    FindWorkspace(const FindWorkspace&) = delete;
    FindWorkspace& operator=(const FindWorkspace&) = delete;
};

// What a convolution call runs: the algorithm and math type, and the workspace it needs at this batch.
struct ConvAlgorithm {
    ConvChoice choice;
    void* workspace = nullptr;
    std::size_t workspace_bytes = 0;
};

// The algorithm for this convolution and pass (algorithm_cache.hpp says when one is measured), with its
// math type set on the descriptor and the workspace it needs, held in the context's workspace (grown
// to the largest need of the algorithms chosen, all met in the first step: PyTorch likewise holds
// what the chosen algorithms ask for, not a fixed limit). `find(scratch)` measures
// (cudnnFind*AlgorithmEx) in the scratch given; `workspace(choice)` is the workspace a choice needs
// at this batch, in the math type set, which must fit workspace_limit.
template <class Find, class Workspace>
ConvAlgorithm algorithm(Context& ctx, const ConvDescriptors& d, const ConvGeometry& g, Shape x, ConvPass pass,
                        Find find, Workspace workspace) {
    auto& impl = *ctx.impl;
    // The choice's math type on the descriptor, then what it needs there. fp32 without TF32 runs in
    // FMA math only: Find was asked in it, and PyTorch asserts that it reports no other
    // (ASSERT_CORRECT_PRECISION); kept so, whatever a later cuDNN reports.
    const auto prepared = [&](ConvChoice choice) {
        if (ctx.activations == DType::f32 && !ctx.settings.tf32) choice.math_type = int(CUDNN_FMA_MATH);
        TESSERA_CUDA(cudnnSetConvolutionMathType(d.conv.d, cudnnMathType_t(choice.math_type)));
        return ConvAlgorithm{choice, nullptr, workspace(choice)};
    };
    const ConvKey key = conv_key(g, x, pass, ctx.activations, ctx.settings.tf32);
    ConvAlgorithm run;
    const ConvChoice* known = impl.algorithms.find(key, x.n);
    if (known) run = prepared(*known);
    if (!known || run.workspace_bytes > ctx.settings.workspace_limit) {
        TESSERA_CUDA(cudnnSetConvolutionMathType(d.conv.d, search_math_type(ctx.activations, ctx.settings.tf32)));
        const FindWorkspace scratch(ctx);
        const ConvChoice found = find(scratch);
        impl.algorithms.remember(key, found);
        run = prepared(found);
    }
    run.workspace = impl.workspace.reserve(impl.stream, run.workspace_bytes);
    return run;
}

}  // namespace detail

namespace kernels {
// The (rows, padded) copy of a (rows, c) array, cast to To, zeros in the padding (channel_padding.hpp).
template <class From, class To>
__global__ void pad_channels(const From* x, int c, int padded, To* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        std::size_t source = 0;
        y[i] = from_float<To>(padded_source(i, c, padded, &source) ? to_float(x[source]) : 0.f);
    }
}
// y (rows, c) = the (rows, c) slice of a (rows, padded) array, or y += it.
template <class From, class To, bool add>
__global__ void slice_channels(const From* x, int c, int padded, To* y, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) {
        const float v = to_float(x[sliced_source(i, c, padded)]);
        y[i] = from_float<To>(add ? to_float(y[i]) + v : v);
    }
}
}  // namespace kernels

namespace detail {

// One convolution as cuDNN runs it: the geometry and input it sees (the input padded to
// padded_channels where that differs from its own), and the filters in the compute type, padded the
// same way. Everything it allocates is the caller's arena scratch.
struct ConvOperands {
    ConvGeometry g;  // with the padded input channel count
    Tensor x;        // the input, padded
    bool padded = false;

    ConvOperands(Context& ctx, const Tensor& input, const ConvGeometry& geometry)
        : g(with_input_channels(geometry, padded_channels(input.shape.c, input.dtype))), x(input) {
        padded = g.in_channels != input.shape.c;
        if (!padded) return;
        x = ctx.arena.tensor({input.shape.n, input.shape.h, input.shape.w, g.in_channels}, input.dtype);
        with_element_type(x.dtype, [&](auto t) {
            using T = decltype(t);
            launch(ctx, kernels::pad_channels<T, T>, x.size(), input.as<T>(), input.shape.c, g.in_channels, x.as<T>(),
                   x.size());
        });
    }

    // The fp32 master filters (OHWI, `in` input channels) in the compute type, padded like x.
    const void* filters(Context& ctx, const float* w, int in) const {
        const std::size_t count = std::size_t(g.out_channels) * g.patch();
        if (!padded) return converted(ctx, w, count, x.dtype);
        void* result = ctx.arena.allocate_bytes(count * element_bytes(x.dtype));
        with_element_type(x.dtype, [&](auto t) {
            using T = decltype(t);
            launch(ctx, kernels::pad_channels<float, T>, count, w, in, g.in_channels, static_cast<T*>(result), count);
        });
        return result;
    }
};

}  // namespace detail

void Backend::conv_forward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& y) {
    detail::OpTimer timer(ctx, "conv forward");
    using namespace detail;
    same_type(x, y, "conv forward");
    auto& impl = *ctx.impl;
    const auto mark = ctx.arena.mark();
    const ConvOperands op(ctx, x, g);
    const ConvDescriptors d(op.g, op.x.shape, x.dtype, ctx.settings.tf32);
    const void* weights = op.filters(ctx, w, g.in_channels);
    const auto run = algorithm(
        ctx, d, op.g, op.x.shape, ConvPass::forward,
        [&](const FindWorkspace& scratch) {
            cudnnConvolutionFwdAlgoPerf_t perf[8];
            int found = 0;
            TESSERA_CUDA(cudnnFindConvolutionForwardAlgorithmEx(impl.cudnn, d.x.d, op.x.data, d.w.d, weights, d.conv.d,
                                                                d.y.d, y.data, 8, &found, perf, scratch.data,
                                                                scratch.bytes));
            return fastest(perf, found, x.shape.n, "cudnnFindConvolutionForwardAlgorithmEx");
        },
        [&](const ConvChoice& c) {
            std::size_t bytes = 0;
            TESSERA_CUDA(cudnnGetConvolutionForwardWorkspaceSize(impl.cudnn, d.x.d, d.w.d, d.conv.d, d.y.d,
                                                                 cudnnConvolutionFwdAlgo_t(c.algorithm), &bytes));
            return bytes;
        });
    const float one = 1.f, zero = 0.f;
    TESSERA_CUDA(cudnnConvolutionForward(impl.cudnn, &one, d.x.d, op.x.data, d.w.d, weights, d.conv.d,
                                         cudnnConvolutionFwdAlgo_t(run.choice.algorithm), run.workspace,
                                         run.workspace_bytes, &zero, d.y.d, y.data));
    ctx.arena.release(mark);
}

// dw (fp32) += the filter gradient; dx = the input gradient, unless dx is null. In bf16 and fp16,
// cuDNN writes the filter gradient in the compute type (as it does under PyTorch's autocast), into
// scratch that is then added to the fp32 gradient. With a padded input, both gradients come back
// padded and their slices are kept.
void Backend::conv_backward(Context& ctx, const Tensor& x, const float* w, const ConvGeometry& g, const Tensor& dy,
                            float* dw, const Tensor& dx) {
    detail::OpTimer timer(ctx, "conv backward");
    using namespace detail;
    same_type(x, dy, "conv backward");
    auto& impl = *ctx.impl;
    const float one = 1.f, zero = 0.f;
    const auto mark = ctx.arena.mark();
    const ConvOperands op(ctx, x, g);
    const ConvDescriptors d(op.g, op.x.shape, x.dtype, ctx.settings.tf32);
    const std::size_t weight_count = std::size_t(op.g.out_channels) * op.g.patch();
    const bool into_dw = x.dtype == DType::f32 && !op.padded;
    // The filter gradient's destination: dw itself in unpadded fp32 (accumulated, beta 1), else scratch.
    void* filter_grad =
        into_dw ? static_cast<void*>(dw) : ctx.arena.allocate_bytes(weight_count * element_bytes(x.dtype));
    const float& filter_beta = into_dw ? one : zero;
    const auto filter = algorithm(
        ctx, d, op.g, op.x.shape, ConvPass::backward_filter,
        [&](const FindWorkspace& scratch) {
            // The search writes its output: give it scratch, not the gradients being accumulated.
            const auto search_mark = ctx.arena.mark();
            float* output = ctx.arena.allocate_bytes(weight_count * element_bytes(x.dtype));
            cudnnConvolutionBwdFilterAlgoPerf_t perf[8];
            int found = 0;
            TESSERA_CUDA(cudnnFindConvolutionBackwardFilterAlgorithmEx(impl.cudnn, d.x.d, op.x.data, d.y.d, dy.data,
                                                                       d.conv.d, d.w.d, output, 8, &found, perf,
                                                                       scratch.data, scratch.bytes));
            ctx.arena.release(search_mark);
            return fastest(perf, found, x.shape.n, "cudnnFindConvolutionBackwardFilterAlgorithmEx");
        },
        [&](const ConvChoice& c) {
            std::size_t bytes = 0;
            TESSERA_CUDA(cudnnGetConvolutionBackwardFilterWorkspaceSize(
                impl.cudnn, d.x.d, d.y.d, d.conv.d, d.w.d, cudnnConvolutionBwdFilterAlgo_t(c.algorithm), &bytes));
            return bytes;
        });
    {
        detail::OpTimer filter_timer(ctx, "conv backward filter");
        TESSERA_CUDA(cudnnConvolutionBackwardFilter(impl.cudnn, &one, d.x.d, op.x.data, d.y.d, dy.data, d.conv.d,
                                                    cudnnConvolutionBwdFilterAlgo_t(filter.choice.algorithm),
                                                    filter.workspace, filter.workspace_bytes, &filter_beta, d.w.d,
                                                    filter_grad));
        if (!into_dw)
            with_element_type(x.dtype, [&](auto t) {
                using T = decltype(t);
                const std::size_t count = std::size_t(g.out_channels) * g.patch();
                launch(ctx, kernels::slice_channels<T, float, true>, count, static_cast<const T*>(filter_grad),
                       g.in_channels, op.g.in_channels, dw, count);
            });
    }
    if (dx.data) {
        same_type(x, dx, "conv backward");
        const void* weights = op.filters(ctx, w, g.in_channels);
        // With a padded input, cuDNN's input gradient is padded too: scratch, then sliced into dx.
        const Tensor data_grad = op.padded ? ctx.arena.tensor(op.x.shape, x.dtype) : dx;
        const auto data = algorithm(
            ctx, d, op.g, op.x.shape, ConvPass::backward_data,
            [&](const FindWorkspace& scratch) {
                cudnnConvolutionBwdDataAlgoPerf_t perf[8];
                int found = 0;
                TESSERA_CUDA(cudnnFindConvolutionBackwardDataAlgorithmEx(impl.cudnn, d.w.d, weights, d.y.d, dy.data,
                                                                         d.conv.d, d.x.d, data_grad.data, 8, &found,
                                                                         perf, scratch.data, scratch.bytes));
                return fastest(perf, found, x.shape.n, "cudnnFindConvolutionBackwardDataAlgorithmEx");
            },
            [&](const ConvChoice& c) {
                std::size_t bytes = 0;
                TESSERA_CUDA(cudnnGetConvolutionBackwardDataWorkspaceSize(
                    impl.cudnn, d.w.d, d.y.d, d.conv.d, d.x.d, cudnnConvolutionBwdDataAlgo_t(c.algorithm), &bytes));
                return bytes;
            });
        detail::OpTimer data_timer(ctx, "conv backward data");
        TESSERA_CUDA(cudnnConvolutionBackwardData(impl.cudnn, &one, d.w.d, weights, d.y.d, dy.data, d.conv.d,
                                                  cudnnConvolutionBwdDataAlgo_t(data.choice.algorithm), data.workspace,
                                                  data.workspace_bytes, &zero, d.x.d, data_grad.data));
        if (op.padded)
            with_element_type(x.dtype, [&](auto t) {
                using T = decltype(t);
                launch(ctx, kernels::slice_channels<T, T, false>, dx.size(), data_grad.as<T>(), g.in_channels,
                       op.g.in_channels, dx.as<T>(), dx.size());
            });
    }
    ctx.arena.release(mark);
}

}  // namespace tessera::cuda
