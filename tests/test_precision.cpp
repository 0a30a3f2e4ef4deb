// Mixed precision's plumbing, checked without a GPU: whole networks run forward and backward on a
// backend whose kernels compute nothing and check what they are given. In bf16 or fp16, every
// activation and every gradient flowing back must have the compute type, and the logits and their
// gradient fp32, as the CUDA backend's kernels assume. (The numbers themselves are compared with
// the CPU's in test_cuda.cpp, where a GPU answers.)
#include <map>
#include <string>

#include "helpers.hpp"
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

}  // namespace
}  // namespace tessera::test
