// Mixed precision, checked without a GPU.
// - Its plumbing: whole networks run forward and backward on a backend whose kernels compute nothing
//   and check what they are given. In bf16 or fp16, every activation and every gradient flowing
//   back must have the compute type, and the logits and their gradient fp32, as the kernels assume.
// - Its numbers on the CPU: every layer in bf16 against the same layer in fp32, as test_cuda.cpp
//   checks the GPU's (on the CPUs with bf16 instructions; elsewhere the test says what is missing).
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <utility>

#include "helpers.hpp"
#include "mixed_precision_layers.hpp"
#include "tessera/models/resnet.hpp"

namespace tessera::test {
namespace {

struct TypeChecking {
    struct Context {
        DType activations = DType::bf16;
        Arena arena;
        TensorPool grads;
        bool training = true;
        bool input_is_private = false;
        const float* network_input = nullptr;
        parallel::GradientHook* gradient_hook = nullptr;
        parallel::Communicator* batchnorm_group = nullptr;
        std::map<std::string, int> calls;     // operation -> times called
        std::vector<std::string> mismatches;  // what had the wrong type, and where
    };
    static constexpr const char* name = "type-checking";
    static constexpr bool has_device_memory = false;
    struct DeviceParams {};

    // Each tensor an operation takes or makes must have `want`.
    static void expect(Context& ctx, const char* op,
                       std::initializer_list<std::pair<const char*, const Tensor*>> tensors, DType want) {
        ++ctx.calls[op];
        for (auto& [role, t] : tensors)
            if (t->data && t->dtype != want)
                ctx.mismatches.push_back(std::string(op) + ": " + role + " is " + dtype_name(t->dtype) + ", not " +
                                         dtype_name(want));
    }

    static void* stream(Context&) { return nullptr; }
    static void fill_zero(Context&, float*, std::size_t) {}
    static void add_scalar(Context&, float*, float) {}
    static void axpby(Context&, float, const float*, float, float*, std::size_t) {}
    static void scale(Context&, float*, std::size_t, float) {}
    static double sum_squares(Context&, const float*, std::size_t) { return 0; }

