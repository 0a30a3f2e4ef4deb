#pragma once
// LossScaler: loss scaling for fp16 training, as torch.cuda.amp.GradScaler.
//
// fp16 holds nothing below 6e-8, and many of a network's gradients are smaller than that. The loss's
// gradient is multiplied by `scale` before backward, so that they survive the trip down in fp16, and
// the weights' gradients (fp32) are divided by it before anything uses them. Dynamic scaling starts
// high; a step whose gradients overflowed is skipped and the scale halves; after `window` good steps
// in a row it doubles. The scale stays a power of two, so scaling and unscaling are exact.
#include <cmath>
#include <cstdint>

#include "tessera/core/error.hpp"

namespace tessera::train {

struct LossScaleConfig {
    double initial = 0;  // 0: no scaling, or dynamic scaling from GradScaler's 65536
    bool dynamic = false;
    int window = 2000;  // good steps before the scale doubles (dynamic)
};

class LossScaler {
public:
    static constexpr double growth = 2, backoff = 0.5;
    static constexpr double dynamic_start = 65536;  // GradScaler's init_scale

    explicit LossScaler(LossScaleConfig config = {})
        : config_(config), scale_(config.initial > 0 ? config.initial
                                  : config.dynamic   ? dynamic_start
                                                     : 1) {
        if (config.initial < 0)
            throw user_error("[train] loss_scale", "must not be negative", "0 leaves the choice to the precision");
        if (config.dynamic && config.window < 1) throw user_error("[train] loss_scale_window", "must be at least 1");
    }

    bool active() const { return config_.initial > 0 || config_.dynamic; }
    bool dynamic() const { return config_.dynamic; }
    double scale() const { return scale_; }
    std::int64_t good_steps() const { return good_steps_; }

    /// After a step's gradients were checked: finite ones count towards growth, others halve the scale.
    void update(bool finite) {
        if (!config_.dynamic) return;
        if (!finite) {
            scale_ *= backoff;
            good_steps_ = 0;
        } else if (++good_steps_ >= config_.window) {
            scale_ *= growth;
            good_steps_ = 0;
        }
    }

    /// For resume: where the scale stood.
    void restore(double scale, std::int64_t good_steps) {
        if (!(scale > 0) || !std::isfinite(scale))
            throw user_error("training state", "holds a loss scale that is not a positive number");
        scale_ = scale;
        good_steps_ = good_steps;
    }

private:
    LossScaleConfig config_;
    double scale_;
    std::int64_t good_steps_ = 0;
};

}  // namespace tessera::train
