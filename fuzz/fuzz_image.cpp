// The image decoders on any bytes: format sniffing, headers, JPEG through libjpeg-turbo (whole, at
// reduced DCT scales, and in regions), PNG/GIF/BMP/PNM through stb_image, and the validation
// transform after them. Each must decode or throw DecodeError, and never claim more memory than the
// limits allow.
#include "tessera/data/image.hpp"
#include "tessera/data/transform.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static tessera::data::ImageDecoder decoder;
    static tessera::data::ImageTransform transform;
    static std::vector<std::uint8_t> pixels(32 * 32 * 3);
    const std::span<const std::uint8_t> bytes(data, size);
    try {
        const tessera::data::ImageHeader h = decoder.header(bytes);
        tessera::data::Image image;
        decoder.decode(bytes, h, image);
        // A region and a reduced scale, chosen by the image's own size.
        const tessera::data::Region region{h.width / 3, h.height / 4, std::max(1, h.width / 2),
                                           std::max(1, h.height / 2)};
        decoder.decode(bytes, h, image, 2, region);
    } catch (const tessera::data::DecodeError&) {}
    try {
        transform.val(std::vector<std::uint8_t>(data, data + size),
                      {.image_size = 32, .val_resize = 36, .val_crop = 32}, pixels.data());
    } catch (const tessera::data::DecodeError&) {}
    return 0;
}
