// The CUDA backend against the CPU backend on the same inputs: every layer forward and backward,
// and a whole ResNet50 training step. In fp32 with TF32 off the two agree within 1e-4 of each
// tensor's largest value; in bf16 and fp16 (mixed precision) within 2e-2, the CPU given the same
// rounded inputs. Skips itself, saying so, where no GPU answers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <tuple>
#include <cstring>

#include "helpers.hpp"
#include "mixed_precision_layers.hpp"
#include "runner.hpp"
#include "tessera/backend/cuda/backend.hpp"
#include "tessera/models/resnet.hpp"
#include "tessera/plugin/registry.hpp"
#include "tessera/train/step.hpp"

namespace tessera::test {
namespace {

using namespace tessera::layers;

#define SKIP_WITHOUT_GPU()                                                            \
    do {                                                                              \
        std::string why;                                                              \
        if (!cuda::device_available(&why)) GTEST_SKIP() << "no CUDA device: " << why; \
    } while (0)

// A device copy of host floats, freed at scope exit.
struct DeviceFloats {
    float* data = nullptr;
    std::size_t n = 0;
    explicit DeviceFloats(const std::vector<float>& host) : n(host.size()) {
        EXPECT_EQ(cudaMalloc(&data, n * sizeof(float)), cudaSuccess);
        cudaMemcpy(data, host.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    }
    ~DeviceFloats() { cudaFree(data); }
};

std::vector<float> to_host(const float* device, std::size_t n) {
    std::vector<float> host(n);
    cudaDeviceSynchronize();
    cudaMemcpy(host.data(), device, n * sizeof(float), cudaMemcpyDeviceToHost);
    return host;
}

// Host values rounded to what dtype holds, in place (so that the CPU sees what the GPU sees).
void round_to(std::vector<float>& v, DType t) {
    for (float& x : v)
        x = t == DType::bf16  ? __bfloat162float(__float2bfloat16(x))
            : t == DType::f16 ? __half2float(__float2half(x))
                              : x;
}

// Host floats on the device as dtype, freed at scope exit.
struct DeviceTensor {
    void* data = nullptr;
    DType dtype;
    DeviceTensor(const std::vector<float>& host, DType t) : dtype(t) {
        std::vector<std::uint16_t> half(host.size());
        for (std::size_t i = 0; i < host.size() && t != DType::f32; ++i) {
            const __nv_bfloat16 b = __float2bfloat16(host[i]);
            const __half h = __float2half(host[i]);
            std::memcpy(&half[i], t == DType::bf16 ? static_cast<const void*>(&b) : static_cast<const void*>(&h), 2);
        }
        const std::size_t bytes = host.size() * element_bytes(t);
        EXPECT_EQ(cudaMalloc(&data, bytes), cudaSuccess);
        cudaMemcpy(data, t == DType::f32 ? static_cast<const void*>(host.data()) : half.data(), bytes,
                   cudaMemcpyHostToDevice);
    }
    ~DeviceTensor() { cudaFree(data); }
    Tensor view(Shape s) const { return Tensor{static_cast<float*>(data), s, dtype}; }
};

// A device tensor of any dtype, as host floats.
std::vector<float> to_host(const Tensor& t) {
    if (t.dtype == DType::f32) return to_host(t.data, t.size());
    std::vector<std::uint16_t> raw(t.size());
    cudaDeviceSynchronize();
    cudaMemcpy(raw.data(), t.data, t.bytes(), cudaMemcpyDeviceToHost);
    std::vector<float> host(t.size());
    for (std::size_t i = 0; i < raw.size(); ++i) {
        if (t.dtype == DType::bf16) {
            host[i] = __bfloat162float(__ushort_as_bfloat16(raw[i]));
        } else {
            host[i] = __half2float(__ushort_as_half(raw[i]));
        }
    }
    return host;
}

// One layer on both backends from the same weights and inputs: output, input gradient, parameter
// gradients and running statistics. `dtype`: the GPU's activations (bf16 and fp16 compute with fp32
// weights, as in training).
template <class Spec, int In>
void check_parity(Shape in, bool training, double tol = 1e-4, DType dtype = DType::f32,
                  parallel::Communicator* group = nullptr, bool backward = true) {
    Bound<Spec, In> host;
    Rng rng(11);
    host.layer.init(rng, {});
    for (auto& e : host.store.params) fill_normal(host.store.values.data() + e.offset, e.size, rng, 0.5);
    for (auto& e : host.store.buffer_entries)
        for (std::size_t i = 0; i < e.size; ++i)
            host.store.buffers[e.offset + i] = e.role == Role::running_var ? float(0.5 + rng.uniform()) : 0.f;

    auto layer = Spec::template bind<In, cuda::Backend>(BindOptions{10});
    models::ParamStore store;
    store.bind(layer);
    store.values = host.store.values;
    store.buffers = host.store.buffers;
    cuda::DeviceParams device(store.values.size(), store.buffers.size());
    device.upload(store.values.data(), store.buffers.data());
    store.point(layer, device.memory<models::ParamStore::Memory>());

    cpu::Context cpu_ctx(2);
    cuda::Settings settings;
    settings.tf32 = false;
    settings.compute = dtype;
    cuda::Context gpu_ctx(settings);
    cpu_ctx.training = gpu_ctx.training = training;
    cpu_ctx.batchnorm_group = gpu_ctx.batchnorm_group = group;
    std::vector<float> x(in.size());
    fill_normal(x.data(), x.size(), rng);
    round_to(x, dtype);
    DeviceTensor x_gpu(x, dtype);

    const Tensor y_cpu = host.layer.forward(cpu_ctx, Tensor{x.data(), in});
    const Tensor y_gpu = layer.forward(gpu_ctx, x_gpu.view(in));
    ASSERT_EQ(y_gpu.shape, y_cpu.shape);
    EXPECT_LT(distance(to_host(y_gpu), {y_cpu.data, y_cpu.data + y_cpu.size()}), tol)
        << "forward, " << dtype_name(dtype);
    if (!backward) return;
    std::vector<float> dy(y_cpu.size());
    fill_normal(dy.data(), dy.size(), rng);
    round_to(dy, y_gpu.dtype);  // the gradient has its output's type: fp32 after Linear, the compute type elsewhere
    DeviceTensor dy_gpu(dy, y_gpu.dtype);
    const Tensor dx_cpu = host.layer.backward(cpu_ctx, Tensor{dy.data(), y_cpu.shape});
    const Tensor dx_gpu = layer.backward(gpu_ctx, dy_gpu.view(y_cpu.shape));
    EXPECT_EQ(dtype_name(dx_gpu.dtype), dtype_name(dtype));
    EXPECT_LT(distance(to_host(dx_gpu), {dx_cpu.data, dx_cpu.data + dx_cpu.size()}), tol)
        << "dx, " << dtype_name(dtype);
    device.download(store.values.data(), store.grads.data(), store.buffers.data());
    for (auto& e : store.params) {
        const auto slice = [&](const std::vector<float>& v) {
            return std::vector<float>(v.begin() + e.offset, v.begin() + e.offset + e.size);
        };
        EXPECT_LT(distance(slice(store.grads), slice(host.store.grads)), tol)
            << e.name << " gradient, " << dtype_name(dtype);
    }
    EXPECT_LT(distance(store.buffers, host.store.buffers), tol) << "running statistics, " << dtype_name(dtype);
}

// Every layer of a ResNet in mixed precision: bf16 and fp16 activations, fp32 weights.
void check_every_layer(DType dtype) {
    for_each_mixed_precision_layer([&]<class Spec, int In>(Shape in, bool training, bool backward) {
        check_parity<Spec, In>(in, training, 2e-2, dtype, nullptr, backward);
    });
}
// Two ranks with the same batch, seen from one of them: every sum comes back doubled. The host
// collectives serve the CPU backend, the device ones the GPU's.
class TwoIdenticalRanks final : public parallel::Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 2; }
    int local_rank() const override { return 0; }
    int local_size() const override { return 1; }
    std::string name() const override { return "two identical ranks"; }
    bool device_memory() const override { return true; }
    void all_reduce_sum(double* data, std::size_t count) override {
        for (std::size_t i = 0; i < count; ++i) data[i] *= 2;
    }
    void all_reduce_sum(double* data, std::size_t count, void* stream) override { doubled(data, count, stream); }
    void all_reduce_sum(float* data, std::size_t count, void* stream) override { doubled(data, count, stream); }
    void broadcast(void*, std::size_t, int) override {}
    void barrier() override {}
    [[noreturn]] void abort(int code) override { std::_Exit(code); }
    std::unique_ptr<Communicator> duplicate() const override { return std::make_unique<TwoIdenticalRanks>(); }

private:
    template <class T>
    static void doubled(T* device, std::size_t count, void* stream) {
        std::vector<T> host(count);
        cudaStreamSynchronize(static_cast<cudaStream_t>(stream));
        cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost);
        for (T& v : host) v *= 2;
        cudaMemcpy(device, host.data(), count * sizeof(T), cudaMemcpyHostToDevice);
    }
};

