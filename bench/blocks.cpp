// Microbenchmarks of blocks, on the CPU always and on the GPU where one answers (the CUDA build):
// convolutions at ResNet50's stage shapes (forward, and backward: data and filter gradients),
// BatchNorm, one bottleneck forward and backward, and a whole ResNet50 training step. Counters give
// GFLOP/s and GB/s, and on the CPU the fraction of the FP32 peak of the cores in use, measured here
// by an FMA loop of the widest vectors the CPU has (FmaPeak; Bf16DotPeak for AVX512-BF16), so each
// figure reads against what the cores can do.
//   build/bench/tessera_bench [--benchmark_filter=Conv]
#include <benchmark/benchmark.h>

#include <chrono>

#include "tessera/backend/cpu/backend.hpp"
#include "tessera/export/cpu_inference.hpp"
#include "tessera/models/network.hpp"
#include "tessera/models/resnet.hpp"
#include "tessera/plugin/registry.hpp"
#include "tessera/train/step.hpp"
#ifdef TESSERA_WITH_CUDA
#include "tessera/backend/cuda/backend.hpp"
#endif

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace {

using namespace tessera;

// ---- the machine's peak ----------------------------------------------------------------------------

#if defined(__x86_64__)
// Twelve independent FMA chains of one vector width: enough to keep both FMA ports busy whatever
// their latency. Each FMA is 2 FLOP per float. The loop and the lambdas are inlined (flatten) into a
// function compiled for the instruction set, so the build needs no -march for it.
// GCC notes (-Wpsabi) that a lambda returning __m256/__m512 has another ABI when its caller lacks
// the instruction set; every call here is inlined within this file, so no ABI is ever crossed.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"
template <class Vector, int Floats, auto Fma, auto Set, auto Add>
double fma_loop(std::int64_t rounds) {
    Vector acc[12];
    for (int i = 0; i < 12; ++i) acc[i] = Set(float(i));
    const Vector a = Set(0.999999f), b = Set(1e-7f);
    for (std::int64_t r = 0; r < rounds; ++r)
#pragma GCC unroll 12
        for (auto& v : acc) v = Fma(v, a, b);
    Vector sum = acc[0];
    for (int i = 1; i < 12; ++i) sum = Add(sum, acc[i]);
    benchmark::DoNotOptimize(sum);
    return double(rounds) * 12 * 2 * Floats;
}

#define TESSERA_AVX2 __attribute__((target("avx2,fma")))
#define TESSERA_AVX512 __attribute__((target("avx512f")))

__attribute__((target("avx2,fma"), flatten)) double fma_flops_avx2(std::int64_t rounds) {
    return fma_loop<__m256, 8, [](__m256 v, __m256 a, __m256 b) TESSERA_AVX2 { return _mm256_fmadd_ps(v, a, b); },
                    [](float f) TESSERA_AVX2 { return _mm256_set1_ps(f); },
                    [](__m256 x, __m256 y) TESSERA_AVX2 { return _mm256_add_ps(x, y); }>(rounds);
}

__attribute__((target("avx512f"), flatten)) double fma_flops_avx512(std::int64_t rounds) {
    return fma_loop<__m512, 16, [](__m512 v, __m512 a, __m512 b) TESSERA_AVX512 { return _mm512_fmadd_ps(v, a, b); },
                    [](float f) TESSERA_AVX512 { return _mm512_set1_ps(f); },
                    [](__m512 x, __m512 y) TESSERA_AVX512 { return _mm512_add_ps(x, y); }>(rounds);
}

// AVX512-BF16's dot product, the instruction of bf16 convolutions on CPUs without AMX (oneDNN's
// avx512_core_bf16 kernels, tessera's PairedFilterGradient): each vdpbf16ps adds the products of
// two bf16 pairs into each of 16 fp32 lanes, 32 products, 64 FLOP. Twelve independent chains, as
// above.
__attribute__((target("avx512f,avx512bf16"), flatten)) double bf16_dot_flops(std::int64_t rounds) {
    return fma_loop < __m512, 32,  // 32 bf16 products per instruction, each a multiply and an add
           [](__m512 v, __m512 a, __m512 b) __attribute__((target("avx512f,avx512bf16"))) {
        return _mm512_dpbf16_ps(v, __m512bh(a), __m512bh(b));
    }
    , [](float f) __attribute__((target("avx512f"))) { return _mm512_set1_ps(f); }
    , [](__m512 x, __m512 y) __attribute__((target("avx512f"))) { return _mm512_add_ps(x, y); }
    > (rounds);
}
#pragma GCC diagnostic pop

/// The widest FMA this CPU has: AVX-512 where there is one (OpenBLAS's kernels use it), else AVX2.
double fma_flops(std::int64_t rounds) {
    return __builtin_cpu_supports("avx512f") ? fma_flops_avx512(rounds) : fma_flops_avx2(rounds);
}
#endif

/// One core's FP32 peak with its widest FMA, in FLOP/s, measured once.
double core_peak_flops() {
#if defined(__x86_64__)
    static const double peak = [] {
        if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return 0.0;
        double best = 0;
        for (int trial = 0; trial < 5; ++trial) {
            const auto t0 = std::chrono::steady_clock::now();
            const double flops = fma_flops(2'000'000);
            best = std::max(best, flops / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
        }
        return best;
    }();
    return peak;
#else
    return 0;
#endif
}

#if defined(__x86_64__)
template <double (*Loop)(std::int64_t)>
void FmaPeak(benchmark::State& state) {  // one core
    double flops = 0;
    for (auto _ : state) flops += Loop(1'000'000);
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK_TEMPLATE(FmaPeak, fma_flops_avx2)->Name("FmaPeak/avx2")->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(FmaPeak, fma_flops)->Name("FmaPeak/widest")->Unit(benchmark::kMillisecond);

// The most a bf16 convolution can reach on this CPU without AMX: vdpbf16ps alone, from registers,
// on each of `threads` OpenMP threads at once (args = threads). ResNet50's bf16 inference at batch
// 32 reads against it (README, "CPU: side by side with PyTorch").
void Bf16DotPeak(benchmark::State& state) {
    if (!__builtin_cpu_supports("avx512bf16")) {
        state.SkipWithError("this CPU has no AVX512-BF16");
        return;
    }
    const int threads = int(state.range(0));
    double flops = 0;
    for (auto _ : state) {
#pragma omp parallel num_threads(threads) reduction(+ : flops)
        flops += bf16_dot_flops(1'000'000);
    }
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsRate);
}
BENCHMARK(Bf16DotPeak)->Arg(1)->Arg(2)->Unit(benchmark::kMillisecond)->UseRealTime();
#endif

// ---- backends --------------------------------------------------------------------------------------

template <class B>
struct Device;

template <>
struct Device<cpu::Backend> {
    static bool available(std::string*) { return true; }
    static std::unique_ptr<cpu::Context> context(DType) { return std::make_unique<cpu::Context>(); }  // fp32 only
    static void sync(cpu::Context&) {}
    static int threads(cpu::Context& ctx) { return ctx.pool.size(); }
};

#ifdef TESSERA_WITH_CUDA
template <>
struct Device<cuda::Backend> {
    static bool available(std::string* why) { return cuda::device_available(why); }
    static std::unique_ptr<cuda::Context> context(DType compute) {
        return std::make_unique<cuda::Context>(cuda::Settings{.tf32 = true, .compute = compute});
    }
    static void sync(cuda::Context& ctx) { ctx.synchronize(); }
    static int threads(cuda::Context&) { return 0; }
};
#endif

/// The backend's context computing in `compute`, or null after telling the benchmark why it skips.
template <class B>
std::unique_ptr<typename B::Context> context_or_skip(benchmark::State& state, DType compute) {
    std::string why;
    if (!Device<B>::available(&why)) {
        state.SkipWithError(("no CUDA device: " + why).c_str());
        return nullptr;
    }
    return Device<B>::context(compute);
}

/// Zeroes a tensor of any element type.
template <class B>
void zero(typename B::Context& ctx, const Tensor& t) {
    B::fill_zero(ctx, t.data, (t.bytes() + sizeof(float) - 1) / sizeof(float));
}

/// Times the benchmark's loop over `step`, then sets GFLOP/s and, on the CPU, the fraction of the
/// peak of the cores in use (a plain number, which Google Benchmark's rate counters cannot give).
template <class B, class Step>
void run_flops(benchmark::State& state, typename B::Context& ctx, double flops_per_iteration, Step&& step) {
    const auto start = std::chrono::steady_clock::now();
    for (auto _ : state) {
        step();
        Device<B>::sync(ctx);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    const double rate = flops_per_iteration * double(state.iterations()) / seconds;
    state.counters["GFLOP/s"] = rate * 1e-9;
    if (const int threads = Device<B>::threads(ctx); threads > 0 && core_peak_flops() > 0)
        state.counters["of_peak"] = rate / (core_peak_flops() * threads);
}

// ---- convolutions: args = batch, size, in, out, kernel, stride -----------------------------------

struct ConvShape {
    Shape in, out;
    ConvGeometry g;
    double flops;  // of one pass: forward, or each of the two backward products
    explicit ConvShape(const benchmark::State& s)
        : in{int(s.range(0)), int(s.range(1)), int(s.range(1)), int(s.range(2))}, g{int(s.range(2)), int(s.range(3)),
                                                                                    int(s.range(4)), int(s.range(5)),
                                                                                    int(s.range(4)) / 2} {
        out = g.output_shape(in);
        flops = 2.0 * double(out.pixels()) * double(g.patch()) * g.out_channels;
    }
};

// Precision: the activations' type (the weights are fp32, as in training).
template <class B, DType Precision = DType::f32>
void ConvForward(benchmark::State& state) {
    auto ctx = context_or_skip<B>(state, Precision);
    if (!ctx) return;
    const ConvShape c(state);
    const Tensor x = ctx->arena.tensor(c.in, Precision), y = ctx->arena.tensor(c.out, Precision);
    float* w = ctx->arena.allocate_floats(std::size_t(c.g.out_channels) * c.g.patch());
    zero<B>(*ctx, x);
    B::fill_zero(*ctx, w, std::size_t(c.g.out_channels) * c.g.patch());
    run_flops<B>(state, *ctx, c.flops, [&] { B::conv_forward(*ctx, x, w, c.g, y); });
}

template <class B, DType Precision = DType::f32>
void ConvBackward(benchmark::State& state) {  // data and filter gradients
    auto ctx = context_or_skip<B>(state, Precision);
    if (!ctx) return;
    const ConvShape c(state);
    const Tensor x = ctx->arena.tensor(c.in, Precision), dx = ctx->arena.tensor(c.in, Precision),
                 dy = ctx->arena.tensor(c.out, Precision);
    const std::size_t weights = std::size_t(c.g.out_channels) * c.g.patch();
    float* w = ctx->arena.allocate_floats(weights);
    float* dw = ctx->arena.allocate_floats(weights);
    zero<B>(*ctx, x);
    zero<B>(*ctx, dy);
    for (float* p : {w, dw}) B::fill_zero(*ctx, p, weights);
    run_flops<B>(state, *ctx, 2 * c.flops, [&] { B::conv_backward(*ctx, x, w, c.g, dy, dw, dx); });
}

// ResNet50's convolutions at batch 8 (hw: the input's size): the stem, and the 1x1 and 3x3 of each
// stage's bottlenecks.
void stage_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"n", "hw", "in", "out", "k", "s"})
        ->Args({8, 224, 3, 64, 7, 2})  // the stem
        ->Args({8, 56, 64, 64, 1, 1})
        ->Args({8, 56, 64, 64, 3, 1})
        ->Args({8, 56, 64, 256, 1, 1})
        ->Args({8, 28, 128, 128, 3, 1})
        ->Args({8, 28, 512, 128, 1, 1})
        ->Args({8, 14, 256, 256, 3, 1})
        ->Args({8, 14, 1024, 256, 1, 1})
        ->Args({8, 7, 512, 512, 3, 1})
        ->Args({8, 7, 2048, 512, 1, 1})
        ->Unit(benchmark::kMillisecond);
}

