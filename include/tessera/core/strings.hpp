#pragma once
// Joining words into the lists that messages show ("resnet18, resnet34, …").
#include <string>
#include <string_view>
#include <vector>

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

/// "[1, 2, 3]": the numbers of `range` as std::to_string writes them.
template <class Range>
std::string number_list(const Range& range) {
    std::vector<std::string> each;
    for (const auto& number : range) each.push_back(std::to_string(number));
    std::string out = "[";  // appended, not "[" + …: GCC 12 warns falsely (-Wrestrict) on literal + std::string&&
    out += join(each);
    out += ']';
    return out;
}

}  // namespace tessera
