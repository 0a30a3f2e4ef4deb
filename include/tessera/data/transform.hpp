#pragma once
// From a file's bytes to one training or validation sample, as torchvision's ImageNet recipe:
//   train: RandomResizedCrop(image_size, scale, ratio) + RandomHorizontalFlip()
//   val:   Resize(val_resize) + CenterCrop(val_crop)
// with PIL's bilinear antialiased resampling. A JPEG is decoded at the smallest DCT scale that still
// leaves at least the output size inside the crop (dct_scaling = false decodes at full size, which
// gives torchvision's pixels exactly).
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
    int image_size = 224;              // training crops are image_size x image_size
    int val_resize = 256, val_crop = 224;
    double scale_min = 0.08, scale_max = 1.0;
    double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
    bool hflip = true;
    bool dct_scaling = true;

    Size2 output(bool training) const { return training ? Size2{image_size, image_size} : Size2{val_crop, val_crop}; }
};

/// One per worker thread: it owns the decoder and the scratch buffers.
class ImageTransform {
public:
    /// A training sample: random crop, resized to image_size, maybe mirrored. Throws DecodeError.
    void train(std::span<const std::uint8_t> bytes, const TransformConfig& c, Rng& rng, std::uint8_t* out) {
        const ImageHeader h = decoder_.header(bytes);
        const CropBox crop = random_resized_crop(h.width, h.height, rng, c.scale_min, c.scale_max, c.ratio_min, c.ratio_max);
        const bool mirror = c.hflip && rng.coin();
        const int num = c.dct_scaling ? ImageDecoder::jpeg_scale_for(h, crop.width, crop.height, c.image_size, c.image_size)
                                      : jpeg_scale_denominator;
        decoder_.decode(bytes, image_, num);
        const ResizeWindow all{c.image_size, c.image_size, 0, 0, c.image_size, c.image_size};
        if (image_.width == h.width && image_.height == h.height) {
            // Full size: crop, then resize the crop, exactly as torchvision (pixels at the crop's
            // edge are not blended with those outside it).
            resampler_.resize(view(crop.x, crop.y, crop.width, crop.height), {0, 0, double(crop.width), double(crop.height)},
                              all, out, std::size_t(c.image_size) * 3, mirror);
            return;
        }
        // Scaled: the crop in scaled pixels, within the whole pixels that cover it.
        const double sx = double(image_.width) / h.width, sy = double(image_.height) / h.height;
        const Box b{crop.x * sx, crop.y * sy, (crop.x + crop.width) * sx, (crop.y + crop.height) * sy};
        const int x0 = int(std::floor(b.x0)), y0 = int(std::floor(b.y0));
        const int x1 = std::min(int(std::ceil(b.x1)), image_.width), y1 = std::min(int(std::ceil(b.y1)), image_.height);
        resampler_.resize(view(x0, y0, x1 - x0, y1 - y0), {b.x0 - x0, b.y0 - y0, b.x1 - x0, b.y1 - y0}, all, out,
                          std::size_t(c.image_size) * 3, mirror);
    }

    /// A validation sample: shorter side to val_resize, then the central val_crop square.
    void val(std::span<const std::uint8_t> bytes, const TransformConfig& c, std::uint8_t* out) {
        const ImageHeader h = decoder_.header(bytes);
        const Size2 resized = resize_shorter_side(h.width, h.height, c.val_resize);
        const int num = c.dct_scaling ? ImageDecoder::jpeg_scale_for(h, h.width, h.height, resized.width, resized.height)
                                      : jpeg_scale_denominator;
        decoder_.decode(bytes, image_, num);
        const CropBox crop = center_crop(resized.width, resized.height, c.val_crop);
        resampler_.resize(view(0, 0, image_.width, image_.height), {0, 0, double(image_.width), double(image_.height)},
                          {resized.width, resized.height, crop.x, crop.y, crop.width, crop.height}, out,
                          std::size_t(c.val_crop) * 3);
    }

    /// The whole image, decoded (for tools that re-encode it).
    const Image& decode(std::span<const std::uint8_t> bytes, int scale_num = jpeg_scale_denominator) {
        decoder_.decode(bytes, image_, scale_num);
        return image_;
    }

    ImageDecoder& decoder() { return decoder_; }

private:
    RgbView view(int x, int y, int w, int h) const {
        return {image_.pixels.data() + (std::size_t(y) * image_.width + x) * 3, w, h, std::size_t(image_.width) * 3};
    }

    ImageDecoder decoder_;
    Resampler resampler_;
    Image image_;
};

}  // namespace tessera::data