// ---- the CPU's convolution candidates, one direction at a time ----------------------------------
// oneDNN and im2col + OpenBLAS on the ResNet family's shapes, each called directly: how the CPU's
// choice of kernels was made (forward_by_gemm, filter_gradient_by_gemm in backend/cpu/conv.hpp), and
// how to remake it on another CPU.
//   args = batch, size, in, out, kernel, stride; the name says the direction and the kernels.
enum class ConvPass { forward, data, filter };

template <ConvPass Pass, bool Gemm>
void CpuConvCandidate(benchmark::State& state) {
    cpu::Context ctx(2);
    const ConvShape c(state);
    const std::size_t weights = std::size_t(c.g.out_channels) * c.g.patch();
    const Tensor x = ctx.arena.tensor(c.in), dx = ctx.arena.tensor(c.in), y = ctx.arena.tensor(c.out),
                 dy = ctx.arena.tensor(c.out);
    float* w = ctx.arena.allocate_floats(weights);
    float* dw = ctx.arena.allocate_floats(weights);
    for (const Tensor& t : {x, dx, y, dy}) std::fill(t.data, t.data + t.size(), 0.5f);
    std::fill(w, w + weights, 0.01f);
    std::fill(dw, dw + weights, 0.f);
    const Tensor no_dx{nullptr, c.in};
    run_flops<cpu::Backend>(state, ctx, c.flops, [&] {
        if constexpr (Pass == ConvPass::forward) {
            if (Gemm)  // each candidate directly, never through the rule that chooses between them
                cpu::gemm_conv_forward(ctx, x, w, c.g, y);
            else
                ctx.onednn.at(c.g, c.in).forward(ctx.onednn.stream(), x.data, w, y.data);
        } else if constexpr (Pass == ConvPass::data) {
            if (Gemm) {  // the GEMM path computes the filter gradient too: this counts both
                cpu::gemm_conv_backward(ctx, x, w, c.g, dy, dw, dx);
            } else {
                ctx.onednn.at(c.g, c.in).backward_data(ctx.onednn.stream(), dy.data, w, dx.data);
            }
        } else {
            if (Gemm)
                cpu::gemm_conv_backward(ctx, x, w, c.g, dy, dw, no_dx);
            else
                ctx.onednn.at(c.g, c.in).backward_weights(ctx.onednn.stream(), x.data, dy.data, dw);
        }
    });
}

