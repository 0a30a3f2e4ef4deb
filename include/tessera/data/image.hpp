#pragma once
// Decoding image files into 8-bit RGB, as PIL's Image.open(f).convert("RGB") does.
//
// The format comes from the bytes, never from the name: ImageNet holds a PNG and CMYK JPEGs named
// .JPEG. JPEG goes through libjpeg-turbo's libjpeg API, which does two things PIL does not ask of
// it: decode in the DCT domain at 1/8, 1/4 or 1/2 of the full size (a crop that ends at 224 pixels
// rarely needs every pixel of a 4000x3000 photograph), and decode only a region (the rows above a
// crop are entropy-decoded and dropped, the columns beside it and the rows below it are never
// reconstructed). Everything else goes through stb_image. Grayscale and CMYK become RGB with PIL's
// formulas, so that a network trained here sees the pixels torchvision's users see.
//
// Encoding (runner prepare) goes through TurboJPEG.
//
// Needs libjpeg-turbo and stb: `dependency('libjpeg')`, `dependency('libturbojpeg')`,
// `dependency('stb')` in meson.
#include <csetjmp>
#include <cstddef>
#include <cstdio>

#include <jpeglib.h>
#include <jerror.h>
#include <stb_image.h>
#include <turbojpeg.h>

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
        case ImageFormat::jpeg:
            return "JPEG";
        case ImageFormat::png:
            return "PNG";
        case ImageFormat::gif:
            return "GIF";
        case ImageFormat::bmp:
            return "BMP";
        case ImageFormat::pnm:
            return "PNM";
        case ImageFormat::psd:
            return "PSD";
        case ImageFormat::webp:
            return "WebP";
        default:
            return "unknown";
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
/// It may be a region of a larger picture: the one at (x0, y0) of a full_width x full_height image
/// (the full image scaled, when JPEG's DCT scaling was used). `pixels` may hold a byte of slack
/// after the last pixel.
struct Image {
    int width = 0, height = 0;
    std::vector<std::uint8_t> pixels;
    int x0 = 0, y0 = 0, full_width = 0, full_height = 0;
    const std::uint8_t* row(int y) const { return pixels.data() + std::size_t(y) * width * 3; }
};

/// A rectangle of pixels to decode: x, y, width, height (width 0: the whole image).
struct Region {
    int x = 0, y = 0, width = 0, height = 0;
};

/// What a file holds, read from its header alone.
struct ImageHeader {
    ImageFormat format = ImageFormat::unknown;
    int width = 0, height = 0;
    bool cmyk = false;  // a CMYK or YCCK JPEG
};

/// Why a file could not be decoded; the data sources report it with the path and move on.
struct DecodeError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
/// An image whose header claims more pixels than the limits below (the server answers 413).
struct ImageTooLarge : DecodeError {
    using DecodeError::DecodeError;
};

/// The most an image may claim, checked before anything is allocated: 30000 pixels a side, 2^28 in all
/// (ImageNet's largest is 7056x4488).
inline constexpr int max_image_side = 30000;
inline constexpr std::int64_t max_image_pixels = std::int64_t(1) << 28;

/// JPEG's DCT-domain scale factors are num / 8.
inline constexpr int jpeg_scale_denominator = 8;

/// Scaled size as libjpeg computes it: ceil(size * num / 8).
inline int jpeg_scaled(int size, int num) { return (size * num + jpeg_scale_denominator - 1) / jpeg_scale_denominator; }

namespace detail {

// libjpeg reports errors through callbacks that must not return; this one jumps back to the
// decoder with the message. Only "premature end of file" among the warnings means damage (PIL
// refuses such files too); the others (extraneous bytes before a marker) PIL decodes, and so do we.
struct JpegErrors {
    jpeg_error_mgr manager;
    std::jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
};

inline void jpeg_fail(j_common_ptr c) {
    auto* e = reinterpret_cast<JpegErrors*>(c->err);
    (*c->err->format_message)(c, e->message);
    std::longjmp(e->jump, 1);
}

inline void jpeg_warn(j_common_ptr c, int level) {
    if (level < 0 && c->err->msg_code == JWRN_JPEG_EOF) jpeg_fail(c);
}

}  // namespace detail

