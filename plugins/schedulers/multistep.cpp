// multistep: lr * gamma^k after the k-th milestone epoch (torch's MultiStepLR, stepped per epoch).
#include <algorithm>
#include <cmath>

#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

class MultiStep final : public Scheduler {
public:
    explicit MultiStep(const Options& o)
        : lr_(o.number("lr")), gamma_(o.number("gamma")), milestones_(o.list("milestones")) {
        std::sort(milestones_.begin(), milestones_.end());
    }

    double lr(const Clock& c) const override {
        const double epoch = double(c.step / std::max<std::int64_t>(1, c.steps_per_epoch));
        const auto passed = std::upper_bound(milestones_.begin(), milestones_.end(), epoch) - milestones_.begin();
        return lr_ * std::pow(gamma_, double(passed));
    }

private:
    double lr_, gamma_;
    std::vector<double> milestones_;
};

Info info() {
    return {"",
            "multistep",
            "step decay at milestone epochs",
            {{"lr", 0.1, "the initial learning rate", above(0)},
             {"milestones", std::vector<double>{}, "epochs after which the rate is multiplied by gamma", at_least(0)},
             {"gamma", 0.1, "the factor at each milestone", above_to(0, 1)}}};
}

std::unique_ptr<Scheduler> create(const Options& o) { return std::make_unique<MultiStep>(o); }

}  // namespace

TESSERA_PLUGIN(Scheduler, info, create)