// ---- the compiled inference path's 3x3 convolutions: oneDNN's direct kernel or Winograd's --------
// Each as CpuInference runs it: fp32, on the activation layouts oneDNN's kernel chooses, with a bias
// and a ReLU. How winograd::pays was chosen, and how to recheck it on another CPU.
template <bool Winograd>
void CpuInferenceConv(benchmark::State& state) {
    using tag = dnnl::memory::format_tag;
    using dt = dnnl::memory::data_type;
    cpu::Context ctx(2);
    omp_set_num_threads(2);
    const ConvShape c(state);
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(engine);
    const dnnl::memory::dims src{c.in.n, c.in.c, c.in.h, c.in.w}, dst{c.out.n, c.out.c, c.out.h, c.out.w},
        weights{c.g.out_channels, c.g.in_channels, 3, 3}, pad{1, 1};
    dnnl::post_ops relu;
    relu.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
    dnnl::primitive_attr attr;
    attr.set_post_ops(relu);
    using cf = dnnl::convolution_forward;
    const cf::primitive_desc pd({dnnl::prop_kind::forward_inference,
                                 dnnl::algorithm::convolution_direct,
                                 {src, dt::f32, tag::any},
                                 {weights, dt::f32, tag::any},
                                 {{c.g.out_channels}, dt::f32, tag::x},
                                 {dst, dt::f32, tag::any},
                                 {1, 1},
                                 pad,
                                 pad},
                                attr, engine);
    dnnl::memory x(pd.src_desc(), engine), w(pd.weights_desc(), engine),
        b({{c.g.out_channels}, dt::f32, tag::x}, engine), y(pd.dst_desc(), engine);
    for (const dnnl::memory& m : {x, w, b, y}) {
        float* p = static_cast<float*>(m.get_data_handle());
        std::fill(p, p + m.get_desc().get_size() / sizeof(float), 0.01f);
    }
    const cf conv(pd);
    const auto in = deploy::CpuInference::winograd_layout(pd.src_desc()),
               out = deploy::CpuInference::winograd_layout(pd.dst_desc());
    if (Winograd && (!in || !out || in->lanes != out->lanes))
        return state.SkipWithError("oneDNN chose layouts Winograd does not read");
    const cpu::winograd::Shape shape{c.in.n, c.in.c, c.in.h, c.in.w, c.g.out_channels};
    const std::vector<float> filters(std::size_t(c.g.out_channels) * c.g.patch(), 0.01f);
    const std::vector<float> u = cpu::winograd::transform_filters(filters.data(), shape.k, shape.c);
    std::vector<float> workspace(Winograd ? cpu::winograd::workspace_floats(shape) : 0);
    const cpu::OpenMpThreads threads(2);
    run_flops<cpu::Backend>(state, ctx, c.flops, [&] {
        auto* from = static_cast<const float*>(x.get_data_handle());
        auto* to = static_cast<float*>(y.get_data_handle());
        auto* bias = static_cast<const float*>(b.get_data_handle());
        if (Winograd)
            cpu::winograd::forward(threads, from, *in, u, bias, false, true, to, *out, shape, workspace.data());
        else
            conv.execute(stream, {{DNNL_ARG_SRC, x}, {DNNL_ARG_WEIGHTS, w}, {DNNL_ARG_BIAS, b}, {DNNL_ARG_DST, y}});
    });
    state.SetLabel(Winograd ? "winograd F(4x4,3x3)" : pd.impl_info_str());
}