    static void conv_forward(Context& c, const Tensor& x, const float*, const ConvGeometry&, const Tensor& y) {
        expect(c, "conv forward", {{"x", &x}, {"y", &y}}, c.activations);
    }
    static void conv_backward(Context& c, const Tensor& x, const float*, const ConvGeometry&, const Tensor& dy, float*,
                              const Tensor& dx) {
        expect(c, "conv backward", {{"x", &x}, {"dy", &dy}, {"dx", &dx}}, c.activations);
    }
    static void batchnorm_forward(Context& c, const Tensor& x, const BatchNormParams&, BatchNormSaved,
                                  const Tensor& y) {
        expect(c, "batchnorm forward", {{"x", &x}, {"y", &y}}, c.activations);
    }
    static void batchnorm_backward(Context& c, const Tensor& x, const Tensor& dy, const BatchNormParams&,
                                   BatchNormSaved, float*, float*, const Tensor& dx) {
        expect(c, "batchnorm backward", {{"x", &x}, {"dy", &dy}, {"dx", &dx}}, c.activations);
    }
    static void relu_forward(Context& c, const Tensor& x, const Tensor& y) {
        expect(c, "relu forward", {{"x", &x}, {"y", &y}}, c.activations);
    }
    static void relu_backward(Context& c, const Tensor& y, const Tensor& dy, const Tensor& dx) {
        expect(c, "relu backward", {{"y", &y}, {"dy", &dy}, {"dx", &dx}}, c.activations);
    }
    static void add(Context& c, const Tensor& a, const Tensor& b, const Tensor& y) {
        expect(c, "add", {{"a", &a}, {"b", &b}, {"y", &y}}, c.activations);
    }
    static void accumulate(Context& c, const Tensor& x, const Tensor& y) {
        expect(c, "accumulate", {{"x", &x}, {"y", &y}}, c.activations);
    }
    static void maxpool_forward(Context& c, const Tensor& x, const PoolGeometry&, const Tensor& y, std::int32_t*) {
        expect(c, "maxpool forward", {{"x", &x}, {"y", &y}}, c.activations);
    }
    static void maxpool_backward(Context& c, const Tensor& dy, const std::int32_t*, const PoolGeometry&,
                                 const Tensor& dx) {
        expect(c, "maxpool backward", {{"dy", &dy}, {"dx", &dx}}, c.activations);
    }
    static void global_avgpool_forward(Context& c, const Tensor& x, const Tensor& y) {
        expect(c, "avgpool forward", {{"x", &x}, {"y", &y}}, c.activations);
    }
    static void global_avgpool_backward(Context& c, const Tensor& dy, const Tensor& dx) {
        expect(c, "avgpool backward", {{"dy", &dy}, {"dx", &dx}}, c.activations);
    }
    static void linear_forward(Context& c, const Tensor& x, const float*, const float*, int, const Tensor& y) {
        expect(c, "linear forward", {{"x", &x}}, c.activations);
        expect(c, "linear forward", {{"the logits", &y}}, DType::f32);
    }
    static void linear_backward(Context& c, const Tensor& x, const float*, const Tensor& dy, int, float*, float*,
                                const Tensor& dx) {
        expect(c, "linear backward", {{"x", &x}, {"dx", &dx}}, c.activations);
        expect(c, "linear backward", {{"the logits' gradient", &dy}}, DType::f32);
    }
};
static_assert(LayerBackend<TypeChecking>, "the type-checking backend runs networks as the others do");

template <class Spec>
void check_types(const char* arch, DType compute, int convolutions, int batchnorms) {
    models::Model<Spec, 3, TypeChecking> net(arch, 10);
    TypeChecking::Context ctx;
    ctx.activations = compute;
    const Tensor x = ctx.arena.tensor({2, 32, 32, 3}, ctx.activations);  // as the trainer makes its input
    const Tensor logits = net.forward(ctx, x);
    EXPECT_EQ(dtype_name(logits.dtype), "fp32") << arch;
    const Tensor dlogits = ctx.arena.tensor(logits.shape);  // as the trainer makes it: fp32
    net.backward(ctx, dlogits);
    for (const auto& m : ctx.mismatches) ADD_FAILURE() << arch << " in " << dtype_name(compute) << ": " << m;
    EXPECT_EQ(ctx.calls["conv forward"], convolutions) << arch;
    EXPECT_EQ(ctx.calls["conv backward"], convolutions) << arch;
    EXPECT_EQ(ctx.calls["batchnorm backward"], batchnorms) << arch;
    EXPECT_EQ(ctx.calls["linear backward"], 2) << arch;  // one check of the compute type, one of fp32
}

TEST(MixedPrecision, EveryTensorOfResNet50HasTheComputeTypeAndTheLogitsAreFp32) {
    for (DType compute : {DType::bf16, DType::f16, DType::f32})
        check_types<models::ResNet50>("resnet50", compute, 53, 53);
}

TEST(MixedPrecision, EveryTensorOfBasicBlockResNetsHasTheComputeType) {
    for (DType compute : {DType::bf16, DType::f16}) {
        check_types<models::ResNet18>("resnet18", compute, 20, 20);
        check_types<models::ResNet20>("resnet20", compute, 21, 21);
    }
}

// ---- the CPU's bf16 against its fp32 -------------------------------------------------------------

// A tensor's values as fp32, whatever its type.
std::vector<float> values(const Tensor& t) {
    std::vector<float> v(t.size());
    cpu::widen_to(t, v.data());
    return v;
}

// n floats rounded to bf16, as bf16 values.
std::vector<cpu::bf16> in_bf16(const std::vector<float>& v) {
    std::vector<cpu::bf16> out(v.size());
    for (std::size_t i = 0; i < v.size(); ++i) out[i] = cpu::to_bf16(v[i]);
    return out;
}

// One layer twice from the same weights and inputs, in fp32 and in bf16: the output, the input's
// gradient, every parameter's gradient and the running statistics must agree within 2e-2 of each
// tensor's largest value. The fp32 side is given the bf16 side's rounded input and output gradient,
// so that what differs is the layer's own arithmetic.
template <class Spec, int In>
void check_cpu_bf16(Shape in, bool training, bool backward) {
    const double tol = 2e-2;
    const std::string what = std::string(typeid(Spec).name()) + " at " + in.str();
    Bound<Spec, In> fp32, bf16;
    Rng rng(11);
    fp32.layer.init(rng, {});
    for (auto& e : fp32.store.params) fill_normal(fp32.store.values.data() + e.offset, e.size, rng, 0.5);
    for (auto& e : fp32.store.buffer_entries)
        for (std::size_t i = 0; i < e.size; ++i)
            fp32.store.buffers[e.offset + i] = e.role == layers::Role::running_var ? float(0.5 + rng.uniform()) : 0.f;
    std::copy(fp32.store.values.begin(), fp32.store.values.end(), bf16.store.values.begin());
    std::copy(fp32.store.buffers.begin(), fp32.store.buffers.end(), bf16.store.buffers.begin());

    cpu::Context fp32_ctx(2, DType::f32), bf16_ctx(2, DType::bf16);
    fp32_ctx.training = bf16_ctx.training = training;
    std::vector<float> x(in.size());
    fill_normal(x.data(), x.size(), rng);
    std::vector<cpu::bf16> x_bf16 = in_bf16(x);
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = cpu::widen(x_bf16[i]);

    const Tensor y32 = fp32.layer.forward(fp32_ctx, Tensor{x.data(), in});
    const Tensor y16 = bf16.layer.forward(bf16_ctx, Tensor{reinterpret_cast<float*>(x_bf16.data()), in, DType::bf16});
    ASSERT_EQ(y16.shape, y32.shape) << what;
    EXPECT_LT(distance(values(y16), values(y32)), tol) << what << ": forward";
    if (!backward) return;

    // The gradient has its output's type: fp32 after Linear (the logits), bf16 elsewhere.
    std::vector<float> dy(y32.size());
    fill_normal(dy.data(), dy.size(), rng);
    std::vector<cpu::bf16> dy_bf16 = in_bf16(dy);
    if (y16.dtype == DType::bf16)
        for (std::size_t i = 0; i < dy.size(); ++i) dy[i] = cpu::widen(dy_bf16[i]);
    const Tensor dy16 = y16.dtype == DType::bf16
                            ? Tensor{reinterpret_cast<float*>(dy_bf16.data()), y16.shape, DType::bf16}
                            : Tensor{dy.data(), y16.shape};
    const Tensor dx32 = fp32.layer.backward(fp32_ctx, Tensor{dy.data(), y32.shape});
    const Tensor dx16 = bf16.layer.backward(bf16_ctx, dy16);
    EXPECT_EQ(dtype_name(dx16.dtype), "bf16") << what;
    EXPECT_LT(distance(values(dx16), values(dx32)), tol) << what << ": dx";
    for (auto& e : fp32.store.params) {
        const auto slice = [&](const std::vector<float>& v) {
            return std::vector<float>(v.begin() + e.offset, v.begin() + e.offset + e.size);
        };
        EXPECT_LT(distance(slice(bf16.store.grads), slice(fp32.store.grads)), tol)
            << what << ": " << e.name << " gradient";
    }
    EXPECT_LT(distance(bf16.store.buffers, fp32.store.buffers), tol) << what << ": running statistics";
}

TEST(MixedPrecision, EveryLayerInBf16OnTheCpuIsFp32WithinBf16Rounding) {
    if (!cpu::has_bf16_instructions())
        GTEST_SKIP() << "this CPU has no bf16 instructions (AVX512-BF16 or AMX-BF16; oneDNN finds " << cpu::onednn_isa()
                     << "), and the CPU backend does not emulate them";
    for_each_mixed_precision_layer([]<class Spec, int In>(Shape in, bool training, bool backward) {
        check_cpu_bf16<Spec, In>(in, training, backward);
    });
}

// A filter gradient taken as one oneDNN call per thread over shares of the batch
// (filter_gradient_by_batch_shares) must be the whole batch's, added into dw as the one call adds
// it: an odd batch, so that the shares differ in size, and a dw that starts non-zero.
TEST(MixedPrecision, Bf16FilterGradientByBatchSharesIsTheWholeBatchs) {
    if (!cpu::has_bf16_instructions())
        GTEST_SKIP() << "this CPU has no bf16 instructions (AVX512-BF16 or AMX-BF16; oneDNN finds " << cpu::onednn_isa()
                     << "), and the CPU backend does not emulate them";
    cpu::Context ctx(2);
    const ConvGeometry g{16, 32, 3, 2, 1};
    const Shape in{5, 9, 9, 16}, out = g.output_shape(in);
    ASSERT_TRUE(cpu::filter_gradient_by_batch_shares(g, in, DType::bf16)) << "the rule no longer takes this shape";
    EXPECT_EQ(cpu::filter_gradient_by_batch_shares({64, 64, 3, 1, 1}, {128, 7, 7, 64}, DType::bf16),
              cpu::onednn_has_amx())
        << "the rule takes the quick start's 64-channel stride-1 layer by shares where oneDNN has AMX, and only there";
    Rng rng(11);
    auto random_bf16 = [&](Shape shape) {
        std::vector<float> v(shape.size());
        fill_normal(v.data(), v.size(), rng);
        std::vector<cpu::bf16> b(v.size());
        for (std::size_t i = 0; i < v.size(); ++i) b[i] = cpu::narrow<cpu::bf16>(v[i]);
        return b;
    };
    std::vector<cpu::bf16> x = random_bf16(in), dy = random_bf16(out);
    const std::size_t weights = std::size_t(g.out_channels) * g.patch();
    std::vector<float> start(weights);
    fill_normal(start.data(), weights, rng);
    const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
    dnnl::stream stream(engine);
    auto gradient = [&](cpu::FilterGradientCalls calls) {
        cpu::OneDnnConv conv(engine, g, in, DType::bf16, calls);
        std::vector<float> dw = start;
        conv.backward_weights(stream, reinterpret_cast<const float*>(x.data()),
                              reinterpret_cast<const float*>(dy.data()), dw.data());
        return dw;
    };
    const std::vector<float> whole = gradient(cpu::FilterGradientCalls::whole_batch),
                             shares = gradient(cpu::FilterGradientCalls::batch_shares);
    double largest = 0, worst = 0;
    for (std::size_t i = 0; i < weights; ++i) {
        largest = std::max(largest, double(std::abs(whole[i] - start[i])));
        worst = std::max(worst, double(std::abs(whole[i] - shares[i])));
    }
    ASSERT_GT(largest, 1.0) << "the filter gradient added nothing";
    EXPECT_LT(worst, 1e-5 * largest) << "by shares of the batch the filter gradient is another";
}

// tessera's own bf16 filter gradient (PairedFilterGradient, images taken two at a time) against the
// sum written out in double precision, and added into a dw that starts non-zero. Odd batches, so that
// the last image is paired with a zero image; images that are not square; one shape whose image pairs
// run in groups, one that runs them one at a time; channels in and out that differ.
TEST(MixedPrecision, Bf16FilterGradientByImagePairsIsTheSumWrittenOut) {
    if (!cpu::has_bf16_instructions())
        GTEST_SKIP() << "this CPU has no bf16 instructions (AVX512-BF16 or AMX-BF16; oneDNN finds " << cpu::onednn_isa()
                     << "), and the CPU backend does not emulate them";
    cpu::Context ctx(2);
    // The rule gives the quick start's first stage to the pairs where oneDNN has no AMX, and to oneDNN's
    // tile kernels where it has; the kernel itself is checked below on every bf16 CPU.
    ASSERT_EQ(cpu::filter_gradient_calls({16, 16, 3, 1, 1}, {128, 28, 28, 16}, DType::bf16),
              cpu::onednn_has_amx() ? cpu::FilterGradientCalls::whole_batch : cpu::FilterGradientCalls::image_pairs)
        << "the rule no longer takes the quick start's first stage as measured (oneDNN runs " << cpu::onednn_isa()
        << ")";
    Rng rng(12);
    for (const auto& [g, in] : {std::pair{ConvGeometry{32, 16, 3, 1, 1}, Shape{5, 6, 7, 32}},
                                std::pair{ConvGeometry{16, 48, 3, 1, 1}, Shape{3, 17, 16, 16}}}) {
        SCOPED_TRACE(testing::Message() << in.n << "x" << in.h << "x" << in.w << ", " << g.in_channels << " -> "
                                        << g.out_channels);
        const Shape out = g.output_shape(in);
        auto random_bf16 = [&](Shape shape) {
            std::vector<float> v(shape.size());
            fill_normal(v.data(), v.size(), rng);
            std::vector<cpu::bf16> b(v.size());
            for (std::size_t i = 0; i < v.size(); ++i) b[i] = cpu::narrow<cpu::bf16>(v[i]);
            return b;
        };
        const std::vector<cpu::bf16> x = random_bf16(in), dy = random_bf16(out);
        const std::size_t weights = std::size_t(g.out_channels) * g.patch();
        std::vector<float> dw(weights);
        fill_normal(dw.data(), weights, rng);
        // dw[o][kh][kw][c] + sum over n, h, w of dy[n][h][w][o] * x[n][h+kh-1][w+kw-1][c]
        std::vector<double> expected(dw.begin(), dw.end());
        for (int n = 0; n < in.n; ++n)
            for (int h = 0; h < out.h; ++h)
                for (int w = 0; w < out.w; ++w)
                    for (int o = 0; o < g.out_channels; ++o) {
                        const double d = cpu::widen(dy[((std::size_t(n) * out.h + h) * out.w + w) * out.c + o]);
                        for (int kh = 0; kh < 3; ++kh)
                            for (int kw = 0; kw < 3; ++kw) {
                                const int ih = h + kh - 1, iw = w + kw - 1;
                                if (ih < 0 || ih >= in.h || iw < 0 || iw >= in.w) continue;
                                const cpu::bf16* xs = &x[((std::size_t(n) * in.h + ih) * in.w + iw) * in.c];
                                double* e = &expected[(std::size_t(o) * 9 + std::size_t(kh * 3 + kw)) * in.c];
                                for (int c = 0; c < in.c; ++c) e[c] += d * cpu::widen(xs[c]);
                            }
                    }
        const dnnl::engine engine(dnnl::engine::kind::cpu, 0);
        dnnl::stream stream(engine);
        cpu::OneDnnConv conv(engine, g, in, DType::bf16, cpu::FilterGradientCalls::image_pairs);
        const std::vector<float> start = dw;
        conv.backward_weights(stream, reinterpret_cast<const float*>(x.data()),
                              reinterpret_cast<const float*>(dy.data()), dw.data());
        double largest = 0, worst = 0;
        for (std::size_t i = 0; i < weights; ++i) {
            largest = std::max(largest, std::abs(expected[i] - start[i]));
            worst = std::max(worst, std::abs(expected[i] - double(dw[i])));
        }
        ASSERT_GT(largest, 1.0) << "the filter gradient written out is nothing";
        EXPECT_LT(worst, 1e-5 * largest) << "by image pairs the filter gradient is another";
    }
}

}  // namespace
}  // namespace tessera::test
