// Every layer's backward against central finite differences of a random projection of its output,
// f = sum(y * r), with f accumulated in double. The layers compute in fp32, so the step is 1e-2
// and the tolerance a few parts in a thousand of the gradient's scale.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "../runner/runner.hpp"
#include "helpers.hpp"
#include "tessera/backend/cpu/loss.hpp"
#include "tessera/models/resnet.hpp"

namespace tessera::test {
namespace {

using namespace tessera::layers;

struct Tolerance {
    double step = 1e-2, relative = 2e-2, absolute = 2e-3;
    bool random_parameters = true;  // false: keep the layers' own initialisation (deep networks)
};

template <class Spec, int In>
void check_gradients(Shape in, bool training, Tolerance tol = {}, int probes = 24) {
    Bound<Spec, In> b;
    Rng rng(7);
    b.layer.init(rng, {});
    // Non-trivial parameters and statistics, so every term of every gradient matters.
    // BN gammas stay away from 0: a BN after one with gamma ~ 0 sees a variance near its eps, where
    // it curves too sharply for a finite-difference step.
    for (auto& e : b.store.params) {
        if (!tol.random_parameters) break;
        float* v = b.store.values.data() + e.offset;
        if (e.role == Role::bn_weight)
            for (std::size_t i = 0; i < e.size; ++i) v[i] = float((rng.coin() ? 1 : -1) * rng.uniform(0.5, 1.5));
        else
            fill_normal(v, e.size, rng, e.role == Role::conv_weight ? 0.3 : 0.7);
    }
    for (auto& e : b.store.buffer_entries) {
        float* v = b.store.buffers.data() + e.offset;
        for (std::size_t i = 0; i < e.size; ++i)
            v[i] = e.role == Role::running_var    ? float(0.5 + rng.uniform())
                   : e.role == Role::running_mean ? float(0.2 * rng.normal())
                                                  : 0.f;
    }
    cpu::Context ctx(2);
    ctx.training = training;
    // Inputs spread apart (a shuffled ramp, away from 0) so max-pool winners and ReLU signs do not
    // flip under the probe step.
    std::vector<float> x(in.size());
    for (std::size_t i = 0; i < x.size(); ++i) x[i] = float(-2.0 + 4.0 * (i + 0.5) / x.size());
    for (std::size_t i = x.size(); i > 1; --i) std::swap(x[i - 1], x[rng.below(i)]);
    const Shape out = b.layer.output_shape(in);
    std::vector<float> r(out.size());
    fill_normal(r.data(), r.size(), rng);

    auto f = [&] {
        ctx.arena.reset();
        const Tensor y = b.layer.forward(ctx, Tensor{x.data(), in});
        EXPECT_EQ(y.shape, out);
        double s = 0;
        for (std::size_t i = 0; i < y.size(); ++i) s += double(y.data[i]) * r[i];
        return s;
    };
    f();
    b.store.zero_grad();
    const Tensor dx_tensor = b.layer.backward(ctx, Tensor{r.data(), out});
    ASSERT_NE(dx_tensor.data, nullptr);
    const std::vector<float> dx(dx_tensor.data, dx_tensor.data + dx_tensor.size());
    const std::vector<float> grads = b.store.grads;

    // A probe that straddles a kink (a ReLU input or a max-pool winner changing under the step) says
    // nothing about backward. Where the kink lies inside the step, central differences at step h and
    // h/2 disagree. Where it lies at the point itself, both give the mean of the two sides' slopes
    // and backward takes one side's, as PyTorch's ReLU does: such a probe is one whose one-sided
    // differences, (f(x + h) - f(x)) / h and (f(x) - f(x - h)) / h, disagree, and whose analytic
    // gradient is one of them. Such probes are skipped and counted.
    int checked = 0, kinks = 0;
    auto at = [&](float& coordinate, double offset) {
        const float saved = coordinate;
        coordinate = saved + float(offset);
        const double value = f();
        coordinate = saved;
        return value;
    };
    auto expect_close = [&](double analytic, float& coordinate, const std::string& what) {
        const double h = tol.step, centre = at(coordinate, 0);
        const double plus = at(coordinate, h), minus = at(coordinate, -h), half_plus = at(coordinate, h / 2),
                     half_minus = at(coordinate, -h / 2);
        const double coarse = (plus - minus) / (2 * h), fine = (half_plus - half_minus) / h;
        const double right = (plus - centre) / h, left = (centre - minus) / h;
        const double allowed = tol.absolute + tol.relative * std::max(std::abs(analytic), std::abs(fine));
        const bool kink_inside = std::abs(coarse - fine) > allowed / 2;
        const bool kink_at_point = std::abs(analytic - fine) > allowed && std::abs(right - left) > allowed &&
                                   std::min(std::abs(analytic - right), std::abs(analytic - left)) <= allowed;
        if (kink_inside || kink_at_point) {
            ++kinks;
            return;
        }
        ++checked;
        EXPECT_NEAR(analytic, fine, allowed) << what;
    };
    for (int p = 0; p < probes; ++p) {
        const std::size_t i = rng.below(x.size());
        expect_close(dx[i], x[i], "dx[" + std::to_string(i) + "]");
    }
    for (auto& e : b.store.params) {
        for (int p = 0; p < std::min<int>(probes, int(e.size)); ++p) {
            const std::size_t i = e.offset + rng.below(e.size);
            expect_close(grads[i], b.store.values[i], e.name + "[" + std::to_string(i - e.offset) + "]");
        }
    }
    EXPECT_LE(kinks * 10, checked) << kinks << " probes hit kinks, " << checked << " were checked";
}

TEST(Gradients, Conv3x3) { check_gradients<Conv<5, 3>, 3>({2, 6, 5, 3}, true); }
TEST(Gradients, Conv3x3Stride2) { check_gradients<Conv<4, 3, 2>, 3>({2, 7, 6, 3}, true); }
TEST(Gradients, Conv1x1) { check_gradients<Conv<6, 1>, 4>({2, 4, 4, 4}, true); }
TEST(Gradients, Conv1x1Stride2) { check_gradients<Conv<3, 1, 2>, 4>({2, 5, 5, 4}, true); }
TEST(Gradients, Conv7x7Stride2) { check_gradients<Conv<4, 7, 2>, 3>({1, 9, 9, 3}, true); }
TEST(Gradients, BatchNormTraining) { check_gradients<BatchNorm<>, 5>({3, 4, 3, 5}, true); }
TEST(Gradients, BatchNormEval) { check_gradients<BatchNorm<>, 5>({3, 4, 3, 5}, false); }
TEST(Gradients, BatchNormThenReLUFused) { check_gradients<Seq<BatchNorm<>, ReLU>, 5>({3, 4, 3, 5}, true); }
TEST(Gradients, ReLU) { check_gradients<ReLU, 4>({2, 3, 3, 4}, true); }
TEST(Gradients, MaxPool) { check_gradients<MaxPool<3, 2>, 3>({2, 7, 7, 3}, true); }
TEST(Gradients, GlobalAvgPool) { check_gradients<GlobalAvgPool, 6>({3, 4, 5, 6}, true); }
TEST(Gradients, Linear) { check_gradients<Linear<7>, 6>({4, 1, 1, 6}, true); }
TEST(Gradients, ResidualIdentity) {
    check_gradients<Residual<Seq<Conv<4, 3>, BatchNorm<>>, Projection<4, 1>>, 4>({2, 5, 5, 4}, true);
}
TEST(Gradients, ResidualProjection) {
    check_gradients<Residual<Seq<Conv<6, 3, 2>, BatchNorm<>>, Projection<6, 2>>, 4>({2, 6, 6, 4}, true);
}
// Blocks with ReLUs after BatchNorm: BN puts many ReLU inputs near 0, so the step is smaller to
// keep them from changing sign under the probe.
constexpr Tolerance through_relus{1e-3, 2e-2, 3e-3};
TEST(Gradients, BasicBlockInSeq) { check_gradients<models::BasicBlock<4, 1>, 4>({2, 4, 4, 4}, true, through_relus); }
// Three BatchNorms in training mode over as few as 18 rows each make f's fp32 rounding (about 1e-6
// of f ~ 10) a visible part of a difference quotient at step 1e-3 (2e-6 / 5e-4 = 4e-3): the step and
// the absolute tolerance are twice through_relus', so that codegen (FMA or not, -O1 or -O3) does not
// decide the outcome.
TEST(Gradients, BottleneckDownsampling) {
    check_gradients<models::Bottleneck<8, 2>, 4>({2, 6, 6, 4}, true, {2e-3, 2e-2, 6e-3});
}
TEST(Gradients, RepeatedBlocks) {
    check_gradients<Repeat<2, models::BasicBlock<3, 1>>, 3>({2, 4, 4, 3}, false, through_relus);
}
// The whole network in eval mode: training-mode BatchNorm over its 2x2 last stage bends too sharply
// for finite differences; the blocks above check training mode.
TEST(Gradients, WholeSmallResNet) {
    check_gradients<models::CifarResNet<1>, 3>({2, 8, 8, 3}, false, {1e-3, 2e-2, 3e-3, false}, 12);
}

// Softmax cross-entropy with label smoothing, against finite differences of its own loss (in double).
TEST(Gradients, SoftmaxCrossEntropyWithLabelSmoothing) {
    Rng rng(3);
    const int n = 4, k = 7;
    std::vector<float> z(n * k), dz(n * k);
    fill_normal(z.data(), z.size(), rng, 2.0);
    const std::vector<std::int32_t> labels = {0, 3, 6, 2};
    const Tensor logits{z.data(), {n, 1, 1, k}};
    cpu::softmax_cross_entropy(logits, labels.data(), 0.1f, dz.data());
    for (std::size_t i = 0; i < z.size(); ++i) {
        const float saved = z[i];
        z[i] = saved + 1e-3f;
        const double plus = cpu::softmax_cross_entropy(logits, labels.data(), 0.1f, nullptr).loss;
        z[i] = saved - 1e-3f;
        const double minus = cpu::softmax_cross_entropy(logits, labels.data(), 0.1f, nullptr).loss;
        z[i] = saved;
        EXPECT_NEAR(dz[i], (plus - minus) / 2e-3, 1e-4) << i;
    }
}

// The CPU's convolutions run on oneDNN or on im2col + GEMM, by shape and direction (cpu/conv.hpp);
// the finite differences above check small shapes. Here every direction of oneDNN's kernels against
// the GEMM formulation on ResNet's shapes (3x3 and 1x1, strides 1 and 2, the 7x7 stem, channels from
// 1 to 256), within 1e-5 of each result's largest value: the two only sum in another order.
TEST(Conv, OneDnnAgreesWithTheGemmFormulation) {
    struct Case {
        int n, size, in, out, kernel, stride;
    };
    for (const Case c : {Case{4, 28, 1, 16, 3, 1}, Case{4, 28, 16, 16, 3, 1}, Case{4, 28, 16, 32, 3, 2},
                         Case{2, 14, 64, 64, 3, 1}, Case{2, 14, 64, 256, 1, 1}, Case{2, 14, 256, 64, 1, 1},
                         Case{2, 14, 128, 256, 1, 2}, Case{1, 32, 3, 64, 7, 2}}) {
        const ConvGeometry g{c.in, c.out, c.kernel, c.stride, c.kernel / 2};
        const Shape xs{c.n, c.size, c.size, c.in};
        const Shape ys = g.output_shape(xs);
        Rng rng(11);
        std::vector<float> x(xs.size()), w(std::size_t(c.out) * g.patch()), dy(ys.size());
        fill_normal(x.data(), x.size(), rng);
        fill_normal(w.data(), w.size(), rng, 0.1);
        fill_normal(dy.data(), dy.size(), rng);
        std::vector<float> y[2], dx[2], dw[2];
        for (int path = 0; path < 2; ++path) {
            cpu::Context ctx(2);
            y[path].assign(ys.size(), 0.f);
            dx[path].assign(xs.size(), 0.f);
            dw[path].assign(w.size(), 0.5f);  // the filter gradient accumulates onto what is there
            const Tensor X{x.data(), xs}, Y{y[path].data(), ys}, DY{dy.data(), ys}, DX{dx[path].data(), xs};
            if (path == 0) {
                cpu::OneDnnConv& conv = ctx.onednn.at(g, xs);
                conv.forward(ctx.onednn.stream(), x.data(), w.data(), Y.data);
                conv.backward_data(ctx.onednn.stream(), dy.data(), w.data(), DX.data);
                conv.backward_weights(ctx.onednn.stream(), x.data(), dy.data(), dw[path].data());
            } else {
                cpu::gemm_conv_forward(ctx, X, w.data(), g, Y);
                cpu::gemm_conv_backward(ctx, X, w.data(), g, DY, dw[path].data(), DX);
            }
        }
        auto expect_close = [&](const std::vector<float>& ours, const std::vector<float>& gemm, const char* what) {
            EXPECT_LE(distance(ours, gemm), 1e-5) << what << " of " << c.in << "->" << c.out << " k" << c.kernel << " s"
                                                  << c.stride << " at " << c.size << "x" << c.size;
        };
        expect_close(y[0], y[1], "forward");
        expect_close(dx[0], dx[1], "data gradient");
        expect_close(dw[0], dw[1], "filter gradient");
    }
}

// A BatchNorm followed by a ReLU binds as one layer whose kernels do both in the same passes; an
// Identity between them keeps them apart. Both must give the same output, input gradient, parameter
// gradients and running statistics, to the bit, in training and in evaluation.
static_assert(
    std::is_same_v<decltype(Seq<BatchNorm<>, ReLU>::bind<4, cpu::Backend>({}).get<1>()), FusedReLULayer<cpu::Backend>&>,
    "Seq<BatchNorm, ReLU> binds the ReLU into the BatchNorm");
TEST(Fusion, BatchNormReLUEqualsTheTwoLayers) {
    for (const bool training : {true, false}) {
        Bound<Seq<BatchNorm<>, ReLU>, 6> fused;
        Bound<Seq<BatchNorm<>, Identity, ReLU>, 6> apart;
        Rng rng(9);
        fused.layer.init(rng, {});
        apart.layer.init(rng, {});
        for (auto* store : {&fused.store, &apart.store}) {
            Rng same(4);
            fill_normal(store->values.data(), store->values.size(), same, 0.8);
            for (std::size_t i = 0; i < store->buffers.size(); ++i) store->buffers[i] = float(0.5 + 0.1 * (i % 7));
        }
        const Shape in{4, 5, 3, 6};
        std::vector<float> x(in.size()), dy(in.size());
        fill_normal(x.data(), x.size(), rng);
        fill_normal(dy.data(), dy.size(), rng);
        cpu::Context a(2), b(2);
        a.training = b.training = training;
        const Tensor ya = fused.layer.forward(a, Tensor{x.data(), in}),
                     yb = apart.layer.forward(b, Tensor{x.data(), in});
        const Tensor dxa = fused.layer.backward(a, Tensor{dy.data(), in}),
                     dxb = apart.layer.backward(b, Tensor{dy.data(), in});
        auto same = [](const float* p, const float* q, std::size_t n) {
            return std::memcmp(p, q, n * sizeof(float)) == 0;
        };
        EXPECT_TRUE(same(ya.data, yb.data, ya.size())) << "forward, training " << training;
        EXPECT_TRUE(same(dxa.data, dxb.data, dxa.size())) << "input gradient, training " << training;
        EXPECT_TRUE(same(fused.store.grads.data(), apart.store.grads.data(), fused.store.grads.size()))
            << "gamma and beta gradients, training " << training;
        EXPECT_TRUE(same(fused.store.buffers.data(), apart.store.buffers.data(), fused.store.buffers.size()))
            << "running statistics, training " << training;
    }
}

// BatchNorm's row loops take rows of 1 to 32 channels 64 values at a time, with the per-channel
// vectors tiled (batchnorm.hpp): the same products and sums, so every value must equal the one the
// row-by-row loop gives, block and leftover rows alike, in float and in bf16; and the sums, taken
// per lane and folded, must be the channels' sums.
template <class T>
void expect_tiled_rows_match_row_by_row() {
    using cpu::detail::gradient_rows, cpu::detail::gradient_sums, cpu::detail::scale_shift_rows,
        cpu::detail::shifted_sums, cpu::narrow, cpu::widen;
    for (const std::size_t c : {1, 4, 16, 32}) {
        const std::size_t rows = 64 / c * 5 + 3;  // five blocks and three rows left over
        Rng rng{std::uint64_t(c)};
        std::vector<float> xf(rows * c), gf(rows * c), v[6];
        fill_normal(xf.data(), xf.size(), rng);
        fill_normal(gf.data(), gf.size(), rng);
        for (auto& p : v) {
            p.resize(c);
            fill_normal(p.data(), c, rng, 0.5);
        }
        for (float& s : v[3]) s += 1.5f;  // inv_std: positive
        std::vector<T> x(rows * c), g(rows * c);
        for (std::size_t i = 0; i < x.size(); ++i) x[i] = narrow<T>(xf[i]), g[i] = narrow<T>(gf[i]);
        const float *scale = v[0].data(), *shift = v[1].data(), *mean = v[2].data(), *inv_std = v[3].data(),
                    *mean_dy = v[4].data(), *mean_dy_xhat = v[5].data();
        for (const bool relu : {false, true}) {
            std::vector<T> y(rows * c), dx(rows * c);
            scale_shift_rows(x.data(), scale, shift, relu, c, 0, rows, y.data());
            gradient_rows(x.data(), g.data(), mean, inv_std, scale, relu ? shift : nullptr, mean_dy, mean_dy_xhat, c, 0,
                          rows, dx.data());
            for (std::size_t r = 0; r < rows; ++r)
                for (std::size_t j = 0; j < c; ++j) {
                    const std::size_t i = r * c + j;
                    const float pre = widen(x[i]) * scale[j] + shift[j];
                    const float want_y = widen(narrow<T>(relu ? std::max(pre, 0.f) : pre));
                    const float gi = !relu || pre > 0.f ? widen(g[i]) : 0.f;
                    const float want_dx = widen(narrow<T>(
                        scale[j] * (gi - mean_dy[j] - (widen(x[i]) - mean[j]) * inv_std[j] * mean_dy_xhat[j])));
                    ASSERT_EQ(widen(y[i]), want_y) << c << " channels, row " << r << ", relu " << relu;
                    ASSERT_EQ(widen(dx[i]), want_dx) << c << " channels, row " << r << ", relu " << relu;
                }
            // The sums go per lane, then fold into their channels: another order than row by row, so
            // they are checked against sums in double, within float rounding of the terms' size.
            std::vector<float> s(c, 0.f), s2(c, 0.f), d(c, 0.f), d2(c, 0.f);
            gradient_sums(x.data(), g.data(), mean, inv_std, scale, relu ? shift : nullptr, c, 0, rows, s.data(),
                          s2.data());
            shifted_sums(x.data(), mean, c, 0, rows, d.data(), d2.data());
            for (std::size_t j = 0; j < c; ++j) {
                double want_s = 0, want_s2 = 0, want_d = 0, want_d2 = 0, size = 0;
                for (std::size_t r = 0; r < rows; ++r) {
                    const std::size_t i = r * c + j;
                    const double xi = widen(x[i]), pre = widen(x[i]) * scale[j] + shift[j];
                    const double gi = !relu || pre > 0 ? widen(g[i]) : 0.0, xhat = (xi - mean[j]) * inv_std[j];
                    want_s += gi, want_s2 += gi * xhat;
                    want_d += xi - mean[j], want_d2 += (xi - mean[j]) * (xi - mean[j]);
                    size += std::abs(gi) * (1 + std::abs(xhat)) +
                            (1 + std::abs(xi - mean[j])) * (1 + std::abs(xi - mean[j]));
                }
                const double tolerance = 1e-6 * size;
                EXPECT_NEAR(s[j], want_s, tolerance) << c << " channels, channel " << j << ", relu " << relu;
                EXPECT_NEAR(s2[j], want_s2, tolerance) << c << " channels, channel " << j << ", relu " << relu;
                EXPECT_NEAR(d[j], want_d, tolerance) << c << " channels, channel " << j;
                EXPECT_NEAR(d2[j], want_d2, tolerance) << c << " channels, channel " << j;
            }
        }
    }
}
TEST(Fusion, BatchNormTiledRowsEqualRowByRow) {
    expect_tiled_rows_match_row_by_row<float>();
    expect_tiled_rows_match_row_by_row<cpu::bf16>();
}

// A layer's result may not depend on where its parameters sit in memory: a run would then follow the
// heap's layout (a longer run name moved it) instead of its recipe. One forward and backward of a
// whole small ResNet with the parameter, gradient and statistics buffers placed at each of the
// eight float offsets of a 32-byte vector; gradients and running statistics must agree to the bit.
TEST(Determinism, ResultsIgnoreWhereTheParameterBuffersSit) {
    using Net = models::CifarResNet<1>;
    Bound<Net, 3> b;
    Rng rng(5);
    b.layer.init(rng, {});
    const Shape in{16, 8, 8, 3};  // Eigen's peeled bias sum showed from 16 rows on
    std::vector<float> x(in.size()), r(b.layer.output_shape(in).size());
    fill_normal(x.data(), x.size(), rng);
    fill_normal(r.data(), r.size(), rng);
    const std::size_t values = b.store.values.size(), buffers = b.store.buffers.size();
    std::vector<float> reference_grads, reference_buffers;
    for (std::size_t offset = 0; offset < 8; ++offset) {
        // One 256-byte-aligned block holding the three buffers, each starting `offset` floats in.
        const std::size_t stride = (std::max(values, buffers) + 8 + 63) / 64 * 64;
        auto block = MemoryBlock<HostMemory>::make(3 * stride * sizeof(float));
        float* base = reinterpret_cast<float*>(block.data.get());
        const models::ParamStore::Memory memory{base + offset, base + stride + offset, base + 2 * stride + offset};
        std::copy(b.store.values.begin(), b.store.values.end(), memory.values);
        std::fill(memory.grads, memory.grads + values, 0.f);
        std::copy(b.store.buffers.begin(), b.store.buffers.end(), memory.buffers);
        b.store.point(b.layer, memory);
        cpu::Context ctx(2);
        b.layer.forward(ctx, Tensor{x.data(), in});
        b.layer.backward(ctx, Tensor{r.data(), b.layer.output_shape(in)});
        const std::vector<float> grads(memory.grads, memory.grads + values);
        const std::vector<float> statistics(memory.buffers, memory.buffers + buffers);
        if (offset == 0) {
            reference_grads = grads, reference_buffers = statistics;
            continue;
        }
        EXPECT_EQ(0, std::memcmp(grads.data(), reference_grads.data(), values * sizeof(float)))
            << "gradients differ with the buffers " << offset << " floats further on";
        EXPECT_EQ(0, std::memcmp(statistics.data(), reference_buffers.data(), buffers * sizeof(float)))
            << "running statistics differ with the buffers " << offset << " floats further on";
    }
    b.store.point(b.layer, b.store.host());
}

}  // namespace
}  // namespace tessera::test

