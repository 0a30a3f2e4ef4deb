// cosine_restarts: SGDR (Loshchilov & Hutter 2017), cosine annealing restarted every cycle, each
// cycle `cycle_mult` times longer than the one before (torch's CosineAnnealingWarmRestarts, stepped
// per batch). A scheduler is a pure function of the clock, so a resumed run gets the same rates.
#include <cmath>
#include <numbers>

#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

class CosineRestarts final : public Scheduler {
public:
    explicit CosineRestarts(const Options& o)
        : lr_(o.number("lr")), min_lr_(o.number("min_lr")), first_cycle_(o.number("first_cycle_epochs")),
          cycle_mult_(o.number("cycle_mult")) {}  // their ranges, declared in info(), are checked before

    double lr(const Clock& c) const override {
        // Where the step falls: which cycle, and how far into it.
        double cycle = first_cycle_ * double(c.steps_per_epoch), into = double(c.step);
        while (into >= cycle) {
            into -= cycle;
            cycle *= cycle_mult_;
        }
        return min_lr_ + (lr_ - min_lr_) * 0.5 * (1 + std::cos(std::numbers::pi * into / cycle));
    }

private:
    double lr_, min_lr_, first_cycle_, cycle_mult_;
};

Info info() {
    return {"",
            "cosine_restarts",
            "cosine annealing with warm restarts (SGDR), per batch",
            {{"lr", 0.1, "the learning rate at the start of each cycle", above(0)},
             {"min_lr", 0.0, "the learning rate at the end of each cycle", at_least(0)},
             {"first_cycle_epochs", 1.0, "length of the first cycle, in epochs (fractions allowed)", above(0)},
             {"cycle_mult", 2.0, "each cycle is this many times longer than the one before", at_least(1)}}};
}

std::unique_ptr<Scheduler> create(const Options& o) { return std::make_unique<CosineRestarts>(o); }

}  // namespace

TESSERA_PLUGIN(Scheduler, info, create)
