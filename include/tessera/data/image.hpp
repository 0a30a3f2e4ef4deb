#pragma once
// Decoding image files into 8-bit RGB, as PIL's Image.open(f).convert("RGB") does.
//
// The format comes from the bytes, never from the name: ImageNet holds a PNG and CMYK JPEGs named
// .JPEG. JPEG goes through libjpeg-turbo (TurboJPEG), which can decode in the DCT domain at 1/8 to
// 8/8 of the full size: a crop that ends at 224 pixels rarely needs every pixel of a 4000x3000
// photograph. Everything else goes through stb_image. Grayscale and CMYK become RGB with PIL's
// formulas, so that a network trained here sees the pixels torchvision's users see.
//
// Needs libturbojpeg and stb (`dependency('libturbojpeg')`, `dependency('stb')` in meson).
#include <turbojpeg.h>
#include <stb_image.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <span>
#include <stdexcept>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera::data {

enum class ImageFormat { unknown, jpeg, png, gif, bmp, pnm, psd, webp };

inline const char* format_name(ImageFormat f) {
    switch (f) {
        case ImageFormat::jpeg: return "JPEG";
        case ImageFormat::png: return "PNG";
        case ImageFormat::gif: return "GIF";
        case ImageFormat::bmp: return "BMP";
        case ImageFormat::pnm: return "PNM";
        case ImageFormat::psd: return "PSD";
        case ImageFormat::webp: return "WebP";
        default: return "unknown";
    }
}

