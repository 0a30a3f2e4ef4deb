// The JSON reader on any bytes (safetensors headers, events.jsonl, report data), and the writers'
// escaping of user strings: a string quoted by json::quote reads back as itself, and one escaped
// for the HTML report holds no markup.
#include <string>

#include "tessera/report/svg_chart.hpp"
#include "tessera/core/json.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const std::string text(reinterpret_cast<const char*>(data), size);
    try {
        tessera::json::parse(text, "fuzz");
    } catch (const tessera::Error&) {}
    try {
        const auto back = tessera::json::parse(tessera::json::quote(text), "fuzz");
        if (!back.is_string() || back.string() != text) __builtin_trap();
    } catch (const tessera::Error&) {
        // Only bytes that are not UTF-8 may be refused.
        bool ascii = true;
        for (unsigned char c : text) ascii = ascii && c < 0x80;
        if (ascii) __builtin_trap();
    }
    const std::string html = tessera::report::escape_xml(text);
    if (html.find_first_of("<>\"") != std::string::npos) __builtin_trap();
    return 0;
}
