// constant: the same learning rate at every step.
#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

class Constant final : public Scheduler {
public:
    explicit Constant(const Options& o) : lr_(o.number("lr")) {}
    double lr(const Clock&) const override { return lr_; }

private:
    double lr_;
};

Info info() { return {"", "constant", "a fixed learning rate", {{"lr", 0.1, "the learning rate", at_least(0)}}}; }

std::unique_ptr<Scheduler> create(const Options& o) { return std::make_unique<Constant>(o); }

}  // namespace

TESSERA_PLUGIN(Scheduler, info, create)