/// Decodes images; one per thread (it holds a libjpeg decompressor and reuses its buffers).
class ImageDecoder {
public:
    ImageDecoder() {
        jpeg_.err = jpeg_std_error(&errors_.manager);
        errors_.manager.error_exit = detail::jpeg_fail;
        errors_.manager.emit_message = detail::jpeg_warn;
        jpeg_create_decompress(&jpeg_);
    }
    ~ImageDecoder() { jpeg_destroy_decompress(&jpeg_); }
    ImageDecoder(const ImageDecoder&) = delete;
    ImageDecoder& operator=(const ImageDecoder&) = delete;

    /// The format and size, from the header; throws DecodeError for what is not a supported image.
    ImageHeader header(std::span<const std::uint8_t> bytes) {
        ImageHeader h{sniff_format(bytes)};
        if (bytes.empty()) throw DecodeError("empty file");
        if (h.format == ImageFormat::jpeg) {
            if (!jpeg_header(bytes, h)) throw DecodeError(std::string("not a readable JPEG: ") + errors_.message);
        } else if (h.format == ImageFormat::unknown) {
            throw DecodeError("not an image (the first bytes are not those of JPEG, PNG, GIF, BMP, PNM or PSD)");
        } else if (h.format == ImageFormat::webp) {
            throw DecodeError("WebP is not supported; convert it to JPEG or PNG");
        } else {
            int channels = 0;
            if (!stbi_info_from_memory(bytes.data(), int(bytes.size()), &h.width, &h.height, &channels))
                throw DecodeError(std::string("not a readable ") + format_name(h.format) + ": " +
                                  stbi_failure_reason());
            if (h.format == ImageFormat::pnm) check_pnm_size(bytes);
        }
        if (h.width <= 0 || h.height <= 0 || h.width > max_image_side || h.height > max_image_side ||
            std::int64_t(h.width) * h.height > max_image_pixels)
            throw ImageTooLarge("implausible size " + std::to_string(h.width) + "x" + std::to_string(h.height) +
                                " (at most " + std::to_string(max_image_side) + " pixels a side)");
        return h;
    }

    /// The smallest DCT scale (num / 8) at which a region_width x region_height part of the image
    /// still spans at least min_width x min_height pixels; 8 (full size) for formats other than JPEG.
    static int jpeg_scale_for(const ImageHeader& h, double region_width, double region_height, double min_width,
                              double min_height) {
        if (h.format != ImageFormat::jpeg) return jpeg_scale_denominator;
        for (int num : {1, 2, 4}) {  // the factors with SIMD IDCTs in libjpeg-turbo; others decode slower than 8/8
            const double sx = double(jpeg_scaled(h.width, num)) / h.width,
                         sy = double(jpeg_scaled(h.height, num)) / h.height;
            if (region_width * sx >= min_width && region_height * sy >= min_height) return num;
        }
        return jpeg_scale_denominator;
    }

    /// Decodes to RGB at scale num / 8 (JPEG only; other formats at full size), only `region` (in
    /// scaled pixels; JPEG only, others decode whole) or all of it. The result may extend a few
    /// columns left of the region (JPEG decodes whole blocks): out.x0, out.y0 say where it starts.
    /// Throws DecodeError.
    void decode(std::span<const std::uint8_t> bytes, Image& out, int scale_num = jpeg_scale_denominator,
                Region region = {}) {
        decode(bytes, header(bytes), out, scale_num, region);
    }

