// runner plugins: every plugin found, its kind, options and defaults.
#include <cstdio>
#include <variant>

#include "runner.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/plugin/registry.hpp"

namespace tessera::runner {

namespace {
std::string show(const plugin::Value& v) {
    return std::visit(
        [](const auto& x) -> std::string {
            using T = std::decay_t<decltype(x)>;
            if constexpr (std::is_same_v<T, bool>)
                return x ? "true" : "false";
            else if constexpr (std::is_same_v<T, std::string>)
                return "\"" + x + "\"";
            else if constexpr (std::is_same_v<T, std::vector<double>>)
                return number_list(x);
            else {
                char buf[32];
                std::snprintf(buf, sizeof buf, "%g", double(x));
                return buf;
            }
        },
        v);
}
}  // namespace

int plugins(const std::vector<std::string>& raw) {
    Args args(raw, {}, {});
    plugin::Registry registry;
    for (const char* kind : {"data", "optimizer", "scheduler", "logger"}) {
        for (auto& e : registry.entries()) {
            if (e.info.kind != kind) continue;
            std::printf("%-9s %-10s %s\n          %s\n", kind, e.info.name.c_str(), e.info.description.c_str(),
                        e.path.c_str());
            for (auto& o : e.info.options)
                std::printf("            %-20s = %-12s %s\n", o.name.c_str(), show(o.default_value).c_str(),
                            o.help.c_str());
        }
    }
    for (auto& p : registry.problems()) std::printf("skipped: %s\n", p.c_str());
    if (registry.entries().empty()) {
        std::fprintf(stderr, "no plugins found in:\n");
        for (auto& d : plugin::Registry::search_path({})) std::fprintf(stderr, "  %s\n", d.c_str());
        return 2;
    }
    return 0;
}

}  // namespace tessera::runner
