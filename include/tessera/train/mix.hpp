#pragma once
// Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a training batch, as timm's Mixup in
// its "batch" mode: one mixing weight per batch, image i paired with image N-1-i (the batch
// reversed), the loss lam * CE(y_i) + (1 - lam) * CE(y_{N-1-i}).
//   mixup:  x_i = lam * x_i + (1 - lam) * x_{N-1-i},   lam ~ Beta(mixup_alpha, mixup_alpha)
//   cutmix: a box of x_i is taken from x_{N-1-i};        lam = 1 - box area / image area
// With both on, each batch picks CutMix with probability switch_prob. The images are mixed in
// their uint8 form before normalisation and rounded, as timm's FastCollateMixup does: the rounding
// (at most half a grey level) is far below the augmentation's own changes.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/plugin/api.hpp"

namespace tessera::train {

struct MixConfig {
    double mixup_alpha = 0;    // 0: no mixup
    double cutmix_alpha = 0;   // 0: no cutmix
    double prob = 1;           // the share of batches mixed at all
    double switch_prob = 0.5;  // with both on: the share of mixed batches that use CutMix

    bool enabled() const { return (mixup_alpha > 0 || cutmix_alpha > 0) && prob > 0; }
};

/// What a batch's loss needs to know of its mixing: the partner labels and the weight of its own.
struct Mixing {
    bool active = false;
    float lam = 1;                      // weight of each image's own label
    std::vector<std::int32_t> partner;  // (N): the label of image N-1-i
};

/// log of a Gamma(shape, 1) draw (Marsaglia and Tsang 2000), from tessera's own generator so
/// that a resumed run draws the same numbers. Below shape 1 it uses Gamma(a) = Gamma(a + 1) *
/// U^(1/a) in logs: for a small shape U^(1/a) underflows to 0 in doubles (at a = 0.001, whenever
/// U < 0.49), while its log, log(U) / a, stays finite.
inline double log_gamma_draw(Rng& rng, double shape) {
    if (shape < 1) return log_gamma_draw(rng, shape + 1) + std::log(std::max(rng.uniform(), 1e-300)) / shape;
    const double d = shape - 1.0 / 3, c = 1 / std::sqrt(9 * d);
    for (;;) {
        double x, v;
        do {
            x = rng.normal();
            v = 1 + c * x;
        } while (v <= 0);
        v = v * v * v;
        const double u = rng.uniform();
        if (u < 1 - 0.0331 * x * x * x * x || std::log(std::max(u, 1e-300)) < 0.5 * x * x + d * (1 - v + std::log(v)))
            return std::log(d * v);
    }
}

/// A Beta(a, b) draw as X / (X + Y) with X ~ Gamma(a), Y ~ Gamma(b), computed from their logs as
/// 1 / (1 + exp(log Y - log X)): in [0, 1] and never 0/0, however small a and b.
inline double beta_draw(Rng& rng, double a, double b) {
    const double log_x = log_gamma_draw(rng, a), log_y = log_gamma_draw(rng, b);
    return 1 / (1 + std::exp(log_y - log_x));
}

/// Mixes `batch` in place with the generator given for it (derive it from the seed, epoch and
/// batch, so that the mixing does not depend on what ran before).
inline Mixing mix_batch(plugin::Batch& batch, const MixConfig& config, Rng& rng) {
    Mixing m;
    if (!config.enabled() || batch.count < 2 || rng.uniform() >= config.prob) return m;
    const bool cutmix = config.cutmix_alpha > 0 && (config.mixup_alpha <= 0 || rng.uniform() < config.switch_prob);
    const double alpha = cutmix ? config.cutmix_alpha : config.mixup_alpha;
    double lam = beta_draw(rng, alpha, alpha);
    const int n = batch.count, h = batch.height, w = batch.width, c = batch.channels;
    const std::size_t image = std::size_t(h) * w * c;
    std::uint8_t* pixels = batch.pixels.data();
    if (cutmix) {
        // timm's rand_bbox: a box of the side ratio sqrt(1 - lam) centred anywhere, clipped to the image.
        const double cut = std::sqrt(1 - lam);
        const int cut_h = int(h * cut), cut_w = int(w * cut);
        const int cy = int(rng.below(std::uint64_t(h))), cx = int(rng.below(std::uint64_t(w)));
        const int y0 = std::clamp(cy - cut_h / 2, 0, h), y1 = std::clamp(cy + cut_h / 2, 0, h);
        const int x0 = std::clamp(cx - cut_w / 2, 0, w), x1 = std::clamp(cx + cut_w / 2, 0, w);
        lam = 1 - double(y1 - y0) * (x1 - x0) / (double(h) * w);
        const std::size_t row = std::size_t(x1 - x0) * c;
        for (int i = 0; i < n / 2; ++i) {  // swap the box between the pair
            std::uint8_t* a = pixels + std::size_t(i) * image;
            std::uint8_t* b = pixels + std::size_t(n - 1 - i) * image;
            for (int y = y0; y < y1; ++y)
                std::swap_ranges(a + (std::size_t(y) * w + x0) * c, a + (std::size_t(y) * w + x0) * c + row,
                                 b + (std::size_t(y) * w + x0) * c);
        }
    } else {
        const float own = float(lam), other = 1 - own;
        for (int i = 0; i < n / 2; ++i) {
            std::uint8_t* a = pixels + std::size_t(i) * image;
            std::uint8_t* b = pixels + std::size_t(n - 1 - i) * image;
            for (std::size_t k = 0; k < image; ++k) {
                const float pa = a[k], pb = b[k];
                a[k] = std::uint8_t(std::lrint(own * pa + other * pb));
                b[k] = std::uint8_t(std::lrint(own * pb + other * pa));
            }
        }
    }
    m.active = true;
    m.lam = float(lam);
    m.partner.resize(std::size_t(n));
    for (int i = 0; i < n; ++i) m.partner[std::size_t(i)] = batch.labels[std::size_t(n - 1 - i)];
    return m;
}

}  // namespace tessera::train