    /// The same, for bytes whose header() the caller has read already (it is not read again).
    void decode(std::span<const std::uint8_t> bytes, const ImageHeader& h, Image& out,
                int scale_num = jpeg_scale_denominator, Region region = {}) {
        if (h.format != ImageFormat::jpeg) return decode_stb(bytes, out);
        if (!decode_jpeg(bytes, scale_num, region, out))
            throw DecodeError(std::string("damaged JPEG: ") + errors_.message);
        if (cmyk_) cmyk_to_rgb(adobe_, out);
    }

private:
    // The functions that can long-jump hold only trivially destructible locals.
    bool jpeg_header(std::span<const std::uint8_t> bytes, ImageHeader& h) {
        if (setjmp(errors_.jump)) {
            jpeg_abort_decompress(&jpeg_);
            return false;
        }
        jpeg_mem_src(&jpeg_, bytes.data(), static_cast<unsigned long>(bytes.size()));
        jpeg_read_header(&jpeg_, TRUE);
        h.width = int(jpeg_.image_width);
        h.height = int(jpeg_.image_height);
        h.cmyk = jpeg_.jpeg_color_space == JCS_CMYK || jpeg_.jpeg_color_space == JCS_YCCK;
        jpeg_abort_decompress(&jpeg_);
        return true;
    }

    bool decode_jpeg(std::span<const std::uint8_t> bytes, int scale_num, Region region, Image& out) {
        if (setjmp(errors_.jump)) {
            jpeg_abort_decompress(&jpeg_);
            return false;
        }
        jpeg_mem_src(&jpeg_, bytes.data(), static_cast<unsigned long>(bytes.size()));
        jpeg_read_header(&jpeg_, TRUE);
        cmyk_ = jpeg_.jpeg_color_space == JCS_CMYK || jpeg_.jpeg_color_space == JCS_YCCK;
        adobe_ = jpeg_.saw_Adobe_marker;
        jpeg_.out_color_space = cmyk_ ? JCS_CMYK : JCS_RGB;
        jpeg_.scale_num = unsigned(scale_num);
        jpeg_.scale_denom = jpeg_scale_denominator;
        jpeg_start_decompress(&jpeg_);
        out.full_width = int(jpeg_.output_width);
        out.full_height = int(jpeg_.output_height);
        if (region.width <= 0 || region.height <= 0) region = {0, 0, out.full_width, out.full_height};
        region.x = std::clamp(region.x, 0, out.full_width - 1);
        region.y = std::clamp(region.y, 0, out.full_height - 1);
        region.width = std::min(region.width, out.full_width - region.x);
        region.height = std::min(region.height, out.full_height - region.y);
        JDIMENSION x0 = JDIMENSION(region.x), width = JDIMENSION(region.width);
        if (width < jpeg_.output_width) jpeg_crop_scanline(&jpeg_, &x0, &width);
        if (region.y > 0) jpeg_skip_scanlines(&jpeg_, JDIMENSION(region.y));
        out.x0 = int(x0);
        out.y0 = region.y;
        out.width = int(width);
        out.height = region.height;
        const std::size_t stride = std::size_t(width) * jpeg_.output_components;
        std::vector<std::uint8_t>& target = cmyk_ ? cmyk_pixels_ : out.pixels;
        target.resize(stride * out.height + 1);  // one byte of slack: the resampler reads pixels as four bytes
        while (jpeg_.output_scanline < JDIMENSION(region.y + region.height)) {
            JSAMPROW rows[16];
            const JDIMENSION done = jpeg_.output_scanline - JDIMENSION(region.y);
            const JDIMENSION want = std::min<JDIMENSION>(16, JDIMENSION(region.height) - done);
            for (JDIMENSION r = 0; r < want; ++r) rows[r] = target.data() + (done + r) * stride;
            jpeg_read_scanlines(&jpeg_, rows, want);
        }
        jpeg_abort_decompress(&jpeg_);  // the rows below the region are never decoded
        return true;
    }

    // PIL reads Adobe CMYK JPEGs as inverted ("CMYK;I") and converts with R = (255 - K) * (255 - C) / 255.
    void cmyk_to_rgb(bool inverted, Image& out) {
        const std::size_t n = std::size_t(out.width) * out.height;
        out.pixels.resize(n * 3 + 1);
        const std::uint8_t flip = inverted ? 255 : 0;
        for (std::size_t i = 0; i < n; ++i) {
            const int k = 255 - (cmyk_pixels_[4 * i + 3] ^ flip);
            for (int c = 0; c < 3; ++c) {
                const int t = (cmyk_pixels_[4 * i + c] ^ flip) * k + 128;
                out.pixels[3 * i + c] = std::uint8_t(std::clamp(k - (((t >> 8) + t) >> 8), 0, 255));
            }
        }
    }

