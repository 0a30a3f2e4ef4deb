// The IDX reader (MNIST's format) on any bytes: every size it claims is checked against the bytes.
#include "tessera/data/idx.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    for (std::size_t dims : {1, 3}) {
        try {
            const auto idx = tessera::data::parse_idx({data, size}, dims, "fuzz");
            std::size_t count = 1;
            for (auto d : idx.dims) count *= d;
            if (count != idx.data.size()) __builtin_trap();  // what it returns is what the header says
        } catch (const tessera::Error&) {}
    }
    return 0;
}