// Synchronised BatchNorm on the GPU (sums all-reduced on the device) against the CPU's, both over
// "two ranks": the statistics are those of the two batches together, dgamma and dbeta this rank's.
TEST(Cuda, SynchronisedBatchNormMatchesCpu) {
    SKIP_WITHOUT_GPU();
    TwoIdenticalRanks two;
    check_parity<BatchNorm<>, 32>({4, 7, 7, 32}, true, 1e-4, DType::f32, &two);
    check_parity<BatchNorm<>, 32>({4, 7, 7, 32}, true, 2e-2, DType::bf16, &two);
}

TEST(Cuda, EveryLayerInBf16) {
    SKIP_WITHOUT_GPU();
    check_every_layer(DType::bf16);
}
TEST(Cuda, EveryLayerInFp16) {
    SKIP_WITHOUT_GPU();
    check_every_layer(DType::f16);
}

TEST(Cuda, Conv3x3) {
    SKIP_WITHOUT_GPU();
    check_parity<Conv<32, 3>, 16>({4, 14, 14, 16}, true);
}
TEST(Cuda, Conv3x3Stride2) {
    SKIP_WITHOUT_GPU();
    check_parity<Conv<32, 3, 2>, 16>({4, 15, 15, 16}, true);
}
TEST(Cuda, Conv1x1AndStride2) {
    SKIP_WITHOUT_GPU();
    check_parity<Conv<64, 1>, 32>({4, 8, 8, 32}, true);
    check_parity<Conv<64, 1, 2>, 32>({4, 8, 8, 32}, true);
}
TEST(Cuda, Conv7x7Stride2) {
    SKIP_WITHOUT_GPU();
    check_parity<Conv<64, 7, 2>, 3>({2, 32, 32, 3}, true);
}
TEST(Cuda, BatchNormTrainingAndEval) {
    SKIP_WITHOUT_GPU();
    check_parity<BatchNorm<>, 32>({4, 7, 7, 32}, true);
    check_parity<BatchNorm<>, 32>({4, 7, 7, 32}, false);
}
TEST(Cuda, ReLUPoolingLinear) {
    SKIP_WITHOUT_GPU();
    check_parity<ReLU, 8>({2, 5, 5, 8}, true);
    check_parity<MaxPool<3, 2>, 8>({2, 9, 9, 8}, true);
    check_parity<GlobalAvgPool, 16>({3, 4, 4, 16}, true);
    check_parity<Linear<10>, 64>({5, 1, 1, 64}, true);
}
TEST(Cuda, BottleneckBlock) {
    SKIP_WITHOUT_GPU();
    check_parity<models::Bottleneck<64, 2>, 32>({2, 8, 8, 32}, true, 2e-4);
}

