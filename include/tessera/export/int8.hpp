#pragma once
// int8 post-training quantization's arithmetic, shared by the ONNX writer (which stores int8
// weights and scales) and tessera's fake-quant forward (which evaluates what they compute).
//
// Symmetric, zero point 0, as TensorRT's explicit quantization requires (TensorRT developer guide,
// "Working with Quantized Types"): q = saturate(round_half_even(x / scale)) in [-127, 127] for
// weights, [-128, 127] for activations (QuantizeLinear's int8 range), and x' = q * scale.
// Weights per output channel, scale = max |w_c| / 127; activations per tensor, scale = amax / 127,
// amax from calibration (its largest |x|, or a percentile of |x|).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <vector>

namespace tessera::deploy::int8 {

/// A scale that is never zero: a channel or tensor of zeros quantizes to zeros with scale 1.
inline float scale_for(double amax, double levels = 127) { return amax > 0 ? float(amax / levels) : 1.f; }

/// QuantizeLinear's rounding (half to even) and saturation.
inline std::int8_t quantize(float x, float scale, int lowest = -128) {
    const float q = std::nearbyint(x / scale);  // the default rounding mode: to nearest, ties to even
    return std::int8_t(std::clamp(q, float(lowest), 127.f));
}

inline float fake_quantize(float x, float scale, int lowest = -128) {
    return float(quantize(x, scale, lowest)) * scale;
}

/// Per-output-channel weights: `rows` channels of `per_row` values each (OIHW or OHWI alike: the
/// output channel is the outermost dimension). Returns one scale per channel.
inline std::vector<float> weight_scales(std::span<const float> w, std::size_t rows) {
    const std::size_t per_row = w.size() / rows;
    std::vector<float> scales(rows);
    for (std::size_t r = 0; r < rows; ++r) {
        float amax = 0;
        for (std::size_t i = 0; i < per_row; ++i) amax = std::max(amax, std::fabs(w[r * per_row + i]));
        scales[r] = scale_for(amax);
    }
    return scales;
}

/// The weights as int8, each channel by its scale, in [-127, 127].
inline std::vector<std::int8_t> quantize_weights(std::span<const float> w, std::span<const float> scales) {
    const std::size_t per_row = w.size() / scales.size();
    std::vector<std::int8_t> q(w.size());
    for (std::size_t i = 0; i < w.size(); ++i) q[i] = quantize(w[i], scales[i / per_row], -127);
    return q;
}

}  // namespace tessera::deploy::int8