/// The format the file's first bytes announce.
inline ImageFormat sniff_format(std::span<const std::uint8_t> b) {
    auto starts = [&](std::initializer_list<int> magic, std::size_t at = 0) {
        if (b.size() < at + magic.size()) return false;
        std::size_t i = at;
        for (int m : magic)
            if (b[i++] != m) return false;
        return true;
    };
    if (starts({0xFF, 0xD8, 0xFF})) return ImageFormat::jpeg;
    if (starts({0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'})) return ImageFormat::png;
    if (starts({'G', 'I', 'F', '8'})) return ImageFormat::gif;
    if (starts({'B', 'M'}) && b.size() >= 26) return ImageFormat::bmp;
    if (b.size() >= 3 && b[0] == 'P' && b[1] >= '5' && b[1] <= '6' && std::isspace(b[2])) return ImageFormat::pnm;
    if (starts({'8', 'B', 'P', 'S'})) return ImageFormat::psd;
    if (starts({'R', 'I', 'F', 'F'}) && starts({'W', 'E', 'B', 'P'}, 8)) return ImageFormat::webp;
    return ImageFormat::unknown;
}

/// An 8-bit RGB image, rows packed: pixel (y, x) channel c at pixels[(y * width + x) * 3 + c].
struct Image {
    int width = 0, height = 0;
    std::vector<std::uint8_t> pixels;
    const std::uint8_t* row(int y) const { return pixels.data() + std::size_t(y) * width * 3; }
};

/// What a file holds, read from its header alone.
struct ImageHeader {
    ImageFormat format = ImageFormat::unknown;
    int width = 0, height = 0;
};

/// Why a file could not be decoded; the data sources report it with the path and move on.
struct DecodeError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

/// The most an image may claim, checked before anything is allocated: 30000 pixels a side, 2^28 in all
/// (ImageNet's largest is 7056x4488).
inline constexpr int max_image_side = 30000;
inline constexpr std::int64_t max_image_pixels = std::int64_t(1) << 28;

/// JPEG's DCT-domain scale factors at or below full size, largest first: num / 8.
inline constexpr int jpeg_scale_denominator = 8;

/// Scaled size as libjpeg computes it: ceil(size * num / 8).
inline int jpeg_scaled(int size, int num) { return (size * num + jpeg_scale_denominator - 1) / jpeg_scale_denominator; }

/// Decodes images; one per thread (it holds a TurboJPEG handle and reuses its buffers).
class ImageDecoder {
public:
    ImageDecoder() : jpeg_(tjInitDecompress()) {
        if (!jpeg_) throw internal_error("tjInitDecompress", tjGetErrorStr2(nullptr));
    }
    ~ImageDecoder() { tjDestroy(jpeg_); }
    ImageDecoder(const ImageDecoder&) = delete;
    ImageDecoder& operator=(const ImageDecoder&) = delete;

    /// The format and size, from the header; throws DecodeError for what is not a supported image.
    ImageHeader header(std::span<const std::uint8_t> bytes) {
        ImageHeader h{sniff_format(bytes)};
        if (bytes.empty()) throw DecodeError("empty file");
        if (h.format == ImageFormat::jpeg) {
            int subsampling = 0;
            if (tjDecompressHeader3(jpeg_, bytes.data(), bytes.size(), &h.width, &h.height, &subsampling, &jpeg_colorspace_) != 0)
                throw DecodeError(std::string("not a readable JPEG: ") + tjGetErrorStr2(jpeg_));
        } else if (h.format == ImageFormat::unknown) {
            throw DecodeError("not an image (the first bytes are not those of JPEG, PNG, GIF, BMP, PNM or PSD)");
        } else if (h.format == ImageFormat::webp) {
            throw DecodeError("WebP is not supported; convert it to JPEG or PNG");
        } else {
            int channels = 0;
            if (!stbi_info_from_memory(bytes.data(), int(bytes.size()), &h.width, &h.height, &channels))
                throw DecodeError(std::string("not a readable ") + format_name(h.format) + ": " + stbi_failure_reason());
        }
        if (h.width <= 0 || h.height <= 0 || h.width > max_image_side || h.height > max_image_side ||
            std::int64_t(h.width) * h.height > max_image_pixels)
            throw DecodeError("implausible size " + std::to_string(h.width) + "x" + std::to_string(h.height) +
                              " (at most " + std::to_string(max_image_side) + " pixels a side)");
        return h;
    }

    /// The smallest DCT scale (num / 8) at which a region_width x region_height part of the image
    /// still spans at least min_width x min_height pixels; 8 (full size) for formats other than JPEG.
    static int jpeg_scale_for(const ImageHeader& h, double region_width, double region_height, double min_width,
                              double min_height) {
        if (h.format != ImageFormat::jpeg) return jpeg_scale_denominator;
        for (int num : {1, 2, 4}) {  // the factors with SIMD IDCTs in libjpeg-turbo; others decode slower than 8/8
            const double sx = double(jpeg_scaled(h.width, num)) / h.width, sy = double(jpeg_scaled(h.height, num)) / h.height;
            if (region_width * sx >= min_width && region_height * sy >= min_height) return num;
        }
        return jpeg_scale_denominator;
    }

    /// Decodes to RGB at scale num / 8 (JPEG only; other formats at full size). Throws DecodeError.
    void decode(std::span<const std::uint8_t> bytes, Image& out, int scale_num = jpeg_scale_denominator) {
        const ImageHeader h = header(bytes);
        if (h.format == ImageFormat::jpeg) decode_jpeg(bytes, h, scale_num, out);
        else decode_stb(bytes, out);
    }

private:
    void decode_jpeg(std::span<const std::uint8_t> bytes, const ImageHeader& h, int scale_num, Image& out) {
        out.width = jpeg_scaled(h.width, scale_num);
        out.height = jpeg_scaled(h.height, scale_num);
        const bool cmyk = jpeg_colorspace_ == TJCS_CMYK || jpeg_colorspace_ == TJCS_YCCK;
        const int format = cmyk ? TJPF_CMYK : TJPF_RGB;
        const int channels = cmyk ? 4 : 3;
        std::vector<std::uint8_t>& target = cmyk ? cmyk_ : out.pixels;
        target.resize(std::size_t(out.width) * out.height * channels);
        // A truncated file only warns in libjpeg (it fills the rest with grey); PIL refuses it unless
        // told to LOAD_TRUNCATED_IMAGES, and so does this decoder: the data source reports and skips it.
        const int rc = tjDecompress2(jpeg_, bytes.data(), bytes.size(), target.data(), out.width, 0, out.height, format,
                                     TJFLAG_STOPONWARNING);
        if (rc != 0) throw DecodeError(std::string("damaged JPEG: ") + tjGetErrorStr2(jpeg_));
        if (cmyk) cmyk_to_rgb(adobe_inverted(bytes), out);
    }

    // PIL reads Adobe CMYK JPEGs as inverted ("CMYK;I") and converts with R = (255 - K) * (255 - C) / 255.
    void cmyk_to_rgb(bool inverted, Image& out) {
        const std::size_t n = std::size_t(out.width) * out.height;
        out.pixels.resize(n * 3);
        const std::uint8_t flip = inverted ? 255 : 0;
        for (std::size_t i = 0; i < n; ++i) {
            const int k = 255 - (cmyk_[4 * i + 3] ^ flip);
            for (int c = 0; c < 3; ++c) {
                const int t = (cmyk_[4 * i + c] ^ flip) * k + 128;
                out.pixels[3 * i + c] = std::uint8_t(std::clamp(k - (((t >> 8) + t) >> 8), 0, 255));
            }
        }
    }

    // Whether the JPEG carries an Adobe APP14 segment (Photoshop writes CMYK inverted under it).
    static bool adobe_inverted(std::span<const std::uint8_t> b) {
        std::size_t i = 2;
        while (i + 4 <= b.size() && b[i] == 0xFF) {
            const int marker = b[i + 1];
            if (marker == 0xDA || marker == 0xD9) break;  // start of scan, end of image
            const std::size_t length = std::size_t(b[i + 2]) << 8 | b[i + 3];
            if (marker == 0xEE && length >= 7 && i + 9 <= b.size() && std::equal(b.begin() + i + 4, b.begin() + i + 9, "Adobe"))
                return true;
            i += 2 + length;
        }
        return false;
    }

    static void decode_stb(std::span<const std::uint8_t> bytes, Image& out) {
        int channels = 0;
        stbi_uc* rgb = stbi_load_from_memory(bytes.data(), int(bytes.size()), &out.width, &out.height, &channels, 3);
        if (!rgb) throw DecodeError(std::string("damaged ") + format_name(sniff_format(bytes)) + ": " + stbi_failure_reason());
        out.pixels.assign(rgb, rgb + std::size_t(out.width) * out.height * 3);
        stbi_image_free(rgb);
    }

    tjhandle jpeg_;
    int jpeg_colorspace_ = TJCS_RGB;  // of the last header read
    std::vector<std::uint8_t> cmyk_;
};

}  // namespace tessera::data