// ||a - b|| / ||b||.
double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
    double diff = 0, norm = 1e-30;
    for (std::size_t i = 0; i < b.size(); ++i) diff += double(a[i] - b[i]) * (a[i] - b[i]), norm += double(b[i]) * b[i];
    return std::sqrt(diff / norm);
}

// A whole ResNet50 training step on both backends from the same weights: loss, the gradients of the
// first and last layers, and the weights after an SGD step. The last layer agrees as every layer
// does; the first is 53 training-mode BatchNorms away, each of which amplifies rounding differences
// (and a ReLU or max-pool winner that flips on a last-bit difference routes a gradient elsewhere),
// so it is compared by relative L2 norm: in fp32, measured 2.2% of the largest value on an H200.
// The step's update (the weights after it less those before) is compared, not the weights, whose
// size would hide a missing or wrong update: it is held to its gradient's tolerance.
struct StepTolerance {
    double loss, last_gradient, first_gradient, statistics;
};
void resnet50_step_parity(DType dtype, StepTolerance tol) {
    auto cpu_net = runner::make_cpu_network("resnet50", 1000, 3);
    auto gpu_net = runner::make_cuda_network("resnet50", 1000, 3);
    cpu_net->init(3, {});
    gpu_net->init(3, {});
    cpu::Context cpu_ctx;
    cuda::Settings settings;
    settings.tf32 = false;
    settings.compute = dtype;
    cuda::Context gpu_ctx(settings);

    plugin::Registry registry({plugin_dir()});
    const auto* sgd = registry.find("optimizer", "sgd");
    ASSERT_NE(sgd, nullptr);
    const plugin::Options sgd_options(
        {{"momentum", 0.9}, {"weight_decay", 1e-4}, {"nesterov", false}, {"no_decay_bn_bias", false}});
    auto cpu_sgd = registry.create<plugin::Optimizer>(*sgd, sgd_options);
    auto gpu_sgd = registry.create<plugin::Optimizer>(*sgd, sgd_options);

    plugin::Batch batch;
    batch.count = 4, batch.height = batch.width = 96, batch.channels = 3;
    Rng rng(5);
    batch.pixels.resize(std::size_t(4) * 96 * 96 * 3);
    for (auto& p : batch.pixels) p = std::uint8_t(rng.below(256));
    batch.labels = {1, 500, 999, 3};
    std::vector<float> mean = {0.485f, 0.456f, 0.406f}, inv_std = {1 / 0.229f, 1 / 0.224f, 1 / 0.225f};

    auto step = [&]<class B>(models::Network<B>& net, typename B::Context& ctx, plugin::Optimizer& opt) {
        ctx.arena.reset();
        net.zero_grad(ctx);
        Tensor x = ctx.arena.tensor({4, 96, 96, 3}, ctx.activations);
        B::normalize_images(ctx, batch.pixels.data(), mean.data(), inv_std.data(), x);
        const Tensor logits = net.forward(ctx, x);
        const Tensor dlogits = ctx.arena.tensor(logits.shape);
        const auto loss = B::softmax_cross_entropy(ctx, logits, batch.labels.data(), 0.1f, dlogits.data);
        net.backward(ctx, dlogits);
        net.download();  // the gradients and weights, before the step
        const auto grads = net.params().grads;
        const auto before = net.params().values;
        opt.step(train::optimizer_view(net, ctx), {0.1, std::nullopt});
        net.download();
        std::vector<float> update(before.size());
        for (std::size_t i = 0; i < update.size(); ++i) update[i] = net.params().values[i] - before[i];
        return std::make_tuple(loss.loss, grads, update);
    };
    const auto [cpu_loss, cpu_grads, cpu_update] = step.template operator()<cpu::Backend>(*cpu_net, cpu_ctx, *cpu_sgd);
    const auto [gpu_loss, gpu_grads, gpu_update] = step.template operator()<cuda::Backend>(*gpu_net, gpu_ctx, *gpu_sgd);
    std::printf("%s: loss %.6f on the GPU, %.6f on the CPU\n", dtype_name(dtype).c_str(), gpu_loss, cpu_loss);
    EXPECT_NEAR(gpu_loss, cpu_loss, tol.loss * std::abs(cpu_loss));
    for (const char* name : {"conv1.weight", "fc.weight", "fc.bias"}) {
        bool is_buffer = false;
        const auto* e = cpu_net->params().find(name, is_buffer);
        ASSERT_NE(e, nullptr);
        auto slice = [&](const std::vector<float>& v) {
            return std::vector<float>(v.begin() + e->offset, v.begin() + e->offset + e->size);
        };
        const bool first = std::string(name) == "conv1.weight";
        const double grad_gap = relative_l2(slice(gpu_grads), slice(cpu_grads));
        const double update_gap = relative_l2(slice(gpu_update), slice(cpu_update));
        std::printf("%s %s: gradient relative L2 %.2e, update %.2e\n", dtype_name(dtype).c_str(), name, grad_gap,
                    update_gap);
        EXPECT_LT(grad_gap, first ? tol.first_gradient : tol.last_gradient) << name << " gradient";
        EXPECT_LT(update_gap, first ? tol.first_gradient : tol.last_gradient) << name << " update";
    }
    EXPECT_LT(distance(gpu_net->params().buffers, cpu_net->params().buffers), tol.statistics) << "BatchNorm statistics";
}

