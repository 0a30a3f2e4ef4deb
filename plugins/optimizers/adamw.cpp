// adamw: Adam with decoupled weight decay (Loshchilov and Hutter 2019), as torch.optim.AdamW:
//   w -= lr * weight_decay * w                     (no decay for BN and biases if no_decay_bn_bias)
//   m = beta1 * m + (1 - beta1) * g                 (a scheduler's momentum, OneCycle's, replaces beta1)
//   v = beta2 * v + (1 - beta2) * g^2
//   w -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
#include <cmath>
#include <memory>
#include <vector>

#include "cuda_steps.hpp"  // declarations only: defined in a build with CUDA
#include "common.hpp"
#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;
using tessera::plugins::optimizers::AdamStep;

class AdamW final : public Optimizer {
public:
    explicit AdamW(const Options& o)
        : beta1_(o.number("beta1")), beta2_(o.number("beta2")), eps_(o.number("eps")),
          weight_decay_(o.number("weight_decay")), no_decay_bn_bias_(o.flag("no_decay_bn_bias")) {}

    void step(const Parameters& p, const StepRates& rates) override {
        if (decay_.size() != p.count) {
            decay_ = tessera::plugins::optimizers::decay_per_value(p, weight_decay_, no_decay_bn_bias_);
            if (exp_avg_.size() != p.count) exp_avg_.assign(p.count, 0.f), exp_avg_sq_.assign(p.count, 0.f);
        }
        ++steps_;
        const double beta1 = rates.momentum.value_or(beta1_);
        const AdamStep s{float(rates.lr),
                         float(beta1),
                         float(beta2_),
                         float(eps_),
                         float(1 - std::pow(beta1, double(steps_))),
                         float(std::sqrt(1 - std::pow(beta2_, double(steps_))))};
        if (p.device != "cpu") return device_step(p, s);
        float* w = p.values;
        const float* g = p.grads;
        float *m = exp_avg_.data(), *v = exp_avg_sq_.data();
        const float step_size = s.lr / s.bias_correction1;
        for (std::size_t i = 0; i < p.count; ++i) {
            w[i] *= 1 - s.lr * decay_[i];
            m[i] = s.beta1 * m[i] + (1 - s.beta1) * g[i];
            v[i] = s.beta2 * v[i] + (1 - s.beta2) * g[i] * g[i];
            w[i] -= step_size * m[i] / (std::sqrt(v[i]) / s.sqrt_bias_correction2 + s.eps);
        }
    }

    /// torch's names: exp_avg, exp_avg_sq, and the step count.
    OptimizerState state() const override {
        OptimizerState s;
#ifdef TESSERA_WITH_CUDA
        if (device_) s = device_->download(stream_);
#endif
        if (s.empty() && !exp_avg_.empty()) s = {{"exp_avg", exp_avg_}, {"exp_avg_sq", exp_avg_sq_}};
        if (!s.empty()) s["step"] = {float(steps_)};
        return s;
    }

    void load_state(const OptimizerState& state) override {
        for (const char* key : {"exp_avg", "exp_avg_sq", "step"})
            if (!state.count(key))
                throw tessera::user_error("optimizer adamw",
                                          std::string("the checkpoint's optimizer state has no ") + key,
                                          "was it written with another optimizer? Start over with --fresh");
        exp_avg_ = state.at("exp_avg");
        exp_avg_sq_ = state.at("exp_avg_sq");
        steps_ = std::int64_t(state.at("step").at(0));
#ifdef TESSERA_WITH_CUDA
        device_.reset();  // made again, from the host copies, at the next step
#endif
    }

private:
    void device_step(const Parameters& p, [[maybe_unused]] const AdamStep& s) {
#ifdef TESSERA_WITH_CUDA
        if (p.device == "cuda") {
            if (!device_ || device_->count != p.count)
                device_ = std::make_unique<tessera::plugins::optimizers::DeviceArrays>(
                    p.count, std::vector<std::string>{"exp_avg", "exp_avg_sq"},
                    OptimizerState{{"exp_avg", exp_avg_}, {"exp_avg_sq", exp_avg_sq_}},
                    OptimizerState{{"decay", decay_}});
            stream_ = p.stream;
            tessera::plugins::optimizers::adamw_step_cuda(*device_, p.values, p.grads, s, p.stream);
            return;
        }
#endif
        tessera::plugins::optimizers::no_step_for("adamw", p.device);
    }

    double beta1_, beta2_, eps_, weight_decay_;
    bool no_decay_bn_bias_;
    std::int64_t steps_ = 0;
    std::vector<float> exp_avg_, exp_avg_sq_, decay_;  // on the CPU, or until the GPU's state is made from them
#ifdef TESSERA_WITH_CUDA
    std::unique_ptr<tessera::plugins::optimizers::DeviceArrays> device_;
    void* stream_ = nullptr;
#endif
};

Info info() {
    return {"",
            "adamw",
            "Adam with decoupled weight decay (torch.optim.AdamW semantics)",
            {{"beta1", 0.9, "decay of the gradients' moving average (a scheduler's momentum replaces it)",
              from_to_below(0, 1)},
             {"beta2", 0.999, "decay of the squared gradients' moving average", from_to_below(0, 1)},
             {"eps", 1e-8, "added to the denominator", above(0)},
             {"weight_decay", 0.01, "decoupled weight decay: w -= lr * weight_decay * w", at_least(0)},
             {"no_decay_bn_bias", false, "no weight decay for BatchNorm parameters and biases"}}};
}

std::unique_ptr<Optimizer> create(const Options& o) { return std::make_unique<AdamW>(o); }

}  // namespace

TESSERA_PLUGIN(Optimizer, info, create)