    // A binary PNM (P5, P6) must hold the pixels its header promises: stb_image's reader of 16-bit
    // PNM reads past the end of a file that does not (found by fuzzing).
    static void check_pnm_size(std::span<const std::uint8_t> bytes) {
        std::size_t pos = 2;
        auto number = [&]() -> std::uint64_t {
            for (;;) {  // whitespace and comments before the number
                while (pos < bytes.size() && std::isspace(bytes[pos])) ++pos;
                if (pos < bytes.size() && bytes[pos] == '#')
                    while (pos < bytes.size() && bytes[pos] != '\n') ++pos;
                else
                    break;
            }
            std::uint64_t v = 0;
            const std::size_t start = pos;
            while (pos < bytes.size() && std::isdigit(bytes[pos]) && v < (std::uint64_t(1) << 32))
                v = v * 10 + (bytes[pos++] - '0');
            if (pos == start) throw DecodeError("damaged PNM header");
            return v;
        };
        const std::uint64_t width = number(), height = number(), maxval = number();
        ++pos;  // the one whitespace byte before the pixels
        const std::uint64_t channels = bytes[1] == '6' ? 3 : 1, sample = maxval > 255 ? 2 : 1;
        if (width > std::uint64_t(max_image_side) || height > std::uint64_t(max_image_side) || pos > bytes.size() ||
            bytes.size() - pos < width * height * channels * sample)
            throw DecodeError("truncated PNM: its header promises " + std::to_string(width) + "x" +
                              std::to_string(height) + " pixels that the file does not hold");
    }

    static void decode_stb(std::span<const std::uint8_t> bytes, Image& out) {
        int channels = 0;
        stbi_uc* rgb = stbi_load_from_memory(bytes.data(), int(bytes.size()), &out.width, &out.height, &channels, 3);
        if (!rgb)
            throw DecodeError(std::string("damaged ") + format_name(sniff_format(bytes)) + ": " +
                              stbi_failure_reason());
        out.pixels.assign(rgb, rgb + std::size_t(out.width) * out.height * 3);
        out.pixels.push_back(0);
        out.x0 = out.y0 = 0;
        out.full_width = out.width;
        out.full_height = out.height;
        stbi_image_free(rgb);
    }

    jpeg_decompress_struct jpeg_{};
    detail::JpegErrors errors_{};
    bool cmyk_ = false, adobe_ = false;
    std::vector<std::uint8_t> cmyk_pixels_;
};

/// Encodes RGB images as baseline JPEG with 4:2:0 chroma, as PIL saves them by default.
class JpegEncoder {
public:
    JpegEncoder() : tj_(tjInitCompress()) {
        if (!tj_) throw internal_error("tjInitCompress", tjGetErrorStr2(nullptr));
    }
    ~JpegEncoder() { tjDestroy(tj_); }
    JpegEncoder(const JpegEncoder&) = delete;
    JpegEncoder& operator=(const JpegEncoder&) = delete;

    /// `rgb` is width x height, rows packed; the JPEG replaces `out`'s contents.
    void encode(const std::uint8_t* rgb, int width, int height, int quality, std::vector<std::uint8_t>& out) {
        unsigned char* jpeg = nullptr;
        unsigned long size = 0;
        if (tjCompress2(tj_, rgb, width, 0, height, TJPF_RGB, &jpeg, &size, TJSAMP_420, quality, 0) != 0) {
            tjFree(jpeg);
            throw internal_error("tjCompress2", tjGetErrorStr2(tj_));
        }
        out.assign(jpeg, jpeg + size);
        tjFree(jpeg);
    }

private:
    tjhandle tj_;
};

}  // namespace tessera::data
