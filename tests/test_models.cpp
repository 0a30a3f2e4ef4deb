// The model family: parameter counts, torchvision's names, BatchNorm's two modes, initialisation.
#include <cmath>

#include "helpers.hpp"
#include "tessera/models/resnet.hpp"
#include "runner.hpp"  // the zoo, compiled once in the runner's library

namespace tessera::test {
namespace {

using Net = models::Network<cpu::Backend>;
using namespace tessera::layers;

std::unique_ptr<Net> make(const std::string& arch, int classes = 1000, int channels = 3) {
    return runner::make_cpu_network(arch, classes, channels);
}

// The layer contracts as concepts: every network of the zoo meets them on both backends' vocabulary,
// and a layer or spec that misses one member does not, so the error names the member.
static_assert(LayerSpec<models::ResNet50, 3, cpu::Backend>);
static_assert(LayerSpec<models::ResNet20, 1, cpu::Backend>);
namespace contract {
template <class B>
struct LayerWithoutBackward {
    using Context = typename B::Context;
    static constexpr bool is_composite = false;
    Shape output_shape(Shape in) const { return in; }
    Tensor forward(Context&, const Tensor& x) { return x; }
    void visit(ParamVisitor&) {}
    void init(Rng&, const InitOptions&) {}
    Shape describe(Describer&, Shape in) const { return in; }
    int trace(Tracer&, int x) const { return x; }
};
template <class B>
struct WholeLayer : LayerWithoutBackward<B> {
    Tensor backward(typename B::Context&, const Tensor& dy) { return dy; }
};
template <template <class> class L>
struct SpecOf {
    template <int In>
    static constexpr int out_channels = In;
    template <int In, long Classes>
    static constexpr long params = 0;
    template <int In, class B>
    static L<B> bind(const BindOptions&) {
        return {};
    }
};
struct SpecWithoutParams {
    template <int In>
    static constexpr int out_channels = In;
    template <int In, class B>
    static WholeLayer<B> bind(const BindOptions&) {
        return {};
    }
};
}  // namespace contract
static_assert(Layer<contract::WholeLayer<cpu::Backend>> &&
              LayerSpec<contract::SpecOf<contract::WholeLayer>, 3, cpu::Backend>);
static_assert(!Layer<contract::LayerWithoutBackward<cpu::Backend>>);
static_assert(!LayerSpec<contract::SpecOf<contract::LayerWithoutBackward>, 3, cpu::Backend>);
static_assert(!LayerSpec<contract::SpecWithoutParams, 3, cpu::Backend>);

TEST(Models, ParameterCountsEqualTorchvision) {
    const std::pair<const char*, std::size_t> expected[] = {{"resnet18", 11'689'512},
                                                            {"resnet34", 21'797'672},
                                                            {"resnet50", 25'557'032},
                                                            {"resnet101", 44'549'160},
                                                            {"resnet152", 60'192'808}};
    for (auto& [arch, count] : expected) EXPECT_EQ(make(arch)->params().values.size(), count) << arch;
    // ResNet-20 for CIFAR-10 (He et al. 2016, §4.2, 0.27 M in table 6), counted by hand, with
    // projection shortcuts where the shape changes:
    //   stem      3x3x3x16 + BN 16                                       =     464
    //   layer1    3 blocks x (2 x 3x3x16x16 + 2 x BN 16)                  =  14,016
    //   layer2    3x3x16x32 + 3x3x32x32 + 2 BN 32 + 1x1x16x32 + BN 32,
    //             then 2 x (2 x 3x3x32x32 + 2 BN 32)                     =  51,648
    //   layer3    3x3x32x64 + 3x3x64x64 + 2 BN 64 + 1x1x32x64 + BN 64,
    //             then 2 x (2 x 3x3x64x64 + 2 BN 64)                     = 205,696
    //   fc        64 x 10 + 10                                           =     650
    EXPECT_EQ(make("resnet20", 10)->params().values.size(), 272'474u);
}

TEST(Models, NamesFollowTorchvisionStateDict) {
    auto net = make("resnet50");
    std::vector<std::string> names;
    for (auto& e : net->params().params) names.push_back(e.name);
    for (auto& e : net->params().buffer_entries) names.push_back(e.name);
    for (const char* expected :
         {"conv1.weight", "bn1.weight", "bn1.running_var", "layer1.0.conv1.weight", "layer1.0.bn3.bias",
          "layer1.0.downsample.0.weight", "layer1.0.downsample.1.running_mean", "layer2.3.conv2.weight",
          "layer3.5.bn2.num_batches_tracked", "layer4.2.conv3.weight", "fc.weight", "fc.bias"})
        EXPECT_NE(std::find(names.begin(), names.end(), expected), names.end()) << expected;
    // 161 parameters and 53 x 3 BatchNorm buffers, as resnet50().state_dict() has (320 entries).
    EXPECT_EQ(net->params().params.size() + net->params().buffer_entries.size(), 320u);
    EXPECT_EQ(std::find(names.begin(), names.end(), "layer1.1.downsample.0.weight"), names.end());
}

TEST(Models, SmallStemKeepsResolution) {
    auto net = make("resnet18_small", 10);
    EXPECT_EQ(net->output_shape({2, 32, 32, 3}), (Shape{2, 1, 1, 10}));
    auto rows = net->describe({1, 32, 32, 3});
    EXPECT_EQ(rows[0].output, (Shape{1, 32, 32, 64}));
    EXPECT_EQ(make("resnet50")->describe({1, 224, 224, 3})[3].output, (Shape{1, 56, 56, 64}));
}

TEST(Models, UnknownArchitectureListsTheKnownOnes) {
    try {
        make("resnet51");
        FAIL() << "no error";
    } catch (const Error& e) {
        EXPECT_TRUE(e.is_user_error());
        EXPECT_NE(std::string(e.what()).find("resnet50"), std::string::npos);
    }
}

// The residual sum goes into the branch's output when the branch ends in a BatchNorm, whose backward
// never reads its output (torchvision's `out += identity`): one activation fewer per block. The same
// block with an Identity after the BatchNorm cannot say so, and allocates the sum apart; both give
// the same values.
TEST(Models, ResidualSumReusesTheBranchOutput) {
    using InPlace = Residual<Seq<Conv<4, 3>, BatchNorm<BlockOutput>>, Projection<4, 1>>;
    using Apart = Residual<Seq<Conv<4, 3>, BatchNorm<BlockOutput>, Identity>, Projection<4, 1>>;
    const Shape in{2, 4, 4, 4};  // 128 floats: 512 bytes, a whole number of the arena's alignment
    std::vector<float> x(in.size());
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = std::sin(float(i));
    auto run = [&]<class Spec>(Spec) {
        Bound<Spec, 4> b;
        Rng rng(3);
        b.layer.init(rng, {});
        cpu::Context ctx(1);
        ctx.training = true;
        const Tensor y = b.layer.forward(ctx, Tensor{x.data(), in});
        return std::pair{std::vector<float>(y.data, y.data + y.size()), ctx.arena.in_use()};
    };
    const auto [in_place, in_place_bytes] = run(InPlace{});
    const auto [apart, apart_bytes] = run(Apart{});
    EXPECT_EQ(in_place, apart);
    EXPECT_EQ(apart_bytes - in_place_bytes, in.size() * sizeof(float));
}

TEST(Models, KaimingFanOutInitAndZeroInitResidual) {
    auto net = make("resnet18", 10);
    net->init(5, {true});
    auto& store = net->params();
    int checked = 0;  // a renamed layer must fail the test, not skip its check
    for (auto& e : store.params) {
        const float* v = store.values.data() + e.offset;
        if (e.name == "layer1.0.conv1.weight") {  // 64 x 3 x 3 fan-out: std = sqrt(2 / 576)
            ++checked;
            double sq = 0;
            for (std::size_t i = 0; i < e.size; ++i) sq += v[i] * v[i];
            EXPECT_NEAR(std::sqrt(sq / e.size), std::sqrt(2.0 / 576), 0.003);
        }
        if (e.name == "layer1.0.bn2.weight") {  // the last BN of a block
            ++checked;
            EXPECT_EQ(*std::max_element(v, v + e.size), 0.f);
        }
        if (e.name == "layer1.0.bn1.weight") {  // any other BN starts at 1
            ++checked;
            EXPECT_EQ(*std::min_element(v, v + e.size), 1.f);
            EXPECT_EQ(*std::max_element(v, v + e.size), 1.f);
        }
    }
    EXPECT_EQ(checked, 3) << "the layers this test checks are missing";
}

// ReLUs work in place on tensors no one else holds: never on the caller's images, never on a
// residual block's input, which its shortcut still reads.
TEST(Models, InPlaceReLUsLeaveInputsAndResultsAlone) {
    auto net = make("resnet20", 10);
    net->init(1, {});
    cpu::Context ctx(2);
    Rng rng(2);
    std::vector<float> x(2 * 16 * 16 * 3);
    fill_normal(x.data(), x.size(), rng);
    const std::vector<float> original = x;
    std::vector<float> first;
    for (int pass = 0; pass < 2; ++pass) {
        ctx.arena.reset();
        ctx.training = false;
        const Tensor y = net->forward(ctx, Tensor{x.data(), {2, 16, 16, 3}});
        const std::vector<float> logits(y.data, y.data + y.size());
        if (pass == 0)
            first = logits;
        else
            EXPECT_EQ(logits, first);
    }
    EXPECT_EQ(x, original);
    // A pre-activation block after BatchNorm: the branch's ReLU must not overwrite the block's input,
    // which the identity shortcut reads. With the branch's conv at zero, the block's output is
    // exactly its input, negative values included.
    Bound<Seq<BatchNorm<>, Residual<Seq<ReLU, Conv<4, 3>>, Projection<4, 1>>>, 4> block;
    block.layer.init(rng, {});
    for (auto& e : block.store.params)
        if (e.role == Role::conv_weight) std::fill_n(block.store.values.begin() + e.offset, e.size, 0.f);
    std::vector<float> z(2 * 5 * 5 * 4);
    fill_normal(z.data(), z.size(), rng);
    ctx.arena.reset();
    ctx.training = true;
    const Tensor out = block.layer.forward(ctx, Tensor{z.data(), {2, 5, 5, 4}});
    const std::vector<float> through_block(out.data, out.data + out.size());
    ctx.input_is_private = false;
    const Tensor normalised = block.layer.template get<0>().forward(ctx, Tensor{z.data(), {2, 5, 5, 4}});
    const std::vector<float> expected(normalised.data, normalised.data + normalised.size());
    EXPECT_LT(*std::min_element(expected.begin(), expected.end()), 0.f);
    EXPECT_EQ(through_block, expected);
}

TEST(BatchNorm, BatchStatisticsInTrainingRunningStatisticsInEval) {
    using Spec = layers::BatchNorm<>;
    Bound<Spec, 2> b;
    Rng rng(1);
    b.layer.init(rng, {});
    cpu::Context ctx(2);
    // Channel 0 holds 1..8, channel 1 holds 10 x that.
    std::vector<float> x(16);
    for (int i = 0; i < 8; ++i) x[2 * i] = float(i + 1), x[2 * i + 1] = float(10 * (i + 1));
    const Tensor in{x.data(), {2, 2, 2, 2}};
    ctx.training = true;
    Tensor y = b.layer.forward(ctx, in);
    double mean0 = 0;
    for (int i = 0; i < 8; ++i) mean0 += y.data[2 * i];
    EXPECT_NEAR(mean0 / 8, 0.0, 1e-5);                                // normalised with the batch mean
    EXPECT_NEAR(y.data[14], 7.0 / 2 / std::sqrt(5.25 + 1e-5), 1e-4);  // (8 - 4.5) / sqrt(biased var 5.25)
    auto& store = b.store;
    const float* running_mean = store.buffers.data() + store.buffer_entries[0].offset;
    const float* running_var = store.buffers.data() + store.buffer_entries[1].offset;
    EXPECT_NEAR(running_mean[0], 0.1 * 4.5, 1e-5);       // momentum 0.1 from 0
    EXPECT_NEAR(running_var[0], 0.9 + 0.1 * 6.0, 1e-5);  // unbiased variance 6 from 1
    EXPECT_NEAR(running_mean[1], 0.1 * 45, 1e-4);
    EXPECT_EQ(store.buffers[store.buffer_entries[2].offset], 1.f);  // num_batches_tracked
    ctx.training = false;
    ctx.arena.reset();
    y = b.layer.forward(ctx, in);
    EXPECT_NEAR(y.data[0], (1 - 0.45) / std::sqrt(1.5 + 1e-5), 1e-5);  // running statistics, untouched
    EXPECT_NEAR(running_mean[0], 0.45, 1e-6);
}

}  // namespace
}  // namespace tessera::test
