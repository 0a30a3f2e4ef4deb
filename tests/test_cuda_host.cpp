// The CUDA backend's host logic, checked on the CPU (no GPU needed): which cuDNN algorithm choice a
// convolution reuses, how the stem's input is padded for tensor cores, and the label check both
// backends' losses run.
#include "helpers.hpp"
#include "tessera/backend/cpu/backend.hpp"
#include "tessera/backend/cuda/algorithm_cache.hpp"
#include "tessera/backend/cuda/channel_padding.hpp"
#include "tessera/backend/labels.hpp"

namespace tessera::test {
namespace {

using cuda::AlgorithmCache;
using cuda::ConvPass;

const ConvGeometry stem{3, 64, 7, 2, 3};

TEST(CudaHost, ValidationsPartialBatchReusesTheTrainingBatchsAlgorithm) {
    AlgorithmCache cache;
    const Shape train{256, 224, 224, 3}, last{17, 224, 224, 3};
    const auto key = cuda::conv_key(stem, train, ConvPass::forward, DType::bf16, true);
    EXPECT_EQ(cache.find(key, train.n), nullptr) << "nothing is known before a Find";
    cache.remember(key, {6, 1, train.n});
    // The batch is not part of the key: the partial batch finds the training batch's choice, math
    // type included.
    EXPECT_EQ(cuda::conv_key(stem, last, ConvPass::forward, DType::bf16, true), key);
    const cuda::ConvChoice* reused = cache.find(key, last.n);
    ASSERT_NE(reused, nullptr);
    EXPECT_EQ(reused->algorithm, 6);
    EXPECT_EQ(reused->math_type, 1);
    // A larger batch than the one measured is measured anew; its choice then serves both.
    EXPECT_EQ(cache.find(key, 512), nullptr);
    cache.remember(key, {1, 2, 512});
    ASSERT_NE(cache.find(key, train.n), nullptr);
    EXPECT_EQ(cache.find(key, train.n)->algorithm, 1);
    EXPECT_EQ(cache.size(), 1u);
}

TEST(CudaHost, AlgorithmChoicesAreKeptApartByPassTypeTf32AndShape) {
    const Shape x{8, 56, 56, 64};
    const ConvGeometry g{64, 64, 3, 1, 1};
    const auto base = cuda::conv_key(g, x, ConvPass::forward, DType::f32, true);
    AlgorithmCache cache;
    cache.remember(base, {1, 1, 8});
    for (const auto& other : {cuda::conv_key(g, x, ConvPass::backward_data, DType::f32, true),
                              cuda::conv_key(g, x, ConvPass::backward_filter, DType::f32, true),
                              cuda::conv_key(g, x, ConvPass::forward, DType::bf16, true),
                              cuda::conv_key(g, x, ConvPass::forward, DType::f32, false),
                              cuda::conv_key(g, Shape{8, 28, 28, 64}, ConvPass::forward, DType::f32, true),
                              cuda::conv_key(ConvGeometry{64, 64, 3, 2, 1}, x, ConvPass::forward, DType::f32, true),
                              cuda::conv_key(ConvGeometry{64, 128, 3, 1, 1}, x, ConvPass::forward, DType::f32, true)})
        EXPECT_EQ(cache.find(other, 8), nullptr);
}

TEST(CudaHost, FewInputChannelsArePaddedInSixteenBitTypesOnly) {
    EXPECT_EQ(cuda::padded_channels(3, DType::bf16), 4);  // RGB, as MLPerf's ResNet pads it
    EXPECT_EQ(cuda::padded_channels(1, DType::f16), 4);   // grayscale
    EXPECT_EQ(cuda::padded_channels(4, DType::bf16), 4);
    EXPECT_EQ(cuda::padded_channels(6, DType::bf16), 8);
    EXPECT_EQ(cuda::padded_channels(12, DType::f16), 16);
    for (const int c : {8, 16, 64, 2048}) EXPECT_EQ(cuda::padded_channels(c, DType::bf16), c);
    for (const int c : {1, 3, 6}) EXPECT_EQ(cuda::padded_channels(c, DType::f32), c) << "fp32 takes any count";
}

// The mapping the device's pad and slice kernels use, run here on the host: a convolution of the
// padded input with zero-padded filters gives the unpadded convolution's output, and the slices of
// its gradients are the unpadded gradients (the padding's filter gradient is 0).
TEST(CudaHost, ThePaddedStemComputesTheSameConvolution) {
    for (const int in : {1, 3}) {
        const ConvGeometry g{in, 16, 7, 2, 3};
        const int padded = cuda::padded_channels(in, DType::bf16);
        const ConvGeometry gp = cuda::with_input_channels(g, padded);
        const Shape xs{2, 20, 20, in}, xps{2, 20, 20, padded}, ys = g.output_shape(xs);
        ASSERT_EQ(gp.output_shape(xps), ys);
        Rng rng(3);
        std::vector<float> x(xs.size()), w(std::size_t(g.out_channels) * g.patch()), dy(ys.size());
        fill_normal(x.data(), x.size(), rng);
        fill_normal(w.data(), w.size(), rng, 0.1);
        fill_normal(dy.data(), dy.size(), rng);
        auto pad = [&](const std::vector<float>& from, std::size_t rows) {
            std::vector<float> to(rows * padded);
            for (std::size_t i = 0; i < to.size(); ++i) {
                std::size_t source = 0;
                to[i] = cuda::padded_source(i, in, padded, &source) ? from[source] : 0.f;
            }
            return to;
        };
        auto slice = [&](const std::vector<float>& from, std::size_t rows) {
            std::vector<float> to(rows * in);
            for (std::size_t i = 0; i < to.size(); ++i) to[i] = from[cuda::sliced_source(i, in, padded)];
            return to;
        };
        const std::size_t filter_rows = std::size_t(g.out_channels) * g.kernel * g.kernel;
        std::vector<float> xp = pad(x, xs.pixels()), wp = pad(w, filter_rows);
        std::vector<float> y(ys.size()), yp(ys.size()), dx(xs.size()), dxp(xps.size()), dw(w.size()), dwp(wp.size());
        cpu::Context ctx(1);
        cpu::Backend::conv_forward(ctx, {x.data(), xs}, w.data(), g, {y.data(), ys});
        cpu::Backend::conv_backward(ctx, {x.data(), xs}, w.data(), g, {dy.data(), ys}, dw.data(), {dx.data(), xs});
        cpu::Backend::conv_forward(ctx, {xp.data(), xps}, wp.data(), gp, {yp.data(), ys});
        cpu::Backend::conv_backward(ctx, {xp.data(), xps}, wp.data(), gp, {dy.data(), ys}, dwp.data(),
                                    {dxp.data(), xps});
        EXPECT_LE(distance(yp, y), 1e-5) << in << " channels: forward";
        EXPECT_LE(distance(slice(dxp, xs.pixels()), dx), 1e-5) << in << " channels: data gradient";
        EXPECT_LE(distance(slice(dwp, filter_rows), dw), 1e-5) << in << " channels: filter gradient";
        float padding_gradient = 0.f;
        for (std::size_t i = 0; i < dwp.size(); ++i)
            if (i % padded >= std::size_t(in)) padding_gradient = std::max(padding_gradient, std::abs(dwp[i]));
        EXPECT_EQ(padding_gradient, 0.f) << "the zero input's filter slices get no gradient";
    }
}

TEST(CudaHost, ALabelOutsideTheClassesIsRefusedByTheLoss) {
    std::vector<float> logits(3 * 10, 0.1f);
    const Tensor z{logits.data(), Shape{3, 1, 1, 10}};
    for (const std::int32_t bad : {10, -1, 1000}) {
        const std::vector<std::int32_t> labels{1, bad, 2};
        try {
            cpu::softmax_cross_entropy(z, labels.data(), 0.f, nullptr);
            ADD_FAILURE() << "label " << bad << " was accepted for 10 classes";
        } catch (const Error& e) {
            EXPECT_TRUE(e.is_user_error());
            EXPECT_NE(std::string(e.what()).find("label " + std::to_string(bad)), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("10 classes"), std::string::npos) << e.what();
        }
    }
    const std::vector<std::int32_t> good{0, 9, 5};
    EXPECT_NO_THROW(cpu::softmax_cross_entropy(z, good.data(), 0.f, nullptr));
}

}  // namespace
}  // namespace tessera::test
