// The registry: it finds the build's plugins, refuses modules that are not tessera plugins of this
// ABI (naming the file and the versions), and the schedulers follow PyTorch's formulas.
#include <cmath>
#include <fstream>
#include <numbers>
#include <sstream>

#include "helpers.hpp"
#include "tessera/plugin/registry.hpp"

namespace tessera::test {
namespace {

using plugin::Registry;

TEST(Registry, FindsEveryBuiltInPlugin) {
    Registry registry({plugin_dir()});
    for (auto [kind, name] : {std::pair{"optimizer", "sgd"},
                              {"scheduler", "onecycle"},
                              {"scheduler", "cosine"},
                              {"scheduler", "multistep"},
                              {"scheduler", "constant"},
                              {"data", "idx"},
                              {"data", "synthetic"},
                              {"data", "imagefolder"},
                              {"data", "shards"},
                              {"logger", "console"},
                              {"logger", "csv"},
                              {"logger", "jsonl"},
                              {"logger", "tensorboard"},
                              {"logger", "html"},
                              {"optimizer", "adamw"},
                              {"optimizer", "lars"},
                              {"scheduler", "poly"}})
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

/// A plugin of `Kind` with `options`, the rest at their defaults.
template <class Kind>
std::shared_ptr<Kind> make(const Registry& registry, const std::string& name,
                           std::map<std::string, plugin::Value> options) {
    const auto* entry = registry.find(plugin::kind_of<Kind>, name);
    for (auto& o : entry->info.options) options.try_emplace(o.name, o.default_value);
    return registry.create<Kind>(*entry, plugin::Options(options));
}
std::shared_ptr<plugin::Scheduler> scheduler(const Registry& registry, const std::string& name,
                                             std::map<std::string, plugin::Value> options) {
    return make<plugin::Scheduler>(registry, name, std::move(options));
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

TEST(Schedulers, PolyWarmsUpThenDecaysAsMlperf) {
    Registry registry({plugin_dir()});
    auto poly =
        scheduler(registry, "poly", {{"lr", 10.0}, {"end_lr", 1e-4}, {"warmup_epochs", 2.0}, {"decay_epochs", 8.0}});
    EXPECT_NEAR(poly->lr({0, 1000, 100}), 10.0 / 200, 1e-12);
    EXPECT_NEAR(poly->lr({199, 1000, 100}), 10.0, 1e-12);
    EXPECT_NEAR(poly->lr({200, 1000, 100}), 10.0, 1e-12);
    EXPECT_NEAR(poly->lr({500, 1000, 100}), (10.0 - 1e-4) * 0.25 + 1e-4, 1e-12);  // halfway through the decay: (1/2)^2
    EXPECT_NEAR(poly->lr({800, 1000, 100}), 1e-4, 1e-12);
    EXPECT_NEAR(poly->lr({950, 1000, 100}), 1e-4, 1e-12);  // after the decay ends
}

// The parameters the optimizer tests step: a conv weight, a BatchNorm gamma and a bias.
struct SmallParameters {
    std::vector<float> w = {0.5f, -1.f, 2.f, 0.25f, 1.f, 0.1f}, g = {0.2f, 0.3f, -0.1f, 0.05f, -0.4f, 0.3f};
    plugin::Parameters view() {
        return {
            w.data(),
            g.data(),
            w.size(),
            {{"conv.weight", "conv_weight", 0, 4}, {"bn.weight", "bn_weight", 4, 1}, {"fc.bias", "linear_bias", 5, 1}}};
    }
};

bool have_torch() { return std::system("/usr/bin/python3 -c 'import torch' >/dev/null 2>&1") == 0; }
constexpr const char* no_torch = "PyTorch is not installed (apt install python3-torch); scripts/test installs it";
#define SKIP_WITHOUT_TORCH() \
    if (!have_torch()) GTEST_SKIP() << no_torch

/// The numbers a Python program prints, one run of PyTorch.
std::vector<double> python_numbers(const std::string& program) {
    TempDir dir;
    std::ofstream(dir / "p.py") << program;
    const RunResult r = run_shell("/usr/bin/python3 '" + (dir / "p.py").string() + "' 2>&1");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::stringstream in(r.output);
    std::vector<double> numbers;
    for (double x; in >> x;) numbers.push_back(x);
    return numbers;
}

/// What both sides of an optimizer test start from: SmallParameters' values and its first gradient,
/// the gradient changing after each step as g = -0.5 g + 0.01; the rate of step s is 0.01 (s + 1).
const char* torch_prelude = R"(import torch
w0 = torch.tensor([0.5, -1.0, 2.0, 0.25, 1.0, 0.1], dtype=torch.float32)
g0 = torch.tensor([0.2, 0.3, -0.1, 0.05, -0.4, 0.3], dtype=torch.float32)
def show(*tensors):
    print(" ".join("%.9g" % x for t in tensors for x in t.detach().tolist()))
)";

void expect_values(const std::vector<float>& got, const std::vector<double>& want, std::size_t from, const char* what) {
    ASSERT_GE(want.size(), from + got.size()) << what;
    for (std::size_t i = 0; i < got.size(); ++i)
        EXPECT_NEAR(got[i], want[from + i], 1e-6 * std::max(1.0, std::abs(want[from + i]))) << what << ", value " << i;
}

TEST(Optimizers, AdamwMatchesPyTorch) {
    SKIP_WITHOUT_TORCH();
    Registry registry({plugin_dir()});
    auto adamw = make<plugin::Optimizer>(registry, "adamw", {{"weight_decay", 0.1}, {"no_decay_bn_bias", true}});
    SmallParameters p;
    // Three steps, the gradient changing between them, beta1 replaced at the third (OneCycle).
    for (int step = 0; step < 3; ++step) {
        adamw->step(p.view(), {0.01 * (step + 1), step == 2 ? std::optional(0.85) : std::nullopt});
        for (auto& x : p.g) x = -0.5f * x + 0.01f;
    }
    // torch.optim.AdamW with the same groups: decay for the conv weight, none for gamma and bias.
    const auto torch = python_numbers(std::string(torch_prelude) + R"(
conv, rest, g = w0[:4].clone().requires_grad_(), w0[4:].clone().requires_grad_(), g0.clone()
opt = torch.optim.AdamW([{"params": [conv], "weight_decay": 0.1}, {"params": [rest], "weight_decay": 0.0}], lr=0.01)
for step in range(3):
    for group in opt.param_groups:
        group["lr"] = 0.01 * (step + 1)
        group["betas"] = (0.85 if step == 2 else 0.9, 0.999)
    conv.grad, rest.grad = g[:4].clone(), g[4:].clone()
    opt.step()
    g = -0.5 * g + 0.01
show(conv, rest)
)");
    expect_values(p.w, torch, 0, "AdamW");
    // The state round-trips: a fresh optimizer given it takes the same next step.
    auto resumed = make<plugin::Optimizer>(registry, "adamw", {{"weight_decay", 0.1}, {"no_decay_bn_bias", true}});
    resumed->load_state(adamw->state());
    SmallParameters a = p, b = p;
    adamw->step(a.view(), {0.01, std::nullopt});
    resumed->step(b.view(), {0.01, std::nullopt});
    EXPECT_EQ(a.w, b.w);
}

// LARS as MLPerf's ResNet-50 reference runs it: TensorFlow's LARSOptimizer (compute_lr, then
// apply_momentum with a rate of 1 and the gradient times the scaled rate), skipping BatchNorm and
// biases, written out here in PyTorch's tensors. Three steps, nesterov off and on.
TEST(Optimizers, LarsMatchesMlperfsReference) {
    SKIP_WITHOUT_TORCH();
    Registry registry({plugin_dir()});
    std::vector<float> ours;
    for (bool nesterov : {false, true}) {
        auto lars = make<plugin::Optimizer>(
            registry, "lars", {{"momentum", 0.9}, {"weight_decay", 5e-5}, {"eeta", 0.001}, {"nesterov", nesterov}});
        SmallParameters p;
        for (int step = 0; step < 3; ++step) {
            lars->step(p.view(), {2.0 * (step + 1), std::nullopt});
            for (auto& x : p.g) x = -0.5f * x + 0.01f;
        }
        ours.insert(ours.end(), p.w.begin(), p.w.end());
        if (!nesterov) {
            EXPECT_GT(std::abs(p.w[4] - 1.f), 100 * std::abs(p.w[0] - 0.5f))
                << "gamma moves at the base rate, the conv weight far slower";
        }
    }
    const auto reference = python_numbers(std::string(torch_prelude) + R"(
momentum, weight_decay, eeta, epsilon = 0.9, 5e-5, 0.001, 0.0
def lars(w, v, g, lr, skip, nesterov):
    # compute_lr: the trust ratio from the norms of the weights and the raw gradient; skipped
    # variables (batch_normalization, bias) keep the base rate and take no decay.
    if skip:
        scaled_lr = lr
    else:
        w_norm, g_norm = torch.linalg.norm(w), torch.linalg.norm(g)
        one = torch.tensor(1.0)
        trust = torch.where(w_norm > 0,
                            torch.where(g_norm > 0,
                                        eeta * w_norm / (g_norm + weight_decay * w_norm + epsilon), one), one)
        scaled_lr = lr * trust
        g = g + weight_decay * w
    # apply_momentum(var, accum, lr=1, grad=g * scaled_lr, momentum)
    grad = g * scaled_lr
    v.mul_(momentum).add_(grad)
    w.sub_(grad + momentum * v if nesterov else v)
for nesterov in (False, True):
    tensors = [w0[:4].clone(), w0[4:5].clone(), w0[5:].clone()]
    velocity = [torch.zeros_like(t) for t in tensors]
    g = g0.clone()
    for step in range(3):
        for t, v, grad, skip in zip(tensors, velocity, (g[:4], g[4:5], g[5:]), (False, True, True)):
            lars(t, v, grad, 2.0 * (step + 1), skip, nesterov)
        g = -0.5 * g + 0.01
    show(*tensors)
)");
    expect_values(ours, reference, 0, "LARS");
}

// torch.optim.SGD itself, three steps with the gradient and the rate changing: nesterov with no
// decay on BatchNorm and biases (two parameter groups), and plain momentum with decay everywhere;
// at the third step a scheduler's momentum (OneCycle) replaces the optimizer's.
TEST(Optimizers, SgdMatchesTorchOptimSgd) {
    SKIP_WITHOUT_TORCH();
    Registry registry({plugin_dir()});
    std::vector<float> ours;
    for (bool nesterov : {true, false}) {
        auto sgd = make<plugin::Optimizer>(
            registry, "sgd",
            {{"momentum", 0.9}, {"weight_decay", 0.1}, {"nesterov", nesterov}, {"no_decay_bn_bias", nesterov}});
        SmallParameters p;
        for (int step = 0; step < 3; ++step) {
            sgd->step(p.view(), {0.01 * (step + 1), step == 2 ? std::optional(0.85) : std::nullopt});
            for (auto& x : p.g) x = -0.5f * x + 0.01f;
        }
        ours.insert(ours.end(), p.w.begin(), p.w.end());
    }
    const auto torch = python_numbers(std::string(torch_prelude) + R"(
for nesterov in (True, False):
    conv, rest, g = w0[:4].clone().requires_grad_(), w0[4:].clone().requires_grad_(), g0.clone()
    opt = torch.optim.SGD([{"params": [conv], "weight_decay": 0.1},
                           {"params": [rest], "weight_decay": 0.0 if nesterov else 0.1}],
                          lr=0.01, momentum=0.9, nesterov=nesterov)
    for step in range(3):
        for group in opt.param_groups:
            group["lr"] = 0.01 * (step + 1)
            group["momentum"] = 0.85 if step == 2 else 0.9
        conv.grad, rest.grad = g[:4].clone(), g[4:].clone()
        opt.step()
        g = -0.5 * g + 0.01
    show(conv, rest)
)");
    expect_values(ours, torch, 0, "SGD");
    // Momentum 0 from a scheduler is plain gradient descent.
    auto sgd = make<plugin::Optimizer>(registry, "sgd", {{"momentum", 0.9}, {"weight_decay", 0.0}});
    std::vector<float> v = {1.f}, h = {0.5f};
    plugin::Parameters q{v.data(), h.data(), 1, {{"bn.bias", "bn_bias", 0, 1}}};
    sgd->step(q, {0.1, 0.0});
    sgd->step(q, {0.1, 0.0});
    EXPECT_NEAR(v[0], 1.0 - 2 * 0.1 * 0.5, 1e-6);
}

}  // namespace
}  // namespace tessera::test