TEST(Cuda, ResNet50TrainingStepMatchesCpu) {
    SKIP_WITHOUT_GPU();
    resnet50_step_parity(DType::f32, {1e-4, 1e-3, 5e-2, 1e-4});
}
// bf16 keeps 8 bits of mantissa: each layer within 2e-2 as above; the first layer's gradient, 53
// BatchNorms down, is held to 25%.
TEST(Cuda, ResNet50TrainingStepMatchesCpuInBf16) {
    SKIP_WITHOUT_GPU();
    resnet50_step_parity(DType::bf16, {2e-2, 5e-2, 0.25, 2e-2});
}

// Training end to end in each precision: 40 steps on one batch of synthetic images, whose brightness
// gives the class. The loss falls as in fp32, and fp16's dynamic loss scale stays a power of two.
TEST(Cuda, MixedPrecisionTrainingLearns) {
    SKIP_WITHOUT_GPU();
    plugin::Registry registry({plugin_dir()});
    for (DType dtype : {DType::f32, DType::bf16, DType::f16}) {
        auto data = registry.create<plugin::DataSource>(*registry.find("data", "synthetic"),
                                                        plugin::Options({{"image_size", std::int64_t(32)},
                                                                         {"channels", std::int64_t(3)},
                                                                         {"num_classes", std::int64_t(10)},
                                                                         {"train_size", std::int64_t(64)},
                                                                         {"val_size", std::int64_t(0)}}));
        auto sgd = registry.create<plugin::Optimizer>(
            *registry.find("optimizer", "sgd"),
            plugin::Options(
                {{"momentum", 0.9}, {"weight_decay", 0.0}, {"nesterov", false}, {"no_decay_bn_bias", false}}));
        cuda::Settings settings;
        settings.compute = dtype;
        cuda::Context ctx(settings);
        auto net = runner::make_cuda_network("resnet20", 10, 3);
        net->init(1, {});
        train::StepConfig config;
        config.batch_size = 64;
        if (dtype == DType::f16) config.loss_scale = {train::LossScaler::dynamic_start, true, 10};
        train::Step<cuda::Backend> step(ctx, *net, *sgd, data->info(), config);
        data->start_epoch(plugin::Split::train, train::epoch_plan(1, plugin::Split::train, 64, 0, nullptr));
        plugin::Batch batch;
        ASSERT_TRUE(data->next(batch));
        const double first = step.run(batch, {0.05, std::nullopt}).loss();
        double last = first;
        for (int s = 1; s < 40; ++s) last = step.run(batch, {0.05, std::nullopt}).loss();
        std::printf("%s: loss %.4f after the first step, %.4f after 40; loss scale %g\n", dtype_name(dtype).c_str(),
                    first, last, step.scaler().scale());
        EXPECT_LT(last, 0.5 * first) << dtype_name(dtype);
        const double exponent = std::log2(step.scaler().scale());
        EXPECT_EQ(exponent, std::round(exponent)) << dtype_name(dtype);
    }
}

