#pragma once
// Joining words into the lists that messages show ("resnet18, resnet34, …"), and numbers written
// as people wrote them.
#include <charconv>
#include <string>
#include <type_traits>
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

/// The shortest decimal that reads back as the same number: 0.9, not 0.90000000000000002 (as
/// Python's repr, by std::to_chars), in plain notation unless that is much longer: 100000 and
/// 0.0001 rather than 1e+05 and 1e-04, but 1e-08. What a user wrote comes back as they wrote it.
template <class Float>
std::string shortest_decimal(Float x) {
    static_assert(std::is_floating_point_v<Float>, "for floats and doubles");
    char plain[400], scientific[64];
    const auto plain_end = std::to_chars(plain, plain + sizeof plain, x, std::chars_format::fixed).ptr;
    const auto scientific_end = std::to_chars(scientific, scientific + sizeof scientific, x).ptr;
    if (plain_end - plain <= scientific_end - scientific + 4) return std::string(plain, plain_end);
    return std::string(scientific, scientific_end);
}

}  // namespace tessera
