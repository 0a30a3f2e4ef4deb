// The registry: it finds the build's plugins, refuses modules that are not tessera plugins of this
// ABI (naming the file and the versions), and the schedulers follow PyTorch's formulas.
#include <cmath>
#include <numbers>

#include "helpers.hpp"
#include "tessera/plugin/registry.hpp"

namespace tessera::test {
namespace {

using plugin::Registry;

TEST(Registry, FindsEveryBuiltInPlugin) {
    Registry registry({plugin_dir()});
    for (auto [kind, name] : {std::pair{"optimizer", "sgd"}, {"scheduler", "onecycle"}, {"scheduler", "cosine"},
                              {"scheduler", "multistep"}, {"scheduler", "constant"}, {"data", "idx"}, {"data", "synthetic"},
                              {"data", "imagefolder"}, {"data", "shards"},
                              {"logger", "console"}, {"logger", "csv"}})
        EXPECT_NE(registry.find(kind, name), nullptr) << kind << " " << name;
}

TEST(Registry, RefusesOtherAbiAndForeignModules) {
    const fs::path tests_dir = binary_dir();
    try {
        Registry::load(tests_dir / "bad_abi.so");
        FAIL() << "loaded a module of another ABI";
    } catch (const Error& e) {
        const std::string what = e.what();
        EXPECT_NE(what.find("bad_abi.so"), std::string::npos) << what;
        EXPECT_NE(what.find("ABI version " + std::to_string(plugin::abi_version + 41)), std::string::npos) << what;
        EXPECT_NE(what.find("tessera's " + std::to_string(plugin::abi_version)), std::string::npos) << what;
    }
    try {
        Registry::load(tests_dir / "not_a_plugin.so");
        FAIL() << "loaded a foreign module";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("not_a_plugin.so: not a tessera plugin"), std::string::npos) << e.what();
    }
    try {
        Registry::load(tests_dir / "no_such_module.so");
        FAIL() << "loaded a missing module";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("no_such_module.so: cannot load"), std::string::npos) << e.what();
    }
    // Scanning a folder with such modules lists them as problems and keeps the good ones.
    Registry registry({tests_dir, plugin_dir()});
    EXPECT_GE(registry.problems().size(), 2u);
    EXPECT_NE(registry.find("optimizer", "sgd"), nullptr);
    EXPECT_EQ(registry.find("scheduler", "bad_abi"), nullptr);
}

std::shared_ptr<plugin::Scheduler> scheduler(const Registry& registry, const std::string& name,
                                             std::map<std::string, plugin::Value> options) {
    const auto* entry = registry.find("scheduler", name);
    for (auto& o : entry->info.options) options.try_emplace(o.name, o.default_value);
    return registry.create<plugin::Scheduler>(*entry, plugin::Options(options));
}

TEST(Schedulers, OneCycleMatchesPyTorch) {
    Registry registry({plugin_dir()});
    auto s = scheduler(registry, "onecycle", {{"max_lr", 0.175}});
    const plugin::Clock start{0, 1000, 100};
    // torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.175, total_steps=1000): initial 0.007, peak at
    // step 299 (pct_start 0.3), final 0.007 / 1e4 at step 999.
    EXPECT_NEAR(s->lr(start), 0.175 / 25, 1e-12);
    EXPECT_NEAR(s->lr({299, 1000, 100}), 0.175, 1e-12);
    EXPECT_NEAR(s->lr({999, 1000, 100}), 0.175 / 25 / 1e4, 1e-12);
    const double pct = 150.0 / 299.0;  // halfway up: cosine between initial and max
    EXPECT_NEAR(s->lr({150, 1000, 100}), 0.175 + (0.007 - 0.175) / 2 * (std::cos(std::numbers::pi * pct) + 1), 1e-12);
    // Momentum cycles the other way, 0.95 -> 0.85 -> 0.95 (cycle_momentum, PyTorch's default).
    EXPECT_NEAR(*s->momentum(start), 0.95, 1e-12);
    EXPECT_NEAR(*s->momentum({299, 1000, 100}), 0.85, 1e-12);
    EXPECT_NEAR(*s->momentum({999, 1000, 100}), 0.95, 1e-12);
    EXPECT_FALSE(scheduler(registry, "onecycle", {{"cycle_momentum", false}})->momentum(start).has_value());
}

TEST(Schedulers, CosineMultistepConstant) {
    Registry registry({plugin_dir()});
    auto cosine = scheduler(registry, "cosine", {{"lr", 1.0}, {"warmup_epochs", 1.0}});
    EXPECT_NEAR(cosine->lr({0, 1000, 100}), 0.01, 1e-12);
    EXPECT_NEAR(cosine->lr({99, 1000, 100}), 1.0, 1e-12);
    EXPECT_NEAR(cosine->lr({100, 1000, 100}), 1.0, 1e-12);
    EXPECT_NEAR(cosine->lr({550, 1000, 100}), 0.5, 1e-12);
    auto multistep = scheduler(registry, "multistep", {{"lr", 1.0}, {"milestones", std::vector<double>{3, 6}}});
    EXPECT_NEAR(multistep->lr({299, 1000, 100}), 1.0, 1e-12);
    EXPECT_NEAR(multistep->lr({300, 1000, 100}), 0.1, 1e-12);
    EXPECT_NEAR(multistep->lr({600, 1000, 100}), 0.01, 1e-12);
    EXPECT_NEAR(scheduler(registry, "constant", {{"lr", 0.3}})->lr({5, 10, 1}), 0.3, 1e-12);
}

TEST(Optimizers, SgdMatchesTorchFormulaWithNoDecayForBatchNorm) {
    Registry registry({plugin_dir()});
    const auto* entry = registry.find("optimizer", "sgd");
    auto sgd = registry.create<plugin::Optimizer>(*entry, plugin::Options({{"momentum", 0.9}, {"weight_decay", 0.1},
                                                                           {"nesterov", true}, {"no_decay_bn_bias", true}}));
    std::vector<float> w = {1.f, 2.f}, g = {0.5f, 0.5f};
    plugin::Parameters p{w.data(), g.data(), 2, {{"conv.weight", "conv_weight", 0, 1}, {"bn.weight", "bn_weight", 1, 1}}};
    sgd->step(p, {0.1, std::nullopt});
    sgd->step(p, {0.1, std::nullopt});
    // conv: step 1 g = 0.6, v = 0.6, w = 1 - 0.1 (0.6 + 0.54) = 0.886; step 2 g = 0.5886, v = 1.1286,
    // w = 0.886 - 0.1 (0.5886 + 1.01574) = 0.725566. bn (no decay): v = 0.5, then 0.95.
    EXPECT_NEAR(w[0], 0.725566, 1e-6);
    EXPECT_NEAR(w[1], 2.0 - 0.1 * (0.5 + 0.45) - 0.1 * (0.5 + 0.855), 1e-6);
    // A scheduler's momentum replaces the optimizer's: momentum 0 is plain gradient descent.
    std::vector<float> v = {1.f}, h = {0.5f};
    plugin::Parameters q{v.data(), h.data(), 1, {{"bn.bias", "bn_bias", 0, 1}}};
    sgd->step(q, {0.1, 0.0});
    sgd->step(q, {0.1, 0.0});
    EXPECT_NEAR(v[0], 1.0 - 2 * 0.1 * 0.5, 1e-6);
}

}  // namespace
}  // namespace tessera::test
