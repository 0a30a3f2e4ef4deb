// cosine: linear warm-up from lr / steps to lr over warmup_epochs, then cosine decay to min_lr at
// the last step (torch's CosineAnnealingLR after a LinearLR warm-up, stepped per batch).
#include <algorithm>
#include <cmath>
#include <numbers>

#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

class Cosine final : public Scheduler {
public:
    explicit Cosine(const Options& o)
        : lr_(o.number("lr")), min_lr_(o.number("min_lr")), warmup_epochs_(o.number("warmup_epochs")) {}

    double lr(const Clock& c) const override {
        const double warmup = std::min(double(c.total_steps), warmup_epochs_ * double(c.steps_per_epoch));
        const double step = double(c.step);
        if (step < warmup) return lr_ * (step + 1) / warmup;
        const double span = std::max(1.0, double(c.total_steps) - warmup);
        const double pct = std::min(1.0, (step - warmup) / span);
        return min_lr_ + (lr_ - min_lr_) * 0.5 * (1 + std::cos(std::numbers::pi * pct));
    }

private:
    double lr_, min_lr_, warmup_epochs_;
};

Info info() {
    return {"",
            "cosine",
            "cosine decay after an optional linear warm-up (per batch)",
            {{"lr", 0.1, "the learning rate after warm-up", above(0)},
             {"min_lr", 0.0, "the learning rate at the last step", at_least(0)},
             {"warmup_epochs", 0.0, "epochs of linear warm-up (fractions allowed)", at_least(0)}}};
}

std::unique_ptr<Scheduler> create(const Options& o) { return std::make_unique<Cosine>(o); }

}  // namespace

TESSERA_PLUGIN(Scheduler, info, create)