TEST(Cuda, VectorOpsMatchCpu) {
    SKIP_WITHOUT_GPU();
    cpu::Context cpu_ctx(2);
    cuda::Context gpu_ctx;
    Rng rng(8);
    std::vector<float> x(100003), y(100003);
    fill_normal(x.data(), x.size(), rng);
    fill_normal(y.data(), y.size(), rng);
    DeviceFloats dx(x), dy(y);
    cpu::Backend::axpby(cpu_ctx, 0.25f, x.data(), 0.75f, y.data(), y.size());
    cuda::Backend::axpby(gpu_ctx, 0.25f, dx.data, 0.75f, dy.data, y.size());
    EXPECT_LT(distance(to_host(dy.data, y.size()), y), 1e-6);
    cpu::Backend::scale(cpu_ctx, y.data(), y.size(), -3.f);
    cuda::Backend::scale(gpu_ctx, dy.data, y.size(), -3.f);
    EXPECT_LT(distance(to_host(dy.data, y.size()), y), 1e-6);
    const double want = cpu::Backend::sum_squares(cpu_ctx, y.data(), y.size());
    EXPECT_NEAR(cuda::Backend::sum_squares(gpu_ctx, dy.data, y.size()), want, 1e-9 * want);
}

// Each optimizer's GPU step against its CPU step, over three steps of ResNet-20's parameter layout.
TEST(Cuda, OptimizersStepAsOnTheCpu) {
    SKIP_WITHOUT_GPU();
    auto net = runner::make_cpu_network("resnet20", 10, 3);
    net->init(1, {});
    cuda::Context gpu_ctx;
    plugin::Registry registry({plugin_dir()});
    for (const char* name : {"sgd", "adamw", "lars"}) {
        const auto* entry = registry.find("optimizer", name);
        ASSERT_NE(entry, nullptr) << name;
        std::map<std::string, plugin::Value> options;
        for (auto& o : entry->info.options) options.emplace(o.name, o.default_value);
        if (options.count("no_decay_bn_bias")) options["no_decay_bn_bias"] = true;
        auto on_cpu = registry.create<plugin::Optimizer>(*entry, plugin::Options(options));
        auto on_gpu = registry.create<plugin::Optimizer>(*entry, plugin::Options(options));
        cpu::Context host_ctx(1);
        plugin::Parameters host = train::optimizer_view(*net, host_ctx);
        std::vector<float> w = net->params().values, g(w.size());
        Rng rng(3);
        fill_normal(g.data(), g.size(), rng, 0.1);
        DeviceFloats dw(w), dg(g);
        host.values = w.data(), host.grads = g.data();
        plugin::Parameters device = host;
        device.values = dw.data, device.grads = dg.data, device.device = "cuda",
        device.stream = cuda::Backend::stream(gpu_ctx);
        for (int step = 0; step < 3; ++step) {
            on_cpu->step(host, {0.5, std::nullopt});
            on_gpu->step(device, {0.5, std::nullopt});
        }
        gpu_ctx.synchronize();
        EXPECT_LT(distance(to_host(dw.data, w.size()), w), 1e-5) << name;
        const auto cpu_state = on_cpu->state(), gpu_state = on_gpu->state();
        for (auto& [key, values] : cpu_state)
            EXPECT_LT(distance(gpu_state.at(key), values), 1e-5) << name << " " << key;
    }
}

}  // namespace
}  // namespace tessera::test
