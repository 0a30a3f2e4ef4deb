#pragma once
// The IDX format of MNIST and its kin: magic 0x00 0x00 0x08 (unsigned bytes) then the number of
// dimensions, then each dimension as a big-endian 32-bit count, then the data. Everything the header
// claims is checked against the bytes there are before anything is allocated.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera::data {

struct Idx {
    std::vector<std::uint32_t> dims;
    std::vector<std::uint8_t> data;
};

/// The IDX file in `bytes`, which must have `expected_dims` dimensions; `where` names it in messages.
inline Idx parse_idx(std::span<const std::uint8_t> bytes, std::size_t expected_dims, const std::string& where) {
    if (bytes.size() < 4 || bytes[0] != 0 || bytes[1] != 0 || bytes[2] != 0x08 || bytes[3] != expected_dims)
        throw user_error(where, "not an IDX file of " + std::to_string(expected_dims) + "-d unsigned bytes",
                         "expected MNIST-format files such as train-images-idx3-ubyte.gz");
    const std::size_t header = 4 + 4 * expected_dims;
    if (bytes.size() < header) throw user_error(where, "truncated IDX header", "download the file again");
    Idx idx;
    std::uint64_t count = 1;  // saturates just past the bytes there are: dims of up to 2^32 each cannot overflow it
    for (std::size_t d = 0; d < expected_dims; ++d) {
        const std::uint8_t* p = &bytes[4 + 4 * d];
        idx.dims.push_back(std::uint32_t(p[0]) << 24 | std::uint32_t(p[1]) << 16 | std::uint32_t(p[2]) << 8 | p[3]);
        if (idx.dims.back() == 0) throw user_error(where, "an IDX dimension of 0", "download the file again");
        count = count > bytes.size() / idx.dims.back() ? bytes.size() + 1 : count * idx.dims.back();
    }
    if (count != bytes.size() - header)
        throw user_error(where,
                         "truncated or oversized IDX file: the header promises " +
                             (count > bytes.size() ? std::string("more") : std::to_string(count)) +
                             " bytes of data, the file holds " + std::to_string(bytes.size() - header),
                         "download the file again");
    idx.data.assign(bytes.begin() + std::ptrdiff_t(header), bytes.end());
    return idx;
}

}  // namespace tessera::data
