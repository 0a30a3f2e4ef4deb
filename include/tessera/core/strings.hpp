#pragma once
// Joining words into the lists that messages show ("resnet18, resnet34, …").
#include <string>
#include <string_view>

namespace tessera {

/// The items of `range`, which must convert to std::string_view, with `separator` between them.
template <class Range>
std::string join(const Range& range, std::string_view separator = ", ") {
    std::string out;
    bool first = true;
    for (const auto& item : range) {
        if (!first) out += separator;
        out += std::string_view(item);
        first = false;
    }
    return out;
}

}  // namespace tessera