// ResNet50's stride-1 3x3 convolutions at batches 32 and 1, its last two stages' at the batches
// around winograd::pays's threshold (16 to 64 tiles), and ResNet-20's at the quick start's 128.
void inference_3x3_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"n", "hw", "in", "out", "k", "s"});
    for (const int n : {32, 1})
        b->Args({n, 56, 64, 64, 3, 1})
            ->Args({n, 28, 128, 128, 3, 1})
            ->Args({n, 14, 256, 256, 3, 1})
            ->Args({n, 7, 512, 512, 3, 1});
    b->Args({2, 14, 256, 256, 3, 1})
        ->Args({4, 14, 256, 256, 3, 1})
        ->Args({4, 7, 512, 512, 3, 1})
        ->Args({8, 7, 512, 512, 3, 1})
        ->Args({16, 7, 512, 512, 3, 1});
    b->Args({128, 28, 16, 16, 3, 1})
        ->Args({128, 14, 32, 32, 3, 1})
        ->Args({128, 7, 64, 64, 3, 1})
        ->Unit(benchmark::kMillisecond);
}

// ResNet-20's convolutions at the quick start's batch of 128, and ResNet50's at 32.
void family_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"n", "hw", "in", "out", "k", "s"})
        ->Args({128, 28, 1, 16, 3, 1})
        ->Args({128, 28, 16, 16, 3, 1})
        ->Args({128, 28, 16, 32, 3, 2})
        ->Args({128, 14, 32, 32, 3, 1})
        ->Args({128, 14, 32, 64, 3, 2})
        ->Args({128, 7, 64, 64, 3, 1})
        ->Args({32, 224, 3, 64, 7, 2})
        ->Args({32, 56, 64, 64, 1, 1})
        ->Args({32, 56, 64, 64, 3, 1})
        ->Args({32, 56, 256, 128, 1, 1})
        ->Args({32, 28, 128, 128, 3, 1})
        ->Args({32, 14, 256, 256, 3, 1})
        ->Args({32, 7, 512, 512, 3, 1})
        ->Args({32, 7, 512, 2048, 1, 1})
        ->Unit(benchmark::kMillisecond);
}

