#pragma once
// Augmentations on uint8 HWC images, as torchvision's transforms for small images:
// RandomCrop(size, padding=p) with zero padding, and RandomHorizontalFlip(0.5).
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
            if (sy < 0 || sy >= h || sx < 0 || sx >= w) std::memset(out, 0, c);
            else std::memcpy(out, src + (std::size_t(sy) * w + sx) * c, c);
        }
    }
}

}  // namespace tessera::data
