// Microbenchmarks of blocks on the CPU backend, with FLOP and byte counters so each figure reads
// against the machine's peak:  build/bench/tessera_bench [--benchmark_filter=Conv]
#include <benchmark/benchmark.h>

#include "tessera/backend/cpu/backend.hpp"
#include "tessera/models/resnet.hpp"
#include "tessera/models/network.hpp"

namespace {

using namespace tessera;

// A conv forward at one of ResNet50's stage shapes: args = batch, size, in, out, kernel, stride.
void ConvForward(benchmark::State& state) {
    const int n = int(state.range(0)), size = int(state.range(1)), in = int(state.range(2)), out = int(state.range(3));
    const int k = int(state.range(4)), stride = int(state.range(5));
    const ConvGeometry g{in, out, k, stride, k / 2};
    cpu::Context ctx;
    std::vector<float> x(std::size_t(n) * size * size * in, 0.5f), w(std::size_t(out) * g.patch(), 0.01f);
    const Shape ys = g.output_shape({n, size, size, in});
    std::vector<float> y(ys.size());
    for (auto _ : state) cpu::conv_forward(ctx, Tensor{x.data(), {n, size, size, in}}, w.data(), g, Tensor{y.data(), ys});
    const double flops = 2.0 * double(ys.pixels()) * double(g.patch()) * out;
    state.counters["GFLOP/s"] = benchmark::Counter(flops * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(ConvForward)
    ->ArgNames({"n", "hw", "in", "out", "k", "s"})
    ->Args({8, 56, 64, 64, 1, 1})
    ->Args({8, 56, 64, 64, 3, 1})
    ->Args({8, 28, 128, 128, 3, 1})
    ->Args({8, 14, 256, 256, 3, 1})
    ->Args({8, 7, 512, 512, 3, 1})
    ->Args({8, 14, 1024, 256, 1, 1})
    ->Unit(benchmark::kMillisecond);

void BatchNormForwardTraining(benchmark::State& state) {
    const int n = int(state.range(0)), size = int(state.range(1)), c = int(state.range(2));
    cpu::Context ctx;
    std::vector<float> x(std::size_t(n) * size * size * c, 0.5f), y(x.size()), gamma(c, 1.f), beta(c, 0.f), rm(c, 0.f), rv(c, 1.f),
        mean(c), inv_std(c);
    for (auto _ : state)
        cpu::batchnorm_forward(ctx, Tensor{x.data(), {n, size, size, c}}, {gamma.data(), beta.data(), rm.data(), rv.data()},
                               {mean.data(), inv_std.data()}, true, Tensor{y.data(), {n, size, size, c}});
    // Reads x twice (statistics, then normalise) and writes y once.
    state.counters["GB/s"] = benchmark::Counter(3.0 * x.size() * 4 * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BatchNormForwardTraining)->Args({8, 56, 256})->Args({8, 14, 1024})->Unit(benchmark::kMillisecond);

// Forward and backward of one ResNet50 bottleneck (layer2's stride-2 block) at batch 8.
void BottleneckForwardBackward(benchmark::State& state) {
    using Block = models::Bottleneck<512, 2>;
    auto layer = Block::bind<256, cpu::Backend>({});
    models::ParamStore store;
    store.bind(layer);
    Rng rng(1);
    layer.init(rng, {});
    cpu::Context ctx;
    const Shape in{8, 56, 56, 256};
    std::vector<float> x(in.size(), 0.1f);
    const Shape out = layer.output_shape(in);
    std::vector<float> dy(out.size(), 0.01f);
    for (auto _ : state) {
        ctx.arena.reset();
        layer.forward(ctx, Tensor{x.data(), in});
        layer.backward(ctx, Tensor{dy.data(), out});
    }
    state.counters["img/s"] = benchmark::Counter(in.n, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BottleneckForwardBackward)->Unit(benchmark::kMillisecond);

}  // namespace
