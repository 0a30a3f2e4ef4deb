#pragma once
// Augmentations with torchvision's semantics. For small images on uint8 HWC: RandomCrop(size,
// padding=p) with zero padding and RandomHorizontalFlip(0.5). For photographs: the crop boxes of
// RandomResizedCrop and of Resize + CenterCrop; resample.hpp turns a box into pixels.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "tessera/core/rng.hpp"

namespace tessera::data {

/// Copies `src` (h, w, c) into `dst` (h, w, c) shifted by a random offset within `padding` pixels,
/// zero where the shifted window leaves the image, mirrored left-right if `flip`.
inline void random_crop_flip(const std::uint8_t* src, std::uint8_t* dst, int h, int w, int c, int padding, bool flip,
                             Rng& rng) {
    const int dy = padding ? int(rng.below(2 * padding + 1)) - padding : 0;
    const int dx = padding ? int(rng.below(2 * padding + 1)) - padding : 0;
    const bool mirror = flip && rng.coin();
    for (int y = 0; y < h; ++y) {
        const int sy = y + dy;
        for (int x = 0; x < w; ++x) {
            const int sx = (mirror ? w - 1 - x : x) + dx;
            std::uint8_t* out = dst + (std::size_t(y) * w + x) * c;
            if (sy < 0 || sy >= h || sx < 0 || sx >= w)
                std::memset(out, 0, c);
            else
                std::memcpy(out, src + (std::size_t(sy) * w + sx) * c, c);
        }
    }
}

/// A crop in whole source pixels: top-left corner and size.
struct CropBox {
    int x = 0, y = 0, width = 0, height = 0;
};

/// Python's round(): halves go to the even neighbour (std::nearbyint in the default rounding mode).
inline int round_half_even(double v) { return int(std::nearbyint(v)); }

/// torchvision's RandomResizedCrop.get_params: ten tries at an area fraction in [scale_min, scale_max]
/// and a log-uniform aspect ratio in [ratio_min, ratio_max]; if none fits, the largest central crop
/// with an aspect ratio in range.
inline CropBox random_resized_crop(int width, int height, Rng& rng, double scale_min = 0.08, double scale_max = 1.0,
                                   double ratio_min = 3.0 / 4.0, double ratio_max = 4.0 / 3.0) {
    const double area = double(width) * height;
    const double log_lo = std::log(ratio_min), log_hi = std::log(ratio_max);
    for (int attempt = 0; attempt < 10; ++attempt) {
        const double target = area * rng.uniform(scale_min, scale_max);
        const double aspect = std::exp(rng.uniform(log_lo, log_hi));
        const int w = round_half_even(std::sqrt(target * aspect));
        const int h = round_half_even(std::sqrt(target / aspect));
        if (w > 0 && w <= width && h > 0 && h <= height)
            return {int(rng.below(std::uint64_t(width - w + 1))), int(rng.below(std::uint64_t(height - h + 1))), w, h};
    }
    const double in_ratio = double(width) / height;
    int w = width, h = height;
    if (in_ratio < ratio_min)
        h = round_half_even(w / ratio_min);
    else if (in_ratio > ratio_max)
        w = round_half_even(h * ratio_max);
    return {(width - w) / 2, (height - h) / 2, w, h};
}

/// torchvision's Resize(shorter) on a width x height image: the shorter side becomes `shorter`, the
/// longer one int(shorter * long / short).
struct Size2 {
    int width = 0, height = 0;
};
inline Size2 resize_shorter_side(int width, int height, int shorter) {
    if (width <= height) return {shorter, int(double(shorter) * height / width)};
    return {int(double(shorter) * width / height), shorter};
}

/// torchvision's CenterCrop(crop) of a width x height image (which must be at least crop x crop):
/// the offsets round half to even, as Python's round() does.
inline CropBox center_crop(int width, int height, int crop) {
    return {round_half_even((width - crop) / 2.0), round_half_even((height - crop) / 2.0), crop, crop};
}

}  // namespace tessera::data
