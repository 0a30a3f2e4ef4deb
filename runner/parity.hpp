#pragma once
// runner parity's two halves that do not train: the recipe mapped to PyTorch (parity_mapping.cpp)
// and the comparison of the two sides' weights (parity.cpp).
#include <cstdint>
#include <string>
#include <vector>

#include "tessera/recipe/run_spec.hpp"

namespace tessera::runner {

/// What the run looks like beyond the recipe: decided by runner parity's options and the data.
struct ParityShape {
    std::int64_t steps = 0;            // optimizer steps both sides take
    std::int64_t steps_per_epoch = 0;  // the schedule's clock, as the trainer's
    std::int64_t total_steps = 0;
    std::vector<std::int64_t> snapshots;  // steps after which both sides write their weights (0: the start)
    int threads = 1;
    bool eval = false;  // both sides evaluate on the validation split at the end
    int height = 0, width = 0, channels = 0;
};

/// The recipe as bench/parity/torch_side.py trains it, as spec.json. Every key of the recipe either
/// has a PyTorch counterpart, has no bearing on one process's training steps, or is refused by name
/// (a user error, exit 2): nothing is ignored. A key this mapping has never heard of (a newer option
/// of tessera or of a plugin) is refused as well, until the mapping learns it.
std::string parity_spec(const recipe::RunSpec& spec, const ParityShape& shape, double lr_scale);

/// The keys of each core recipe section the mapping knows, for the test that keeps it complete.
std::vector<std::string> parity_known_keys(const std::string& section);

}  // namespace tessera::runner
