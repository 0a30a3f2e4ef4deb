// lars: layer-wise adaptive rate scaling (You et al. 2017) as the MLPerf ResNet-50 reference has
// it, for global batches of thousands. Per tensor, except BatchNorm's and the biases:
//   trust = eeta * |w| / (|g| + weight_decay * |w| + epsilon)   (1 where |w| or |g| is 0)
//   g    += weight_decay * w
// then, for every tensor (trust 1 for the exempt ones):
//   v = momentum * v + lr * trust * g
//   w -= v                               (nesterov: w -= lr * trust * g + momentum * v)
// The momentum holds rate-scaled updates, as TensorFlow's apply_momentum does; pair it with the
// `poly` scheduler (warm-up, then polynomial decay), as MLPerf does.
#include <cmath>
#include <memory>
#include <vector>

#include "cuda_steps.hpp"  // declarations only: defined in a build with CUDA
#include "common.hpp"
#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;
using tessera::plugins::optimizers::LarsStep;
using tessera::plugins::optimizers::LarsTensor;

class Lars final : public Optimizer {
public:
    explicit Lars(const Options& o)
        : momentum_(o.number("momentum")), weight_decay_(o.number("weight_decay")), eeta_(o.number("eeta")),
          epsilon_(o.number("epsilon")), nesterov_(o.flag("nesterov")) {}

    void step(const Parameters& p, const StepRates& rates) override {
        if (tensors_.empty()) {
            for (auto& t : p.tensors) {
                const bool adapt = !tessera::plugins::optimizers::is_bn_or_bias(t);
                tensors_.push_back({t.offset, t.size, adapt ? float(weight_decay_) : 0.f, adapt});
                largest_ = std::max<std::size_t>(largest_, t.size);
            }
            if (velocity_.size() != p.count) velocity_.assign(p.count, 0.f);
        }
        const LarsStep s{float(rates.lr), float(rates.momentum.value_or(momentum_)), float(eeta_), float(epsilon_),
                         nesterov_};
        if (p.device != "cpu") return device_step(p, s);
        for (const LarsTensor& t : tensors_) {
            float* w = p.values + t.offset;
            const float* grad = p.grads + t.offset;
            float* v = velocity_.data() + t.offset;
            const float rate = s.lr * (t.adapt ? trust_ratio(w, grad, t.size, t.weight_decay, s) : 1.f);
            for (std::size_t i = 0; i < t.size; ++i) {
                const float g = grad[i] + t.weight_decay * w[i];
                v[i] = s.momentum * v[i] + rate * g;
                w[i] -= s.nesterov ? rate * g + s.momentum * v[i] : v[i];
            }
        }
    }

    OptimizerState state() const override {
#ifdef TESSERA_WITH_CUDA
        if (device_) return device_->download(stream_);
#endif
        if (velocity_.empty()) return {};
        return {{"momentum_buffer", velocity_}};
    }

    void load_state(const OptimizerState& state) override {
        auto it = state.find("momentum_buffer");
        if (it == state.end())
            throw tessera::user_error("optimizer lars", "the checkpoint's optimizer state has no momentum_buffer",
                                      "was it written with another optimizer? Start over with --fresh");
        velocity_ = it->second;
#ifdef TESSERA_WITH_CUDA
        device_.reset();
#endif
    }

private:
    static float trust_ratio(const float* w, const float* g, std::size_t n, float weight_decay, const LarsStep& s) {
        double ww = 0, gg = 0;
        for (std::size_t i = 0; i < n; ++i) ww += double(w[i]) * w[i], gg += double(g[i]) * g[i];
        const double w_norm = std::sqrt(ww), g_norm = std::sqrt(gg);
        if (w_norm <= 0 || g_norm <= 0) return 1.f;
        return float(s.eeta * w_norm / (g_norm + weight_decay * w_norm + s.epsilon));
    }

    void device_step(const Parameters& p, [[maybe_unused]] const LarsStep& s) {
#ifdef TESSERA_WITH_CUDA
        if (p.device == "cuda") {
            if (!device_ || device_->count != p.count) {
                device_ = std::make_unique<tessera::plugins::optimizers::DeviceArrays>(
                    p.count, std::vector<std::string>{"momentum_buffer"},
                    OptimizerState{{"momentum_buffer", velocity_}});
                device_tensors_ = static_cast<LarsTensor*>(
                    device_->scratch(tensors_.size() * (sizeof(LarsTensor) + 2 * sizeof(double))));
                tessera::plugins::optimizers::upload_bytes(device_tensors_, tensors_.data(),
                                                           tensors_.size() * sizeof(LarsTensor));
            }
            stream_ = p.stream;
            auto* sums = reinterpret_cast<double*>(device_tensors_ + tensors_.size());
            tessera::plugins::optimizers::lars_step_cuda(*device_, p.values, p.grads, device_tensors_,
                                                         int(tensors_.size()), sums, largest_, s, p.stream);
            return;
        }
#endif
        tessera::plugins::optimizers::no_step_for("lars", p.device);
    }

    double momentum_, weight_decay_, eeta_, epsilon_;
    int nesterov_;
    std::vector<LarsTensor> tensors_;
    std::size_t largest_ = 0;
    std::vector<float> velocity_;  // on the CPU, or until the GPU's state is made from it
#ifdef TESSERA_WITH_CUDA
    std::unique_ptr<tessera::plugins::optimizers::DeviceArrays> device_;
    LarsTensor* device_tensors_ = nullptr;  // in device_'s scratch, followed by the per-tensor sums
    void* stream_ = nullptr;
#endif
};

Info info() {
    return {"",
            "lars",
            "LARS: momentum SGD with a trust ratio per tensor (MLPerf ResNet-50 semantics)",
            {{"momentum", 0.9, "momentum factor (a scheduler's momentum replaces it)", from_to_below(0, 1)},
             {"weight_decay", 5e-5, "L2 penalty, for tensors other than BatchNorm's and the biases", at_least(0)},
             {"eeta", 0.001, "the trust coefficient", above(0)},
             {"epsilon", 0.0, "added to the trust ratio's denominator", at_least(0)},
             {"nesterov", false, "Nesterov momentum"}}};
}

std::unique_ptr<Optimizer> create(const Options& o) { return std::make_unique<Lars>(o); }

}  // namespace

TESSERA_PLUGIN(Optimizer, info, create)