namespace tessera::test {
namespace {

// A step's gradients are a function of the weights and the batch alone: nothing the step before
// left behind may enter them. The gradients of one batch after a step on another (an SGD update in
// between) must equal, to the bit, those of the same batch and weights in a fresh network.
TEST(Determinism, AStepsGradientsDoNotDependOnTheStepBefore) {
    const Shape in{16, 16, 16, 3};
    auto net = runner::make_cpu_network("resnet20", 10, 3), fresh = runner::make_cpu_network("resnet20", 10, 3);
    net->init(3, {});
    Rng rng(5);
    std::vector<float> before(in.size()), x(in.size());
    for (auto* v : {&before, &x}) fill_normal(v->data(), v->size(), rng);
    std::vector<std::int32_t> labels(16);
    for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = std::int32_t(i % 10);
    auto gradients = [&](models::Network<cpu::Backend>& n, cpu::Context& ctx, std::vector<float>& input) {
        ctx.arena.reset();
        ctx.grads.reset();
        ctx.training = true;
        n.zero_grad(ctx);
        const Tensor logits = n.forward(ctx, Tensor{input.data(), in});
        const Tensor dlogits = ctx.arena.tensor(logits.shape);
        cpu::softmax_cross_entropy(logits, labels.data(), 0.f, dlogits.data);
        n.backward(ctx, dlogits);
        return n.params().grads;
    };
    cpu::Context used(2), clean(2);
    const std::vector<float> g = gradients(*net, used, before);
    for (std::size_t i = 0; i < g.size(); ++i) net->params().values[i] -= 0.05f * g[i];
    fresh->params().values = net->params().values;
    fresh->params().buffers = net->params().buffers;
    const std::vector<float> again = gradients(*net, used, x), reference = gradients(*fresh, clean, x);
    std::size_t first = 0;
    while (first < again.size() && again[first] == reference[first]) ++first;
    std::string where = "none";
    for (auto& e : net->params().params)
        if (first >= e.offset && first < e.offset + e.size) where = e.name;
    EXPECT_EQ(first, again.size()) << "the gradients differ after a step on another batch, first in " << where;
}

}  // namespace
}  // namespace tessera::test
