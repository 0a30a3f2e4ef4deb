#include <algorithm>

#include "runner.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/thread_pool.hpp"

namespace tessera::runner {

Args::Args(std::vector<std::string> args, const std::vector<std::string>& flags, const std::vector<std::string>& valued,
           const std::vector<std::string>& repeated) {
    auto known = [](const std::vector<std::string>& list, const std::string& name) {
        return std::find(list.begin(), list.end(), name) != list.end();
    };
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& a = args[i];
        if (a.rfind("--", 0) != 0 || a == "--") {
            positional_.push_back(a);
            continue;
        }
        std::string name = a.substr(2), value;
        const auto eq = name.find('=');
        const bool inline_value = eq != std::string::npos;
        if (inline_value) value = name.substr(eq + 1), name = name.substr(0, eq);
        if (known(flags, name) && !inline_value) {
            flags_[name]++;
        } else if (known(valued, name) || known(repeated, name)) {
            if (!inline_value) {
                if (i + 1 >= args.size()) throw user_error("--" + name, "needs a value");
                value = args[++i];
            }
            if (!known(repeated, name) && values_.count(name)) throw user_error("--" + name, "given twice");
            values_[name].push_back(value);
        } else {
            std::string all;
            for (auto* list : {&flags, &valued, &repeated})
                for (auto& f : *list) all += (all.empty() ? "--" : ", --") + f;
            throw user_error(a, "unknown option",
                             all.empty() ? "this command takes no options" : "options here: " + all);
        }
    }
}

std::optional<std::string> Args::value(const std::string& name) const {
    auto it = values_.find(name);
    if (it == values_.end()) return std::nullopt;
    return it->second.back();
}

std::vector<std::string> Args::values(const std::string& name) const {
    auto it = values_.find(name);
    return it == values_.end() ? std::vector<std::string>{} : it->second;
}

int Args::integer(const std::string& name, int fallback, int min) const {
    auto v = value(name);
    if (!v) return fallback;
    try {
        std::size_t used = 0;
        const long n = std::stol(*v, &used);
        if (used == v->size() && n >= min && n <= 1 << 30) return int(n);
    } catch (const std::logic_error&) {}
    throw user_error("--" + name + " " + *v, "expected a whole number of at least " + std::to_string(min));
}

int thread_count(const Args& a) { return a.integer("threads", ThreadPool::default_threads()); }

}  // namespace tessera::runner
