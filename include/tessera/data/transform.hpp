#pragma once
// From a file's bytes to one training or validation sample, as torchvision's ImageNet recipe:
//   train: RandomResizedCrop(image_size, scale, ratio) + RandomHorizontalFlip()
//   val:   Resize(val_resize) + CenterCrop(val_crop)
// with PIL's bilinear antialiased resampling. With fast_decode, a JPEG is decoded at the smallest
// DCT scale that still leaves at least the output size inside the crop, and only the region the
// output needs (whose chroma upsampling at the edges can differ by a level or two). Without it,
// whole images are decoded at full size, which gives torchvision's pixels exactly.
#include <cmath>
#include <cstdint>
#include <span>

#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/data/augment.hpp"
#include "tessera/data/image.hpp"
#include "tessera/data/resample.hpp"

namespace tessera::data {

struct TransformConfig {
    int image_size = 224;  // training crops are image_size x image_size
    int val_resize = 256, val_crop = 224;
    double scale_min = 0.08, scale_max = 1.0;
    double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
    bool hflip = true;
    bool fast_decode = true;

    Size2 output(bool training) const { return training ? Size2{image_size, image_size} : Size2{val_crop, val_crop}; }
};

/// One per worker thread: it owns the decoder and the scratch buffers.
class ImageTransform {
public:
    /// A training sample: random crop, resized to image_size, maybe mirrored. Throws DecodeError.
    void train(std::span<const std::uint8_t> bytes, const TransformConfig& c, Rng& rng, std::uint8_t* out) {
        const ImageHeader h = decoder_.header(bytes);
        const CropBox crop =
            random_resized_crop(h.width, h.height, rng, c.scale_min, c.scale_max, c.ratio_min, c.ratio_max);
        const bool mirror = c.hflip && rng.coin();
        const int num = c.fast_decode
                            ? ImageDecoder::jpeg_scale_for(h, crop.width, crop.height, c.image_size, c.image_size)
                            : jpeg_scale_denominator;
        // The crop in (scaled) pixels and the whole pixels that cover it. At full size the crop is
        // its own image, as in torchvision: pixels at its edge are not blended with those outside.
        const double sx = double(jpeg_scaled(h.width, num)) / h.width,
                     sy = double(jpeg_scaled(h.height, num)) / h.height;
        const Box b{crop.x * sx, crop.y * sy, (crop.x + crop.width) * sx, (crop.y + crop.height) * sy};
        const Region covering{int(std::floor(b.x0)), int(std::floor(b.y0)),
                              int(std::ceil(b.x1)) - int(std::floor(b.x0)),
                              int(std::ceil(b.y1)) - int(std::floor(b.y0))};
        decoder_.decode(bytes, h, image_, num, c.fast_decode ? covering : Region{});
        const int x1 = std::min(covering.x + covering.width, image_.full_width);
        const int y1 = std::min(covering.y + covering.height, image_.full_height);
        RgbView v = view(covering.x, covering.y, x1 - covering.x, y1 - covering.y);
        v.x0 = v.y0 = v.image_width = v.image_height = 0;  // the covering region is the image the box refers to
        resampler_.resize(v, {b.x0 - covering.x, b.y0 - covering.y, b.x1 - covering.x, b.y1 - covering.y},
                          {c.image_size, c.image_size, 0, 0, c.image_size, c.image_size}, out,
                          std::size_t(c.image_size) * 3, mirror);
    }

    /// A validation sample: shorter side to val_resize, then the central val_crop square (with
    /// fast_decode, only the pixels that the square's resampling reads are decoded).
    void val(std::span<const std::uint8_t> bytes, const TransformConfig& c, std::uint8_t* out) {
        const ImageHeader h = decoder_.header(bytes);
        const Size2 resized = resize_shorter_side(h.width, h.height, c.val_resize);
        const int num = c.fast_decode
                            ? ImageDecoder::jpeg_scale_for(h, h.width, h.height, resized.width, resized.height)
                            : jpeg_scale_denominator;
        const int width = jpeg_scaled(h.width, num), height = jpeg_scaled(h.height, num);
        const CropBox crop = center_crop(resized.width, resized.height, c.val_crop);
        const ResizeWindow window{resized.width, resized.height, crop.x, crop.y, crop.width, crop.height};
        const Box whole{0, 0, double(width), double(height)};
        const Box need = Resampler::source_needed(width, height, whole, window);
        const Region region{int(need.x0), int(need.y0), int(need.x1 - need.x0), int(need.y1 - need.y0)};
        decoder_.decode(bytes, h, image_, num, c.fast_decode ? region : Region{});
        RgbView v = view(region.x, region.y, region.width, region.height);
        v.image_width = width;
        v.image_height = height;
        resampler_.resize(v, whole, window, out, std::size_t(c.val_crop) * 3);
    }

private:
    // Pixels [x, x + w) x [y, y + h) of the full (scaled) image, of which image_ holds a region.
    RgbView view(int x, int y, int w, int h) const {
        const std::size_t offset = (std::size_t(y - image_.y0) * image_.width + std::size_t(x - image_.x0)) * 3;
        return {image_.pixels.data() + offset,
                w,
                h,
                std::size_t(image_.width) * 3,
                x,
                y,
                image_.full_width,
                image_.full_height};
    }

    ImageDecoder decoder_;
    Resampler resampler_;
    Image image_;
};

}  // namespace tessera::data
