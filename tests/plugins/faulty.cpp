// A plugin with faults to order, for the tests: an optimizer (plain SGD) whose factory throws when
// asked, and whose step throws a std::runtime_error at a given step, as a buggy plugin would.
#include <stdexcept>

#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

class Faulty final : public Optimizer {
public:
    explicit Faulty(const Options& o) : throw_at_step_(o.integer("throw_at_step")) {
        if (o.flag("throw_in_factory")) throw std::logic_error("the factory was told to fail");
    }
    void step(const Parameters& p, const StepRates& rates) override {
        if (++steps_ == throw_at_step_) throw std::runtime_error("an index out of range, on purpose");
        for (std::size_t i = 0; i < p.count; ++i) p.values[i] -= float(rates.lr) * p.grads[i];
    }

private:
    std::int64_t throw_at_step_, steps_ = 0;
};

Info info() {
    return {"",
            "faulty",
            "plain SGD that throws where told (tests)",
            {{"throw_in_factory", false, "the factory throws"},
             {"throw_at_step", std::int64_t(0), "step() throws at this step (from 1)"}}};
}

std::unique_ptr<Optimizer> create(const Options& o) { return std::make_unique<Faulty>(o); }

}  // namespace

TESSERA_PLUGIN(Optimizer, info, create)
