// The trainer's features, each against its definition: gradient accumulation sums the batches'
// gradients, clipping caps their global norm, the moving average follows its recurrence, mixup
// and cutmix mix what they say; and the early stop at a target accuracy.
#include <cmath>
#include <fstream>
#include <numeric>
#include <sstream>

#include "helpers.hpp"
#include "tessera/recipe/run_spec.hpp"
#include "runner.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/loop.hpp"

namespace tessera::test {
namespace {

using train::Trainer;

/// Random 8x8 RGB images of 4 classes, the same for the same seed and epoch.
class RandomImages final : public plugin::DataSource {
public:
    plugin::DatasetInfo info() const override { return {8, 8, 3, 4, 64, 16, {0.5, 0.5, 0.5}, {0.25, 0.25, 0.25}, {}}; }
    std::int64_t num_batches(plugin::Split split, const plugin::EpochPlan& p) const override {
        return (split == plugin::Split::train ? 64 : 16) / p.batch_size;
    }
    void start_epoch(plugin::Split split, const plugin::EpochPlan& p) override {
        plan_ = p;
        left_ = num_batches(split, p) - p.first_batch;
        rng_ = Rng::derive(7, std::uint64_t(p.epoch), split == plugin::Split::train);
    }
    bool next(plugin::Batch& b) override {
        if (left_-- <= 0) return false;
        b.count = plan_.batch_size, b.height = 8, b.width = 8, b.channels = 3;
        b.pixels.resize(std::size_t(b.count) * 8 * 8 * 3);
        b.labels.resize(std::size_t(b.count));
        for (auto& p : b.pixels) p = std::uint8_t(rng_.below(256));
        for (auto& l : b.labels) l = std::int32_t(rng_.below(4));
        return true;
    }

private:
    plugin::EpochPlan plan_;
    std::int64_t left_ = 0;
    Rng rng_;
};

/// Records the gradients it is given, then takes a plain step w -= lr * g, recording the weights
/// and statistics after it.
class RecordingSgd final : public plugin::Optimizer {
public:
    explicit RecordingSgd(const models::ParamStore& store) : store_(store) {}
    void step(const plugin::Parameters& p, const plugin::StepRates& rates) override {
        grads.emplace_back(p.grads, p.grads + p.count);
        for (std::size_t i = 0; i < p.count; ++i) p.values[i] -= float(rates.lr) * p.grads[i];
        std::vector<float> state(p.values, p.values + p.count);
        state.insert(state.end(), store_.buffers.begin(), store_.buffers.end());
        after.push_back(std::move(state));
    }
    std::vector<std::vector<float>> grads, after;

private:
    const models::ParamStore& store_;
};

class Constant final : public plugin::Scheduler {
public:
    explicit Constant(double lr) : lr_(lr) {}
    double lr(const plugin::Clock&) const override { return lr_; }

private:
    double lr_;
};

struct Rig {
    cpu::Context ctx{2};
    std::unique_ptr<models::Network<cpu::Backend>> net = runner::make_cpu_network("resnet20", 4, 3);
    RandomImages data;
    RecordingSgd optimizer{net->params()};
    Constant scheduler;

    explicit Rig(double lr = 0) : scheduler(lr) { net->init(3, {}); }

