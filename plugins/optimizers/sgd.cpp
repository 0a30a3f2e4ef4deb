// sgd: stochastic gradient descent with momentum, as torch.optim.SGD (dampening 0):
//   g = grad + weight_decay * w          (no decay for BN and biases if no_decay_bn_bias)
//   v = momentum * v + g
//   w -= lr * (nesterov ? g + momentum * v : v)
#include <memory>
#include <vector>

#include "common.hpp"
#include "tessera/plugin/api.hpp"
#ifdef TESSERA_WITH_CUDA
#include "sgd_cuda.hpp"
#endif

namespace {

using namespace tessera::plugin;

class Sgd final : public Optimizer {
public:
    explicit Sgd(const Options& o)
        : momentum_(o.number("momentum")), weight_decay_(o.number("weight_decay")), nesterov_(o.flag("nesterov")),
          no_decay_bn_bias_(o.flag("no_decay_bn_bias")) {
        if (nesterov_ && momentum_ <= 0)
            throw tessera::user_error("optimizer sgd", "nesterov needs a positive momentum");
    }

    void step(const Parameters& p, const StepRates& rates) override {
        if (decay_.size() != p.count) {
            decay_ = tessera::plugins::optimizers::decay_per_value(p, weight_decay_, no_decay_bn_bias_);
            if (velocity_.size() != p.count) velocity_.assign(p.count, 0.f);  // unless a checkpoint gave it
        }
        const float m = float(rates.momentum.value_or(momentum_)), rate = float(rates.lr);
        if (p.device != "cpu") return device_step(p, rate, m);
        float* w = p.values;
        const float* grad = p.grads;
        float* v = velocity_.data();
        const float* decay = decay_.data();
        for (std::size_t i = 0; i < p.count; ++i) {
            const float g = grad[i] + decay[i] * w[i];
            v[i] = m * v[i] + g;
            w[i] -= rate * (nesterov_ ? g + m * v[i] : v[i]);
        }
    }

    /// torch.optim.SGD's "momentum_buffer", for all parameters in one.
    OptimizerState state() const override {
#ifdef TESSERA_WITH_CUDA
        if (device_) return {{"momentum_buffer", device_->download()}};
#endif
        if (velocity_.empty()) return {};
        return {{"momentum_buffer", velocity_}};
    }

    void load_state(const OptimizerState& state) override {
        auto it = state.find("momentum_buffer");
        if (it == state.end())
            throw tessera::user_error("optimizer sgd", "the checkpoint's optimizer state has no momentum_buffer",
                                      "was it written with another optimizer? Start over with --fresh");
        velocity_ = it->second;
#ifdef TESSERA_WITH_CUDA
        device_.reset();  // made again, from velocity_, at the next step
#endif
    }

private:
    void device_step(const Parameters& p, [[maybe_unused]] float rate, [[maybe_unused]] float m) {
#ifdef TESSERA_WITH_CUDA
        if (p.device == "cuda") {
            if (!device_ || device_->count != p.count)
                device_ = std::make_unique<tessera::plugins::optimizers::DeviceState>(decay_, velocity_);
            device_->step(p.values, p.grads, rate, m, nesterov_, p.stream);
            return;
        }
#endif
        tessera::plugins::optimizers::no_step_for("sgd", p.device);
    }

    double momentum_, weight_decay_;
    bool nesterov_, no_decay_bn_bias_;
    std::vector<float> velocity_, decay_;  // decay_: the weight decay of each parameter; velocity_: on the CPU,
                                           // or until the GPU's state is made from it
#ifdef TESSERA_WITH_CUDA
    std::unique_ptr<tessera::plugins::optimizers::DeviceState> device_;
#endif
};

Info info() {
    return {"",
            "sgd",
            "SGD with momentum (torch.optim.SGD semantics)",
            {{"momentum", 0.9, "momentum factor", from_to_below(0, 1)},
             {"weight_decay", 1e-4, "L2 penalty added to the gradient", at_least(0)},
             {"nesterov", false, "Nesterov momentum"},
             {"no_decay_bn_bias", false, "no weight decay for BatchNorm parameters and biases"}}};
}

std::unique_ptr<Optimizer> create(const Options& o) { return std::make_unique<Sgd>(o); }

}  // namespace

TESSERA_PLUGIN(Optimizer, info, create)
