// poly: linear warm-up, then polynomial decay, as the MLPerf ResNet-50 reference schedules LARS:
//   step < warmup:  lr * (step + 1) / warmup
//   after:          (lr - end_lr) * (1 - (step - warmup) / decay)^power + end_lr,  end_lr after `decay` steps
// warmup = warmup_epochs and decay = decay_epochs (0: to the last step) of steps, both per batch.
#include <algorithm>
#include <cmath>

#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

class Poly final : public Scheduler {
public:
    explicit Poly(const Options& o)
        : lr_(o.number("lr")), end_lr_(o.number("end_lr")), power_(o.number("power")),
          warmup_epochs_(o.number("warmup_epochs")), decay_epochs_(o.number("decay_epochs")) {}

    double lr(const Clock& c) const override {
        const double warmup = std::min(double(c.total_steps), warmup_epochs_ * double(c.steps_per_epoch));
        const double step = double(c.step);
        if (step < warmup) return lr_ * (step + 1) / warmup;
        const double end = decay_epochs_ > 0 ? decay_epochs_ * double(c.steps_per_epoch) : double(c.total_steps);
        const double span = std::max(1.0, end - warmup);
        const double left = std::max(0.0, 1 - (step - warmup) / span);
        return (lr_ - end_lr_) * std::pow(left, power_) + end_lr_;
    }

private:
    double lr_, end_lr_, power_, warmup_epochs_, decay_epochs_;
};

Info info() {
    return {
        "",
        "poly",
        "linear warm-up, then polynomial decay to end_lr (MLPerf's LARS schedule)",
        {{"lr", 1.0, "the learning rate after warm-up", above(0)},
         {"end_lr", 1e-4, "the rate at the end of the decay", at_least(0)},
         {"power", 2.0, "the decay's exponent", above(0)},
         {"warmup_epochs", 2.0, "epochs of linear warm-up (fractions allowed)", at_least(0)},
         {"decay_epochs", 0.0, "the epoch the decay ends at, counted from the start (0: the last step)", at_least(0)}}};
}

std::unique_ptr<Scheduler> create(const Options& o) { return std::make_unique<Poly>(o); }

}  // namespace

TESSERA_PLUGIN(Scheduler, info, create)
