#pragma once
// What the optimizer plugins share: which parameters weight decay applies to, and the message for
// a device a build has no step for.
#include <algorithm>
#include <string>
#include <vector>

#include "tessera/plugin/api.hpp"

namespace tessera::plugins::optimizers {

/// BatchNorm's gamma and beta and the biases: the parameters that no_decay_bn_bias exempts from
/// weight decay (and that LARS leaves out of its trust ratio), as the large-batch recipes do.
inline bool is_bn_or_bias(const tessera::plugin::Tensor& t) {
    return t.role == "bn_weight" || t.role == "bn_bias" || t.role == "linear_bias";
}

/// The weight decay of each of the parameters' values.
inline std::vector<float> decay_per_value(const tessera::plugin::Parameters& p, double weight_decay,
                                          bool exempt_bn_bias) {
    std::vector<float> decay(p.count, 0.f);
    for (auto& t : p.tensors)
        std::fill(decay.begin() + std::ptrdiff_t(t.offset), decay.begin() + std::ptrdiff_t(t.offset + t.size),
                  exempt_bn_bias && is_bn_or_bias(t) ? 0.f : float(weight_decay));
    return decay;
}

/// A user error: this build of `optimizer` has no step for `device` (a CPU-only build given "cuda").
[[noreturn]] inline void no_step_for(const std::string& optimizer, const std::string& device) {
    throw tessera::user_error("optimizer " + optimizer,
                              "this build of the plugin has no step for device \"" + device + "\"",
                              "rebuild tessera with -Dcuda=enabled");
}

}  // namespace tessera::plugins::optimizers
