// onecycle: torch.optim.lr_scheduler.OneCycleLR (two phases, cosine annealing), stepped per batch:
// from max_lr / div_factor up to max_lr over the first pct_start of the steps, then down to
// max_lr / div_factor / final_div_factor at the last step. With cycle_momentum (PyTorch's default)
// the momentum moves the other way: max_momentum down to base_momentum while the rate rises, and back.
#include <cmath>
#include <numbers>

#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

double cosine_anneal(double start, double end, double pct) {
    return end + (start - end) / 2.0 * (std::cos(std::numbers::pi * pct) + 1);
}

class OneCycle final : public Scheduler {
public:
    explicit OneCycle(const Options& o)
        : max_lr_(o.number("max_lr")), pct_start_(o.number("pct_start")), div_factor_(o.number("div_factor")),
          final_div_factor_(o.number("final_div_factor")), cycle_momentum_(o.flag("cycle_momentum")),
          base_momentum_(o.number("base_momentum")), max_momentum_(o.number("max_momentum")) {}

    double lr(const Clock& c) const override {
        const double initial = max_lr_ / div_factor_;
        return anneal(c, initial, max_lr_, initial / final_div_factor_);
    }

    std::optional<double> momentum(const Clock& c) const override {
        if (!cycle_momentum_) return std::nullopt;
        return anneal(c, max_momentum_, base_momentum_, max_momentum_);
    }

private:
    // From `start` to `peak` over the first pct_start of the steps, then to `end` at the last step.
    double anneal(const Clock& c, double start, double peak, double end) const {
        const double step = double(c.step);
        const double warm_end = pct_start_ * double(c.total_steps) - 1, last = double(c.total_steps) - 1;
        if (step <= warm_end) return cosine_anneal(start, peak, warm_end > 0 ? step / warm_end : 1.0);
        return cosine_anneal(peak, end, last > warm_end ? (step - warm_end) / (last - warm_end) : 1.0);
    }

    double max_lr_, pct_start_, div_factor_, final_div_factor_;
    bool cycle_momentum_;
    double base_momentum_, max_momentum_;
};

Info info() {
    return {"",
            "onecycle",
            "OneCycleLR: cosine warm-up to max_lr, then cosine annealing (per batch)",
            {{"max_lr", 0.1, "the peak learning rate", above(0)},
             {"pct_start", 0.3, "fraction of the steps spent rising", inside(0, 1)},
             {"div_factor", 25.0, "initial lr = max_lr / div_factor", above(0)},
             {"final_div_factor", 1e4, "final lr = initial lr / final_div_factor", above(0)},
             {"cycle_momentum", true, "cycle the optimizer's momentum inversely to the rate (PyTorch's default)"},
             {"base_momentum", 0.85, "momentum at the peak rate", from_to_below(0, 1)},
             {"max_momentum", 0.95, "momentum at the start and the end", from_to_below(0, 1)}}};
}

std::unique_ptr<Scheduler> create(const Options& o) { return std::make_unique<OneCycle>(o); }

}  // namespace

TESSERA_PLUGIN(Scheduler, info, create)