// The family's 3x3 stride-1 shapes, the ones PairedFilterGradient can compute.
void pairs_shapes(benchmark::internal::Benchmark* b) {
    b->ArgNames({"n", "hw", "in", "out", "k", "s"})
        ->Args({128, 28, 16, 16, 3, 1})
        ->Args({128, 14, 32, 32, 3, 1})
        ->Args({128, 7, 64, 64, 3, 1})
        ->Args({32, 56, 64, 64, 3, 1})
        ->Args({32, 28, 128, 128, 3, 1})
        ->Args({32, 14, 256, 256, 3, 1})
        ->Args({32, 7, 512, 512, 3, 1})
        ->Unit(benchmark::kMillisecond);
}

// A bf16 filter gradient: oneDNN's in one call on all threads, or one call per thread over its share
// of the batch, or tessera's image-pairs kernel (filter_gradient_calls in backend/cpu/onednn_conv.hpp:
// how its rule was made).
template <cpu::FilterGradientCalls Calls>
void CpuFilterGradient(benchmark::State& state) {
    cpu::Context ctx(2);
    if (!cpu::has_bf16_instructions()) {
        state.SkipWithError("this CPU has no bf16 instructions (AVX512-BF16 or AMX-BF16)");
        return;
    }
    const ConvShape c(state);
    const std::size_t weights = std::size_t(c.g.out_channels) * c.g.patch();
    const Tensor x = ctx.arena.tensor(c.in, DType::bf16), dy = ctx.arena.tensor(c.out, DType::bf16);
    float* dw = ctx.arena.allocate_floats(weights);
    zero<cpu::Backend>(ctx, x);
    zero<cpu::Backend>(ctx, dy);
    std::fill(dw, dw + weights, 0.f);
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    cpu::OneDnnConv conv(engine, c.g, c.in, DType::bf16, Calls);
    dnnl::stream stream(engine);
    run_flops<cpu::Backend>(state, ctx, c.flops, [&] { conv.backward_weights(stream, x.data, dy.data, dw); });
}