    Trainer<cpu::Backend> trainer(train::TrainConfig config) {
        return Trainer<cpu::Backend>(ctx, *net, data, optimizer, scheduler, {}, std::move(config));
    }
};

double norm(const std::vector<float>& v) {
    double s = 0;
    for (float x : v) s += double(x) * x;
    return std::sqrt(s);
}

TEST(Accumulation, TwoBatchesGiveTheMeanOfTheirGradients) {
    train::TrainConfig one_by_one;
    one_by_one.batch_size = 8;
    Rig separate;  // lr 0: the weights stay, so both batches see the same network
    auto a = separate.trainer(one_by_one);
    separate.data.start_epoch(plugin::Split::train, {1, 0, 8});
    std::int64_t batch = 0;
    a.step().run(separate.data, 1, batch, {0.0, {}});
    a.step().run(separate.data, 1, batch, {0.0, {}});

    train::TrainConfig together = one_by_one;
    together.accumulate = 2;
    Rig summed;
    auto b = summed.trainer(together);
    summed.data.start_epoch(plugin::Split::train, {1, 0, 8});
    batch = 0;
    b.step().run(summed.data, 1, batch, {0.0, {}});
    EXPECT_EQ(batch, 2);

    ASSERT_EQ(summed.optimizer.grads.size(), 1u);
    const auto& g = summed.optimizer.grads[0];
    const auto &g1 = separate.optimizer.grads[0], &g2 = separate.optimizer.grads[1];
    double worst = 0;
    for (std::size_t i = 0; i < g.size(); ++i)
        worst = std::max(worst, std::abs(double(g[i]) - 0.5 * (double(g1[i]) + g2[i])));
    EXPECT_LT(worst, 1e-5 * norm(g)) << "the accumulated gradient is not the mean of the two batches' gradients";
    EXPECT_GT(norm(g), 0);
}

TEST(Clipping, CapsTheGlobalNormAndKeepsTheDirection) {
    train::TrainConfig config;
    config.batch_size = 8;
    Rig free;
    auto a = free.trainer(config);
    free.data.start_epoch(plugin::Split::train, {1, 0, 8});
    std::int64_t batch = 0;
    a.step().run(free.data, 1, batch, {0.0, {}});
    const auto& g = free.optimizer.grads[0];
    const double unclipped = norm(g);

    config.grad_clip = unclipped / 4;
    Rig capped;
    auto b = capped.trainer(config);
    capped.data.start_epoch(plugin::Split::train, {1, 0, 8});
    batch = 0;
    b.step().run(capped.data, 1, batch, {0.0, {}});
    const auto& c = capped.optimizer.grads[0];
    EXPECT_NEAR(norm(c), config.grad_clip, 1e-4 * config.grad_clip);
    for (std::size_t i = 0; i < g.size(); i += 97)
        EXPECT_NEAR(c[i], g[i] * config.grad_clip / unclipped, 1e-6 + 1e-4 * std::abs(g[i]));

    config.grad_clip = unclipped * 2;  // above the norm: nothing changes
    Rig loose;
    auto l = loose.trainer(config);
    loose.data.start_epoch(plugin::Split::train, {1, 0, 8});
    batch = 0;
    l.step().run(loose.data, 1, batch, {0.0, {}});
    EXPECT_TRUE(loose.optimizer.grads[0] == g);
}

TEST(MovingAverage, FollowsItsRecurrenceOverWeightsAndStatistics) {
    TempDir dir;
    train::TrainConfig config;
    config.batch_size = 16;  // 4 steps
    config.ema_decay = 0.75;
    config.run_dir = dir.path();
    Rig s(0.05);
    std::vector<float> expected = s.net->params().values;
    expected.insert(expected.end(), s.net->params().buffers.begin(), s.net->params().buffers.end());
    auto t = s.trainer(config);
    const auto stats = t.fit();
    ASSERT_EQ(s.optimizer.after.size(), 4u);
    for (auto& state : s.optimizer.after)
        for (std::size_t i = 0; i < expected.size(); ++i) expected[i] = 0.75f * expected[i] + 0.25f * state[i];

    auto average = runner::make_cpu_network("resnet20", 4, 3);
    checkpoint::load(average->params(), dir / "last.ema.safetensors");
    std::vector<float> saved = average->params().values;
    saved.insert(saved.end(), average->params().buffers.begin(), average->params().buffers.end());
    ASSERT_EQ(saved.size(), expected.size());
    for (auto& e : s.net->params().buffer_entries)  // a count, not averaged
        if (e.role == layers::Role::num_batches_tracked) expected[s.net->params().values.size() + e.offset] = 4;
    for (std::size_t i = 0; i < saved.size(); ++i)
        ASSERT_NEAR(saved[i], expected[i], 1e-6 + 1e-5 * std::abs(expected[i])) << i;
    EXPECT_TRUE(stats.has_ema);
    EXPECT_NE(stats.ema_val_loss, stats.val_loss);  // evaluated with the average, not the weights
    // The network trains on with its own weights, not the average.
    EXPECT_TRUE(std::equal(s.optimizer.after.back().begin(),
                           s.optimizer.after.back().begin() + std::ptrdiff_t(s.net->params().values.size()),
                           s.net->params().values.begin()));
}

plugin::Batch flat_images(int n, int side) {  // image i: every byte 10 * i; label i
    plugin::Batch b{n, side, side, 3, {}, {}};
    for (int i = 0; i < n; ++i) {
        b.pixels.insert(b.pixels.end(), std::size_t(side) * side * 3, std::uint8_t(10 * i));
        b.labels.push_back(i);
    }
    return b;
}

TEST(Mixing, MixupBlendsEachImageWithItsMirrorInTheBatch) {
    plugin::Batch b = flat_images(5, 4);
    Rng rng(11);
    const train::Mixing m = train::mix_batch(b, {0.4, 0, 1, 0.5}, rng);
    ASSERT_TRUE(m.active);
    EXPECT_EQ(m.partner, (std::vector<std::int32_t>{4, 3, 2, 1, 0}));
    for (int i = 0; i < 5; ++i) {
        const double want = m.lam * 10 * i + (1 - m.lam) * 10 * (4 - i);
        EXPECT_NEAR(b.pixels[std::size_t(i) * 48 + 7], want, 0.5) << "image " << i;
    }
}

TEST(Mixing, CutmixPastesABoxAndWeighsLabelsByItsArea) {
    for (std::uint64_t seed = 0; seed < 20; ++seed) {
        plugin::Batch b = flat_images(4, 32);
        Rng rng(seed);
        const train::Mixing m = train::mix_batch(b, {0, 1.0, 1, 0.5}, rng);
        ASSERT_TRUE(m.active);
        for (int i = 0; i < 4; ++i) {
            std::size_t foreign = 0;
            for (std::size_t k = 0; k < 32 * 32 * 3; ++k)
                foreign += b.pixels[std::size_t(i) * 32 * 32 * 3 + k] == 10 * (3 - i);
            EXPECT_NEAR(double(foreign) / (32 * 32 * 3), 1 - m.lam, 1e-9) << "seed " << seed << ", image " << i;
        }
    }
}

TEST(Mixing, BetaDrawsHaveTheirMoments) {
    Rng rng(5);
    for (double a : {0.2, 1.0, 2.5}) {
        double sum = 0, squares = 0;
        const int n = 40000;
        for (int i = 0; i < n; ++i) {
            const double x = train::beta_draw(rng, a, a);
            ASSERT_TRUE(x >= 0 && x <= 1);
            sum += x, squares += x * x;
        }
        const double mean = sum / n, variance = squares / n - mean * mean;
        EXPECT_NEAR(mean, 0.5, 0.01) << a;
        EXPECT_NEAR(variance, 1 / (4 * (2 * a + 1)), 0.01) << a;  // Var Beta(a, a)
    }
    plugin::Batch b = flat_images(4, 4);
    const auto before = b.pixels;
    EXPECT_FALSE(train::mix_batch(b, {0.2, 1.0, 0.0, 0.5}, rng).active);  // mix_prob 0
    EXPECT_TRUE(b.pixels == before);
}

// Below alpha = 0.01 both Gamma draws of X / (X + Y) underflow to 0 in about a fifth of the draws
// (at 0.001), and the ratio is NaN; the draws must stay finite, in [0, 1], and keep Beta(a, a)'s
// mean 1/2 and variance 1 / (4 (2a + 1)), close to 1/4: lam is almost always near 0 or 1.
TEST(Mixing, SmallAlphaGivesFiniteMixingWeights) {
    Rng rng(11);
    for (double a : {0.001, 1e-6}) {
        double sum = 0, squares = 0;
        const int n = 20000;
        for (int i = 0; i < n; ++i) {
            const double x = train::beta_draw(rng, a, a);
            ASSERT_TRUE(x >= 0 && x <= 1) << "alpha " << a << ", draw " << i << ": " << x;
            sum += x, squares += x * x;
        }
        const double mean = sum / n, variance = squares / n - mean * mean;
        EXPECT_NEAR(mean, 0.5, 0.02) << a;
        EXPECT_NEAR(variance, 1 / (4 * (2 * a + 1)), 0.01) << a;
    }
    // Through the batch: cutmix's box from a NaN lam would be an int of NaN.
    for (int seed = 0; seed < 200; ++seed) {
        Rng draw{std::uint64_t(seed)};
        plugin::Batch b = flat_images(4, 4);
        const train::Mixing m = train::mix_batch(b, {0.001, 0.001, 1.0, 0.5}, draw);
        ASSERT_TRUE(m.active);
        ASSERT_TRUE(m.lam >= 0 && m.lam <= 1) << "seed " << seed << ": lam " << m.lam;
    }
}

TEST(EarlyStop, StopsOnceTheTargetAccuracyIsReached) {
    TempDir dir;
    std::ofstream(dir / "r.toml")
        << "[run]\nout_dir = 'runs'\nname = 't'\n[model]\narch = 'resnet20'\n"
        << "[data]\nplugin = 'synthetic'\nimage_size = 8\ntrain_size = 512\nval_size = 128\nbatch_size = 32\n"
        << "[scheduler]\nplugin = 'onecycle'\nmax_lr = 0.1\n[train]\nepochs = 8\ntarget_top1 = 0.45\n"
        << "[[logger]]\nplugin = 'csv'\n";
    const RunResult r = run_runner("r.toml --threads 2", dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("reached the target top-1 0.4500 at epoch"), std::string::npos) << r.output;
    std::ifstream csv(dir / "runs" / "t" / "metrics.csv");
    std::vector<std::string> rows;
    for (std::string line; std::getline(csv, line);) rows.push_back(line);
    ASSERT_GE(rows.size(), 2u);
    // The header and the epochs that ran: fewer than 8. (This run reaches 0.80 at epoch 4; with 5
    // epochs its OneCycle reached 0.45 only in the last, which left the stop nothing to cut.)
    EXPECT_LT(rows.size(), 9u) << "every epoch ran";
    std::stringstream last(rows.back());
    std::vector<std::string> fields;
    for (std::string f; std::getline(last, f, ',');) fields.push_back(f);
    ASSERT_GE(fields.size(), 6u);
    EXPECT_GE(std::stod(fields[5]), 0.45) << rows.back();  // val_top1
}

TEST(NonFinite, AStepWithNanGradientsIsSkippedAndTooManyStopTheRun) {
    train::TrainConfig config;
    config.batch_size = 8;
    config.max_bad_steps = 2;
    // NaN in one gradient value of step 1 (counting from 0), and of steps 3 and 4.
    config.on_gradients = [](std::int64_t step, float* grads, std::size_t) {
        if (step == 1 || step == 3 || step == 4) grads[17] = NAN;
    };
    Rig s(0.05);
    auto t = s.trainer(config);
    s.data.start_epoch(plugin::Split::train, {1, 0, 8});
    std::int64_t batch = 0;
    t.step().run(s.data, 1, batch, {0.05, {}});
    const auto weights = s.net->params().values;
    const auto statistics = s.net->params().buffers;
    t.step().run(s.data, 1, batch, {0.05, {}});  // skipped: nothing changes, BatchNorm's statistics included
    EXPECT_EQ(s.optimizer.grads.size(), 1u) << "the optimizer saw the bad step";
    EXPECT_TRUE(s.net->params().values == weights);
    EXPECT_TRUE(s.net->params().buffers == statistics);
    t.step().run(s.data, 1, batch, {0.05, {}});  // a good step again
    EXPECT_EQ(s.optimizer.grads.size(), 2u);
    t.step().run(s.data, 1, batch, {0.05, {}});  // skipped, then a second in a row: the run stops
    try {
        t.step().run(s.data, 1, batch, {0.05, {}});
        FAIL() << "two bad steps in a row did not stop the run";
    } catch (const Error& e) {
        EXPECT_TRUE(e.is_user_error());
        EXPECT_NE(std::string(e.what()).find("not finite for 2 steps in a row"), std::string::npos) << e.what();
    }
}

// Loss scaling multiplies the loss's gradient by a power of two and divides the weights'
// gradients by it: in fp32, barring overflow and denormals, both are exact, so the optimizer sees
// the same gradients bit for bit. (What scaling is for, fp16 on the GPU, is checked there.)
TEST(LossScale, AFixedPowerOfTwoChangesNoGradient) {
    std::vector<std::vector<float>> seen;
    for (double scale : {0.0, 1024.0}) {
        train::TrainConfig config;
        config.batch_size = 8;
        config.loss_scale = {scale, false};
        Rig s(0.05);
        auto t = s.trainer(config);
        s.data.start_epoch(plugin::Split::train, {1, 0, 8});
        std::int64_t batch = 0;
        for (int step = 0; step < 3; ++step) t.step().run(s.data, 1, batch, {0.05, {}});
        seen.push_back(s.optimizer.grads.back());
        EXPECT_EQ(t.loss_scale(), scale > 0 ? scale : 1.0);
    }
    ASSERT_EQ(seen[0].size(), seen[1].size());
    std::size_t differ = 0;
    for (std::size_t i = 0; i < seen[0].size(); ++i) differ += seen[0][i] != seen[1][i];
    EXPECT_EQ(differ, 0u) << "of " << seen[0].size() << " gradient values after three steps";
    EXPECT_GT(norm(seen[1]), 0);
}

// GradScaler's rule: an overflow skips the step and halves the scale; `window` good steps in a row
// double it. Overflows are routine, so they do not count as bad steps (max_bad_steps = 1 would stop
// the run at the first).
TEST(LossScale, DynamicScaleHalvesOnOverflowAndGrowsAfterAWindow) {
    train::TrainConfig config;
    config.batch_size = 8;
    config.max_bad_steps = 1;
    config.loss_scale = {65536, true, 2};
    config.on_gradients = [](std::int64_t step, float* grads, std::size_t) {
        if (step == 0 || step == 1) grads[5] = INFINITY;  // as fp16 overflowing in backward
    };
    Rig s(0.05);
    auto t = s.trainer(config);
    s.data.start_epoch(plugin::Split::train, {1, 0, 8});
    std::int64_t batch = 0;
    const auto weights = s.net->params().values;
    t.step().run(s.data, 1, batch, {0.05, {}});
    EXPECT_EQ(t.loss_scale(), 32768);
    t.step().run(s.data, 1, batch, {0.05, {}});
    EXPECT_EQ(t.loss_scale(), 16384);
    EXPECT_TRUE(s.net->params().values == weights) << "an overflowed step changed the weights";
    EXPECT_TRUE(s.optimizer.grads.empty());
    t.step().run(s.data, 1, batch, {0.05, {}});
    EXPECT_EQ(t.loss_scale(), 16384);
    t.step().run(s.data, 1, batch, {0.05, {}});
    EXPECT_EQ(t.loss_scale(), 32768) << "two good steps did not double the scale";
    EXPECT_EQ(s.optimizer.grads.size(), 2u);
    // Dynamic without a starting scale starts where GradScaler does, and scales.
    const train::LossScaler from_default({0, true});
    EXPECT_TRUE(from_default.active());
    EXPECT_EQ(from_default.scale(), train::LossScaler::dynamic_start);
}

// A loss that is not finite overflows at any scale: once the scale has fallen below 1, the skipped
// steps count as bad ones again, and max_bad_steps in a row stop the run.
TEST(LossScale, AGradientThatIsNeverFiniteStillStopsTheRun) {
    train::TrainConfig config;
    config.batch_size = 8;
    config.max_bad_steps = 2;
    config.loss_scale = {2, true, 100};
    config.on_gradients = [](std::int64_t, float* grads, std::size_t) { grads[5] = NAN; };
    Rig s(0.05);
    auto t = s.trainer(config);
    s.data.start_epoch(plugin::Split::train, {1, 0, 8});
    std::int64_t batch = 0;
    t.step().run(s.data, 1, batch, {0.05, {}});  // scale 2 -> 1: an overflow, routine
    t.step().run(s.data, 1, batch, {0.05, {}});  // 1 -> 0.5: a bad step
    EXPECT_EQ(t.loss_scale(), 0.5);
    try {
        t.step().run(s.data, 1, batch, {0.05, {}});  // the second bad step in a row
        FAIL() << "gradients never finite did not stop the run";
    } catch (const Error& e) {
        EXPECT_TRUE(e.is_user_error());
        EXPECT_NE(std::string(e.what()).find("not finite for 2 steps in a row"), std::string::npos) << e.what();
    }
}

// The dynamic scale and its count of good steps are saved with the training state.
TEST(LossScale, ResumesWhereTheScaleStood) {
    TempDir dir;
    train::TrainConfig config;
    config.batch_size = 8;
    config.run_dir = dir.path();
    config.loss_scale = {65536, true, 3};
    config.stop_after_steps = 3;
    config.on_gradients = [](std::int64_t step, float* grads, std::size_t) {
        if (step == 0) grads[5] = INFINITY;
    };
    Rig first(0.05);
    auto t = first.trainer(config);
    t.fit();
    ASSERT_TRUE(t.interrupted());
    EXPECT_EQ(t.loss_scale(), 32768);  // halved once, then two good steps of the three that double it

    config.stop_after_steps = 0;
    config.on_gradients = nullptr;
    Rig second(0.05);
    auto u = second.trainer(config);
    u.resume(dir / "last.safetensors");
    EXPECT_EQ(u.loss_scale(), 32768);
    second.data.start_epoch(plugin::Split::train, {1, 0, 8});
    std::int64_t batch = 0;
    u.step().run(second.data, 1, batch, {0.05, {}});
    EXPECT_EQ(u.loss_scale(), 65536) << "the good steps before the save were not counted";
}

TEST(LossScale, RecipeKeysAndTheirChecks) {
    TempDir dir;
    const plugin::Registry registry({plugin_dir()});
    auto recipe = [&](const std::string& model, const std::string& train) {
        std::ofstream(dir / "r.toml") << "[model]\narch = 'resnet20'\n"
                                      << model << "\n[data]\nplugin = 'synthetic'\n[train]\n"
                                      << train << "\n";
        recipe::Recipe r = recipe::load(dir / "r.toml", {});
        recipe::resolve(r, registry);
        return r;
    };
    EXPECT_FALSE(recipe::loss_scale_of(recipe("", "")).initial > 0) << "fp32 needs no scaling";
    const auto fp16 = recipe::loss_scale_of(recipe("precision = 'fp16'", ""));
    EXPECT_TRUE(fp16.dynamic);
    EXPECT_EQ(fp16.initial, 65536);
    EXPECT_EQ(fp16.window, 2000);
    const auto fixed =
        recipe::loss_scale_of(recipe("precision = 'fp16'", "loss_scale = 128.0\nloss_scale_window = 50"));
    EXPECT_FALSE(fixed.dynamic);
    EXPECT_EQ(fixed.initial, 128);
    for (const char* bad : {"loss_scale = -1.0", "loss_scale_window = 0"}) {
        try {
            recipe("", bad);
            ADD_FAILURE() << bad << " was accepted";
        } catch (const Error& e) {
            EXPECT_TRUE(e.is_user_error()) << e.what();
            EXPECT_NE(std::string(e.what()).find("r.toml:7:"), std::string::npos) << e.what();
            EXPECT_NE(std::string(e.what()).find("train.loss_scale"), std::string::npos) << e.what();
        }
    }
}

TEST(Checkpoints, KeepTheLastKEpochs) {
    TempDir dir;
    std::ofstream(dir / "r.toml")
        << "[run]\nout_dir = 'runs'\nname = 't'\n[model]\narch = 'resnet20'\n"
        << "[data]\nplugin = 'synthetic'\nimage_size = 8\ntrain_size = 64\nval_size = 32\nbatch_size = 32\n"
        << "[scheduler]\nplugin = 'constant'\nlr = 0.01\n[train]\nepochs = 4\n[checkpoint]\nkeep = 2\n";
    const RunResult r = run_runner("r.toml --threads 2", dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    for (int epoch = 1; epoch <= 4; ++epoch)
        EXPECT_EQ(fs::exists(dir / "runs" / "t" / ("epoch_" + std::to_string(epoch) + ".safetensors")), epoch >= 3)
            << epoch;
    const auto meta = checkpoint::read_metadata(dir / "runs" / "t" / "epoch_3.safetensors");
    EXPECT_EQ(meta.at("epoch"), "4");  // saved after epoch 3: the next to train is 4
}

}  // namespace
}  // namespace tessera::test
