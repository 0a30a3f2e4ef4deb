#pragma once
// A convolution input with few channels (the stem's 3 for RGB, 1 for grayscale), padded on the device
// to a channel count tensor cores take, with zero weight slices for the padding: the same products,
// since every added term is a zero weight times a zero input. Plain C++ with functions the kernels
// share, so the CPU tests check the mapping the device runs.
//
// Only bf16 and fp16: cuDNN's NHWC tensor-core kernels want the channel count a multiple of 4 or 8,
// and with 3 they may have no tensor-core algorithm at all or only a slow one. fp32 kernels take any
// count. 4 where it suffices, as NVIDIA's MLPerf ResNet pads its 3-channel input to 4 (DALI's
// pad_output); otherwise the next multiple of 8. The weights a checkpoint holds keep their shapes
// (torchvision's): the padding lives only in the scratch one call uses.
#include <cstddef>

#include "tessera/backend/ops.hpp"
#include "tessera/core/tensor.hpp"

#if defined(__CUDACC__)
#define TESSERA_HOST_DEVICE __host__ __device__
#else
#define TESSERA_HOST_DEVICE
#endif

namespace tessera::cuda {

/// The channel count a convolution input of c channels and type t runs with on the device.
inline int padded_channels(int c, DType t) {
    if (t == DType::f32 || c % 8 == 0 || c == 4) return c;
    return c < 4 ? 4 : (c + 7) / 8 * 8;
}

/// The convolution g with its input padded to `channels` (the filters gain zero slices).
inline ConvGeometry with_input_channels(ConvGeometry g, int channels) {
    g.in_channels = channels;
    return g;
}

/// Element i of the padded (rows, padded) copy of a (rows, c) array: true and its source's offset in
/// *source, or false in the padding (the element is 0).
TESSERA_HOST_DEVICE inline bool padded_source(std::size_t i, int c, int padded, std::size_t* source) {
    const std::size_t row = i / padded;
    const int channel = int(i - row * padded);
    *source = row * c + channel;
    return channel < c;
}

/// Element i of the (rows, c) slice of a padded (rows, padded) array: its offset in the padded one.
TESSERA_HOST_DEVICE inline std::size_t sliced_source(std::size_t i, int c, int padded) {
    const std::size_t row = i / c;
    return row * padded + (i - row * c);
}

}  // namespace tessera::cuda
