#pragma once
// bfloat16 on the CPU: the top 16 bits of an fp32 (1 sign, 8 exponent, 7 mantissa bits). Mixed
// precision stores activations and their gradients in it and computes in fp32: each kernel loads
// through widen(), which is exact, and stores through narrow<T>(), which rounds to nearest even as
// oneDNN's and PyTorch's conversions do. The kernels are templates over the element type, so fp32
// and bf16 run the same loop.
#include <bit>
#include <cstdint>
#include <string>
#include <type_traits>

#include "tessera/core/error.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

struct bf16 {
    std::uint16_t bits;
};

inline float widen(float x) { return x; }
inline float widen(bf16 x) { return std::bit_cast<float>(std::uint32_t(x.bits) << 16); }

/// float -> bf16, rounded to nearest even; NaN stays NaN (quietened).
inline bf16 to_bf16(float f) {
    const std::uint32_t bits = std::bit_cast<std::uint32_t>(f);
    if ((bits & 0x7fffffffu) > 0x7f800000u) return {std::uint16_t((bits >> 16) | 0x40u)};
    return {std::uint16_t((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16)};
}

template <class T>
T narrow(float x) {
    if constexpr (std::is_same_v<T, bf16>)
        return to_bf16(x);
    else
        return x;
}

/// x rounded to the nearest bf16, kept as a float (what a bf16 multiply sees of it).
inline float round_to_bf16(float x) { return widen(to_bf16(x)); }

/// Calls f(T{}) with T the C++ type of a tensor's elements of type t: float or bf16 (the CPU keeps
/// no fp16 activations; make_context refuses it).
template <class F>
decltype(auto) with_element_type(DType t, F&& f) {
    switch (t) {
        case DType::f32:
            return f(float{});
        case DType::bf16:
            return f(bf16{});
        default:
            break;
    }
    throw internal_error("cpu::with_element_type", "the CPU holds activations in fp32 or bf16, not " + dtype_name(t));
}

}  // namespace tessera::cpu