// ---- BatchNorm: args = batch, size, channels ------------------------------------------------------

template <class B, DType Precision = DType::f32>
void BatchNormForwardTraining(benchmark::State& state) {
    auto ctx = context_or_skip<B>(state, Precision);
    if (!ctx) return;
    const int n = int(state.range(0)), size = int(state.range(1)), c = int(state.range(2));
    const Tensor x = ctx->arena.tensor({n, size, size, c}, Precision),
                 y = ctx->arena.tensor({n, size, size, c}, Precision);
    float* v = ctx->arena.allocate_floats(6 * std::size_t(c));  // gamma, beta, running mean/var, saved mean/inv_std
    zero<B>(*ctx, x);
    B::fill_zero(*ctx, v, 6 * std::size_t(c));
    for (auto _ : state) {
        B::batchnorm_forward(*ctx, x, {v, v + c, v + 2 * c, v + 3 * c}, {v + 4 * c, v + 5 * c}, y);  // training mode
        Device<B>::sync(*ctx);
    }
    // Reads x twice (statistics, then normalise) and writes y once.
    state.counters["GB/s"] =
        benchmark::Counter(3.0 * double(x.bytes()) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// BatchNorm fused with its ReLU, as every BatchNorm but a block's last runs: args = batch, size,
// channels. Forward reads x twice (statistics, then apply) and writes y; backward reads x and dy twice
// (sums, then the input gradient) and writes dx. GB/s is to be read against StreamCopy's.
template <class B, bool backward, DType Precision = DType::f32>
void BatchNormReLUTraining(benchmark::State& state) {
    auto ctx = context_or_skip<B>(state, Precision);
    if (!ctx) return;
    const Shape shape{int(state.range(0)), int(state.range(1)), int(state.range(1)), int(state.range(2))};
    const int c = shape.c;
    const Tensor x = ctx->arena.tensor(shape, Precision), y = ctx->arena.tensor(shape, Precision),
                 dy = ctx->arena.tensor(shape, Precision), dx = ctx->arena.tensor(shape, Precision);
    float* v = ctx->arena.allocate_floats(8 * std::size_t(c));  // gamma, beta, running mean/var, saved, dgamma, dbeta
    zero<B>(*ctx, x);
    zero<B>(*ctx, dy);
    B::fill_zero(*ctx, v, 8 * std::size_t(c));
    const BatchNormParams p{v, v + c, v + 2 * c, v + 3 * c};
    const BatchNormSaved saved{v + 4 * c, v + 5 * c};
    B::batchnorm_relu_forward(*ctx, x, p, saved, y);
    for (auto _ : state) {
        if constexpr (backward)
            B::batchnorm_relu_backward(*ctx, x, y, dy, p, saved, v + 6 * c, v + 7 * c, dx);
        else
            B::batchnorm_relu_forward(*ctx, x, p, saved, y);
        Device<B>::sync(*ctx);
    }
    state.counters["GB/s"] = benchmark::Counter((backward ? 5.0 : 3.0) * double(x.bytes()) * 1e-9,
                                                benchmark::Counter::kIsIterationInvariantRate);
}

// The memory's copy rate as a plain streaming kernel reaches it (y = x over fp32, axpby with b = 0):
// the yardstick of the fused kernels' GB/s. args = megabytes copied.
template <class B>
void StreamCopy(benchmark::State& state) {
    auto ctx = context_or_skip<B>(state, DType::f32);
    if (!ctx) return;
    const std::size_t n = std::size_t(state.range(0)) << 18;  // MB / 4 bytes
    float* x = ctx->arena.allocate_floats(n);
    float* y = ctx->arena.allocate_floats(n);
    B::fill_zero(*ctx, x, n);
    for (auto _ : state) {
        B::axpby(*ctx, 1.f, x, 0.f, y, n);
        Device<B>::sync(*ctx);
    }
    state.counters["GB/s"] =
        benchmark::Counter(2.0 * double(n) * sizeof(float) * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- one bottleneck, and a whole training step ------------------------------------------------------

template <class B, DType Precision = DType::f32>
void BottleneckForwardBackward(benchmark::State& state) {  // layer2's stride-2 block at batch 8
    auto ctx = context_or_skip<B>(state, Precision);
    if (!ctx) return;
    using Block = models::Bottleneck<512, 2>;
    models::Model<Block, 256, B> block("bottleneck", 0);
    block.init(1, {});
    const Shape in{8, 56, 56, 256};
    for (auto _ : state) {
        ctx->arena.reset();
        ctx->grads.reset();
        const Tensor x = ctx->arena.tensor(in, Precision);
        zero<B>(*ctx, x);
        const Tensor y = block.forward(*ctx, x);
        const Tensor dy = ctx->arena.tensor(y.shape, y.dtype);
        zero<B>(*ctx, dy);
        block.backward(*ctx, dy);
        Device<B>::sync(*ctx);
    }
    state.counters["img/s"] = benchmark::Counter(in.n, benchmark::Counter::kIsIterationInvariantRate);
}

// ResNet50's training step (forward, loss, backward, SGD with momentum) on synthetic 224x224 images:
// args = batch. The plugins come from the build tree, as runner's do.
template <class B, DType Precision = DType::f32>
void ResNet50TrainingStep(benchmark::State& state) {
    auto ctx = context_or_skip<B>(state, Precision);
    if (!ctx) return;
    const int batch = int(state.range(0));
    plugin::Registry plugins;
    auto data = plugins.create<plugin::DataSource>("synthetic", {{"image_size", std::int64_t(224)},
                                                                 {"num_classes", std::int64_t(1000)},
                                                                 {"channels", std::int64_t(3)},
                                                                 {"train_size", std::int64_t(batch)}});
    auto sgd = plugins.create<plugin::Optimizer>("sgd", {{"momentum", 0.9}, {"weight_decay", 1e-4}});
    models::Model<models::ResNet50, 3, B> net("resnet50", 1000);
    net.init(1, {});
    train::StepConfig config;
    config.batch_size = batch;
    train::Step<B> step(*ctx, net, *sgd, data->info(), config);
    data->start_epoch(plugin::Split::train, train::epoch_plan(1, plugin::Split::train, batch, 0, nullptr));
    plugin::Batch images;
    data->next(images);
    for (auto _ : state) {
        step.run(images, {0.01, std::nullopt});
        Device<B>::sync(*ctx);
    }
    state.counters["img/s"] = benchmark::Counter(batch, benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK_TEMPLATE(CpuConvCandidate, ConvPass::forward, false)->Name("CpuConv/forward/onednn")->Apply(family_shapes);
BENCHMARK_TEMPLATE(CpuInferenceConv, false)->Name("CpuConv/inference/onednn")->Apply(inference_3x3_shapes);
BENCHMARK_TEMPLATE(CpuInferenceConv, true)->Name("CpuConv/inference/winograd")->Apply(inference_3x3_shapes);
BENCHMARK_TEMPLATE(CpuConvCandidate, ConvPass::forward, true)->Name("CpuConv/forward/gemm")->Apply(family_shapes);
BENCHMARK_TEMPLATE(CpuConvCandidate, ConvPass::data, false)->Name("CpuConv/data/onednn")->Apply(family_shapes);
BENCHMARK_TEMPLATE(CpuConvCandidate, ConvPass::data, true)->Name("CpuConv/data+filter/gemm")->Apply(family_shapes);
BENCHMARK_TEMPLATE(CpuConvCandidate, ConvPass::filter, false)->Name("CpuConv/filter/onednn")->Apply(family_shapes);
BENCHMARK_TEMPLATE(CpuConvCandidate, ConvPass::filter, true)->Name("CpuConv/filter/gemm")->Apply(family_shapes);
BENCHMARK_TEMPLATE(CpuFilterGradient, cpu::FilterGradientCalls::whole_batch)
    ->Name("CpuFilterGradient/bf16/whole")
    ->Apply(family_shapes);
BENCHMARK_TEMPLATE(CpuFilterGradient, cpu::FilterGradientCalls::batch_shares)
    ->Name("CpuFilterGradient/bf16/shares")
    ->Apply(family_shapes);
BENCHMARK_TEMPLATE(CpuFilterGradient, cpu::FilterGradientCalls::image_pairs)
    ->Name("CpuFilterGradient/bf16/pairs")
    ->Apply(pairs_shapes);
BENCHMARK_TEMPLATE(ConvForward, cpu::Backend)->Apply(stage_shapes);
BENCHMARK_TEMPLATE(ConvBackward, cpu::Backend)->Apply(stage_shapes);
BENCHMARK_TEMPLATE(BatchNormForwardTraining, cpu::Backend)
    ->Args({8, 56, 256})
    ->Args({8, 14, 1024})
    ->Unit(benchmark::kMillisecond);
// ResNet50's layer1 at batch 8, and the quick start's three stages (ResNet-20 at batch 128 on
// 28x28 images: 16, 32 and 64 channels, whose rows are shorter than a cache line's run of vectors).
void batchnorm_shapes(benchmark::internal::Benchmark* b) {
    b->Args({8, 56, 64})->Args({128, 28, 16})->Args({128, 14, 32})->Args({128, 7, 64});
    b->Unit(benchmark::kMillisecond);
}
BENCHMARK_TEMPLATE(BatchNormReLUTraining, cpu::Backend, false)
    ->Name("BatchNormReLUTraining/cpu/forward")
    ->Apply(batchnorm_shapes);
BENCHMARK_TEMPLATE(BatchNormReLUTraining, cpu::Backend, true)
    ->Name("BatchNormReLUTraining/cpu/backward")
    ->Apply(batchnorm_shapes);
BENCHMARK_TEMPLATE(BatchNormReLUTraining, cpu::Backend, false, DType::bf16)
    ->Name("BatchNormReLUTraining/cpu/forward/bf16")
    ->Apply(batchnorm_shapes);
BENCHMARK_TEMPLATE(BatchNormReLUTraining, cpu::Backend, true, DType::bf16)
    ->Name("BatchNormReLUTraining/cpu/backward/bf16")
    ->Apply(batchnorm_shapes);
BENCHMARK_TEMPLATE(StreamCopy, cpu::Backend)->Name("StreamCopy/cpu")->Arg(64)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BottleneckForwardBackward, cpu::Backend)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(ResNet50TrainingStep, cpu::Backend)->Arg(8)->Iterations(2)->Unit(benchmark::kMillisecond);
#ifdef TESSERA_WITH_CUDA
BENCHMARK_TEMPLATE(ConvForward, cuda::Backend)->Apply(stage_shapes);
BENCHMARK_TEMPLATE(ConvBackward, cuda::Backend)->Apply(stage_shapes);
BENCHMARK_TEMPLATE(BatchNormForwardTraining, cuda::Backend)
    ->Args({8, 56, 256})
    ->Args({8, 14, 1024})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BottleneckForwardBackward, cuda::Backend)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(ResNet50TrainingStep, cuda::Backend)->Arg(256)->Unit(benchmark::kMillisecond);
// Mixed precision: bf16 activations, fp32 weights.
BENCHMARK_TEMPLATE(ConvForward, cuda::Backend, DType::bf16)->Apply(stage_shapes);
BENCHMARK_TEMPLATE(ConvBackward, cuda::Backend, DType::bf16)->Apply(stage_shapes);
BENCHMARK_TEMPLATE(BatchNormForwardTraining, cuda::Backend, DType::bf16)
    ->Args({8, 56, 256})
    ->Args({8, 14, 1024})
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BottleneckForwardBackward, cuda::Backend, DType::bf16)->Unit(benchmark::kMillisecond);
// The fused element-wise kernels at batch 256, at layer1's sizes (bn1 and bn2: 64 channels at 56x56;
// a block's output: 256) and layer4's (512 at 7x7; 2048), against the card's copy rate.
void fused_sizes(benchmark::internal::Benchmark* b) {
    for (const auto& args :
         std::vector<std::vector<std::int64_t>>{{256, 56, 64}, {256, 56, 256}, {256, 7, 512}, {256, 7, 2048}})
        b->Args(args);
    b->Unit(benchmark::kMillisecond);
}
BENCHMARK_TEMPLATE(BatchNormReLUTraining, cuda::Backend, false, DType::bf16)
    ->Name("BatchNormReLUTraining/cuda/forward/bf16")
    ->Apply(fused_sizes);
BENCHMARK_TEMPLATE(BatchNormReLUTraining, cuda::Backend, true, DType::bf16)
    ->Name("BatchNormReLUTraining/cuda/backward/bf16")
    ->Apply(fused_sizes);
BENCHMARK_TEMPLATE(BatchNormReLUTraining, cuda::Backend, false, DType::f32)
    ->Name("BatchNormReLUTraining/cuda/forward/fp32")
    ->Apply(fused_sizes);
BENCHMARK_TEMPLATE(StreamCopy, cuda::Backend)->Name("StreamCopy/cuda")->Arg(1024)->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(ResNet50TrainingStep, cuda::Backend, DType::bf16)->Arg(256)->Unit(benchmark::kMillisecond);
#endif

}  // namespace
