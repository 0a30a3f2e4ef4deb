#pragma once
// Recipes: TOML in, typed configuration out.
//
//   [run]        name, out_dir, seed, plugin_path
//   [model]      arch, num_classes (0: from the data), zero_init_residual, precision
//   [data]       plugin, batch_size (per process), then the data plugin's own options
//   [optimizer]  plugin, then its options            [scheduler]  plugin, then its options
//   [[logger]]   plugin, then its options (none given: console, csv, jsonl and html)
//   [train]      epochs, label_smoothing, device, threads, sync_batchnorm, bucket_mb, scale_lr, base_batch,
//                accumulate, grad_clip, ema, mixup_alpha, cutmix_alpha, mix_prob, mix_switch_prob, target_top1,
//                max_bad_steps
//   [checkpoint] every_epochs, every_minutes, keep, on_failure
//
// Every value is checked before any work starts. A mistake is reported as `file:line:col: message`;
// an unknown key names the nearest known one. `--set section.key=value` overrides any value (the
// value is read as TOML, else taken as a string); the effective recipe is what gets saved.
#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <functional>
#include <charconv>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/json.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/plugin/api.hpp"
#include "tessera/plugin/registry.hpp"

namespace tessera::recipe {

namespace fs = std::filesystem;
using plugin::Option;
using plugin::Options;
using plugin::Value;

/// A plugin chosen by a recipe table, with its validated options.
struct PluginChoice {
    const plugin::Registry::Entry* entry = nullptr;
    Options options;
    std::string where;  // the table's location, for messages
};

struct Recipe {
    fs::path file;
    Options run, model, train, checkpoint;
    int batch_size = 0;
    PluginChoice data, optimizer, scheduler;
    std::vector<PluginChoice> loggers;
    toml::table effective;  // the recipe after --set, as saved in the run folder
};

// ---- the core sections' keys ---------------------------------------------------------------------

inline const std::map<std::string, std::vector<Option>>& core_sections() {
    using plugin::above;
    using plugin::at_least;
    using plugin::between;
    using plugin::from_to_below;
    using plugin::one_of;
    // The largest counts a run can sensibly ask for; anything above is a typo, and would not fit
    // the ints the loop counts in.
    constexpr double max_epochs = 100'000, max_batch = 1 << 16, max_threads = 4096;
    static const std::map<std::string, std::vector<Option>> sections = {
        {"run",
         {{"name", std::string("run"), "the run's folder name under out_dir"},
          {"out_dir", std::string("runs"), "where run folders go"},
          {"seed", std::int64_t(0), "seeds initialisation, data order and augmentation", at_least(0)},
          {"plugin_path", std::string(""), "extra folders to search for plugins, colon-separated"}}},
        {"model",
         {{"arch", std::string("resnet20"), "resnet18/34/50/101/152, their _small variants, resnet20/32/44/56/110"},
          {"num_classes", std::int64_t(0), "outputs of the classifier; 0 takes the data's", between(0, 1 << 20)},
          {"zero_init_residual", false, "start each block's last BatchNorm gamma at 0"},
          {"precision", std::string("fp32"),
           "fp32, or bf16 (mixed precision) on CPUs with AVX512-BF16 or AMX; on CUDA also tf32 (TF32 tensor "
           "cores) and fp16 (mixed precision)",
           one_of({"fp32", "tf32", "bf16", "fp16"})}}},
        {"train",
         {{"epochs", std::int64_t(1), "passes over the training data", between(1, max_epochs)},
          {"label_smoothing", 0.0, "as torch.nn.CrossEntropyLoss(label_smoothing=…)", between(0, 1)},
          {"device", std::string("cpu"), "cpu, or cuda", one_of({"cpu", "cuda"})},
          {"threads", std::int64_t(0),
           "CPU threads per process; 0: TESSERA_NUM_THREADS, or the cores shared among the processes of a machine",
           between(0, max_threads)},
          {"sync_batchnorm", false, "with several processes: BatchNorm statistics over every process's batch"},
          {"bucket_mb", std::int64_t(25), "with several processes: MiB of gradients all-reduced together",
           between(1, 4096)},
          {"scale_lr", std::string("none"),
           "with several processes: \"linear\" multiplies the schedule's rates by global batch / base_batch",
           one_of({"none", "linear"})},
          {"base_batch", std::int64_t(256), "the batch the schedule's rates were chosen for (scale_lr = \"linear\")",
           between(1, max_batch * 1024)},
          {"accumulate", std::int64_t(1),
           "batches whose gradients add up to one optimizer step (a larger effective batch)", between(1, 1024)},
          {"grad_clip", 0.0, "clip the gradients' global L2 norm to this (0: no clipping)", at_least(0)},
          {"ema", 0.0,
           "decay per step of a moving average of the weights, validated alongside and saved as last.ema.safetensors "
           "(0: none)",
           from_to_below(0, 1)},
          {"mixup_alpha", 0.0, "mixup's Beta(alpha, alpha) (0: no mixup; 0.2 is usual)", between(0, 1000)},
          {"cutmix_alpha", 0.0, "cutmix's Beta(alpha, alpha) (0: no cutmix; 1.0 is usual)", between(0, 1000)},
          {"mix_prob", 1.0, "the share of batches mixed, with mixup or cutmix on", between(0, 1)},
          {"mix_switch_prob", 0.5, "with both on: the share of mixed batches that use cutmix", between(0, 1)},
          {"target_top1", 0.0,
           "stop once validation top-1, a fraction, reaches this: 0.759 for 75.9% (0: train every epoch)",
           between(0, 1)},
          {"max_bad_steps", std::int64_t(10),
           "steps with gradients not finite are skipped; stop after so many in a row (0: never)",
           between(0, 1'000'000)},
          {"loss_scale", 0.0,
           "multiplies the loss's gradient for backward; 0: none, except fp16, which scales dynamically as GradScaler",
           between(0, 1e30)},
          {"loss_scale_window", std::int64_t(2000),
           "fp16's dynamic loss scale doubles after so many steps without overflow", between(1, 1e9)}}},
        {"checkpoint",
         {{"every_epochs", std::int64_t(1), "save last.safetensors and its training state every N epochs",
           between(1, max_epochs)},
          {"every_minutes", 0.0, "also save every so many minutes within an epoch (0: never)", between(0, 1e6)},
          {"keep", std::int64_t(0), "also keep the weights of the last K epochs as epoch_<N>.safetensors (0: none)",
           between(0, max_epochs)},
          {"on_failure", std::string("stop"),
           "a checkpoint that cannot be written: \"stop\" the run, or \"continue\" with a warning",
           one_of({"stop", "continue"})}}},
        {"data", {{"batch_size", std::int64_t(128), "images per step per process", between(1, max_batch)}}},
        {"optimizer", {}},
        {"scheduler", {}},
        {"logger", {}},
    };
    return sections;
}

// ---- helpers ---------------------------------------------------------------------------------------

inline std::string locate(const toml::source_region& src, const std::string& fallback) {
    if (!src.path || src.begin.line == 0) return fallback;
    return *src.path + ":" + std::to_string(src.begin.line) + ":" + std::to_string(src.begin.column);
}

inline std::size_t edit_distance(const std::string& a, const std::string& b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] != b[j - 1])});
            diagonal = above;
        }
    }
    return row[b.size()];
}

/// "did you mean 'epochs'?" or the list of known names.
inline std::string suggest(const std::string& word, const std::vector<std::string>& known) {
    if (known.empty()) return "this table takes no other keys";
    auto best = std::min_element(known.begin(), known.end(),
                                 [&](auto& a, auto& b) { return edit_distance(word, a) < edit_distance(word, b); });
    if (edit_distance(word, *best) <= std::max<std::size_t>(2, word.size() / 3)) return "did you mean '" + *best + "'?";
    return "known keys: " + join(known);
}

/// A TOML value as an option value of the declared type, or a located error.
inline Value convert(const toml::node& node, const Value& declared, const std::string& key, const std::string& where) {
    auto wrong = [&]() -> Error { return user_error(where, key + " must be " + plugin::type_name(declared), ""); };
    switch (declared.index()) {
        case 0:
            if (auto v = node.value_exact<bool>()) return *v;
            throw wrong();
        case 1:
            if (auto v = node.value_exact<std::int64_t>()) return *v;
            throw wrong();
        case 2:
            if (node.is_integer() || node.is_floating_point()) return *node.value<double>();
            throw wrong();
        case 3:
            if (auto v = node.value_exact<std::string>()) return *v;
            throw wrong();
        default: {
            const toml::array* arr = node.as_array();
            if (!arr) throw wrong();
            std::vector<double> values;
            for (auto& item : *arr) {
                if (!item.is_integer() && !item.is_floating_point()) throw wrong();
                values.push_back(*item.value<double>());
            }
            return values;
        }
    }
}

/// Refuses a value outside its option's declared range, naming the key and the range.
inline void check_range(const Value& value, const plugin::Range& range, const std::string& key,
                        const std::string& where) {
    auto refuse = [&](const std::string& shown) {
        throw user_error(where, key + " must be " + range.describe() + ", not " + shown);
    };
    if (auto* i = std::get_if<std::int64_t>(&value); i && !range.contains(double(*i))) refuse(std::to_string(*i));
    if (auto* d = std::get_if<double>(&value); d && !range.contains(*d)) refuse(shortest_decimal(*d));
    if (auto* l = std::get_if<std::vector<double>>(&value))
        for (double x : *l)
            if (!range.contains(x)) refuse(shortest_decimal(x) + " (in the list)");
    if (auto* t = std::get_if<std::string>(&value); t && !range.allows(*t)) refuse("\"" + *t + "\"");
}

/// Checks a table against declared options (plus any of `reserved`) and fills in the defaults.
inline Options validate(const toml::table& table, const std::vector<Option>& declared, const std::string& section,
                        const std::vector<std::string>& reserved, const std::string& file) {
    std::map<std::string, Value> values;
    for (auto& o : declared) values[o.name] = o.default_value;
    std::vector<std::string> known = reserved;
    for (auto& o : declared) known.push_back(o.name);
    for (auto& [key, node] : table) {
        const std::string name(key.str());
        const std::string where =
            locate(key.source().path ? key.source() : node.source(), file + " (--set " + section + "." + name + ")");
        if (std::find(reserved.begin(), reserved.end(), name) != reserved.end()) continue;
        auto it = std::find_if(declared.begin(), declared.end(), [&](auto& o) { return o.name == name; });
        if (it == declared.end())
            throw user_error(where, "unknown key '" + name + "' in [" + section + "]", suggest(name, known));
        const std::string at = locate(node.source(), where);
        values[name] = convert(node, it->default_value, section + "." + name, at);
        check_range(values[name], it->range, section + "." + name, at);
    }
    return Options(std::move(values));
}

inline PluginChoice choose_plugin(const toml::table& table, const std::string& kind, const std::string& section,
                                  const std::vector<Option>& host_keys, const plugin::Registry& registry,
                                  const std::string& file) {
    const std::string where = locate(table.source(), file + " [" + section + "]");
    const toml::node* name_node = table.get("plugin");
    if (!name_node)
        throw user_error(
            where, "[" + section + "] needs plugin = \"name\"", "available " + kind + " plugins: " + [&] {
                const std::string s = join(registry.names(kind));
                return s.empty() ? std::string("none found") : s;
            }());
    auto name = name_node->value_exact<std::string>();
    if (!name) throw user_error(locate(name_node->source(), where), section + ".plugin must be a string");
    const plugin::Registry::Entry* entry = registry.find(kind, *name);
    if (!entry) {
        const std::string available = join(registry.names(kind));
        throw user_error(
            locate(name_node->source(), where), "unknown " + kind + " plugin \"" + *name + "\"",
            "available: " + (available.empty() ? std::string("none found; set TESSERA_PLUGIN_PATH") : available));
    }
    std::vector<std::string> reserved = {"plugin"};
    for (auto& o : host_keys) reserved.push_back(o.name);
    return {entry, validate(table, entry->info.options, section, reserved, file), where};
}

/// Applies one `--set a.b=value` to the table.
inline void apply_override(toml::table& root, const std::string& assignment) {
    const auto eq = assignment.find('=');
    if (eq == std::string::npos || eq == 0)
        throw user_error("--set " + assignment, "expected section.key=value", "e.g. --set train.epochs=1");
    const std::string path = assignment.substr(0, eq), text = assignment.substr(eq + 1);
    std::vector<std::string> keys;
    for (std::size_t begin = 0, end; begin <= path.size(); begin = end + 1) {
        end = std::min(path.find('.', begin), path.size());
        keys.push_back(path.substr(begin, end - begin));
    }
    toml::table* table = &root;
    for (std::size_t k = 0; k + 1 < keys.size(); ++k) {
        toml::node* child = table->get(keys[k]);
        if (!child) child = &table->insert_or_assign(keys[k], toml::table{}).first->second;
        if (auto* arr = child->as_array()) {  // logger.0.plugin
            const std::string& word = keys[++k];
            std::size_t index = 0;
            const auto [end, error] = std::from_chars(word.data(), word.data() + word.size(), index);
            if (error != std::errc() || end != word.data() + word.size())
                throw user_error("--set " + assignment, "\"" + word + "\" is not an index into " + keys[k - 1],
                                 "count the tables from 0: --set " + keys[k - 1] + ".0." + keys.back() + "=…");
            if (index >= arr->size() || !arr->get(index)->is_table())
                throw user_error("--set " + assignment, "no table at " + keys[k - 1] + "." + keys[k]);
            table = arr->get(index)->as_table();
            continue;
        }
        table = child->as_table();
        if (!table) throw user_error("--set " + assignment, keys[k] + " is not a table");
    }
    toml::table parsed;
    try {
        parsed = toml::parse("value = " + text);
    } catch (const toml::parse_error&) {
        parsed.insert_or_assign("value", text);  // a bare word: take it as a string
    }
    table->insert_or_assign(keys.back(), *parsed.get("value"));
}

/// Reads a recipe and applies the overrides; resolve() then validates it.
inline constexpr std::uintmax_t max_recipe_bytes = 1 << 20;

inline Recipe load(const fs::path& file, const std::vector<std::string>& overrides) {
    Recipe r;
    r.file = file;
    const std::string name = file.string();
    std::error_code ec;
    if (!fs::is_regular_file(file, ec))
        throw user_error(name, "no such recipe file", "give the path of a .toml recipe, e.g. recipes/quickstart.toml");
    if (fs::file_size(file, ec) > max_recipe_bytes)
        throw user_error(name, "is larger than 1 MiB: not a recipe",
                         "give the path of a .toml recipe, e.g. recipes/quickstart.toml");
    try {
        r.effective = toml::parse_file(name);
    } catch (const toml::parse_error& e) {
        throw user_error(locate(e.source(), name), std::string(e.description()),
                         "the recipe must be valid TOML (https://toml.io)");
    }
    for (auto& o : overrides) apply_override(r.effective, o);
    return r;
}

/// Second half of loading: the plugin tables need the registry, which the recipe's plugin_path extends.
inline void resolve(Recipe& r, const plugin::Registry& registry) {
    const std::string name = r.file.string();
    const auto& sections = core_sections();
    for (auto& [key, node] : r.effective) {
        if (!sections.count(std::string(key.str()))) {
            std::vector<std::string> known;
            for (auto& [s, _] : sections) known.push_back(s);
            throw user_error(locate(key.source(), name), "unknown section [" + std::string(key.str()) + "]",
                             suggest(std::string(key.str()), known));
        }
        const bool is_logger = key.str() == "logger";
        if (is_logger ? !node.is_array_of_tables() : !node.is_table())
            throw user_error(locate(node.source(), name), is_logger
                                                              ? "logger must be an array of tables: [[logger]]"
                                                              : "[" + std::string(key.str()) + "] must be a table");
    }
    auto table = [&](const std::string& section) -> const toml::table& {
        static const toml::table empty;
        const toml::table* t = r.effective[section].as_table();
        return t ? *t : empty;
    };
    const std::pair<const char*, Options*> core[] = {
        {"run", &r.run}, {"model", &r.model}, {"train", &r.train}, {"checkpoint", &r.checkpoint}};
    for (auto [section, options] : core) *options = validate(table(section), sections.at(section), section, {}, name);
    if (!r.effective.contains("data"))
        throw user_error(name, "the recipe has no [data] table", "add [data] with plugin = \"idx\" or \"synthetic\"");
    r.data = choose_plugin(table("data"), "data", "data", sections.at("data"), registry, name);
    r.batch_size = int(validate(
                           table("data"), sections.at("data"), "data",
                           [&] {
                               std::vector<std::string> keys = {"plugin"};
                               for (auto& o : r.data.entry->info.options) keys.push_back(o.name);
                               return keys;
                           }(),
                           name)
                           .integer("batch_size"));
    toml::table default_optimizer{{"plugin", "sgd"}}, default_scheduler{{"plugin", "constant"}};
    r.optimizer = choose_plugin(r.effective.contains("optimizer") ? table("optimizer") : default_optimizer, "optimizer",
                                "optimizer", {}, registry, name);
    r.scheduler = choose_plugin(r.effective.contains("scheduler") ? table("scheduler") : default_scheduler, "scheduler",
                                "scheduler", {}, registry, name);
    if (const toml::array* loggers = r.effective["logger"].as_array()) {
        for (auto& t : *loggers)
            r.loggers.push_back(choose_plugin(*t.as_table(), "logger", "logger", {}, registry, name));
    } else {
        for (const char* plugin_name : {"console", "csv", "jsonl", "html"})
            r.loggers.push_back(
                choose_plugin(toml::table{{"plugin", plugin_name}}, "logger", "logger", {}, registry, name));
    }
}

/// A recipe as TOML text, each number written as the user wrote it: the shortest decimal that reads
/// back as the same double (momentum = 0.9, where toml++ writes 0.90000000000000002). Tables are
/// written as [section], arrays of tables as [[section]], anything deeper inline.
inline std::string to_toml(const toml::table& root) {
    auto key = [](std::string_view k) {
        const bool bare = !k.empty() && std::all_of(k.begin(), k.end(), [](char c) {
            return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
        });
        if (bare) return std::string(k);
        return json::quote(k);
    };
    std::function<std::string(const toml::node&)> value = [&](const toml::node& node) -> std::string {
        if (auto b = node.value_exact<bool>()) return *b ? "true" : "false";
        if (auto i = node.value_exact<std::int64_t>()) return std::to_string(*i);
        if (auto d = node.value_exact<double>()) {
            if (std::isnan(*d)) return "nan";
            if (std::isinf(*d)) return *d > 0 ? "inf" : "-inf";
            std::string text = shortest_decimal(*d);
            if (text.find_first_of(".e") == std::string::npos) text += ".0";
            return text;
        }
        if (auto t = node.value_exact<std::string>()) {
            std::string quoted;
            for (char c : json::quote(*t)) quoted += c == '\x7f' ? std::string("\\u007f") : std::string(1, c);
            return quoted;
        }
        if (auto* a = node.as_array()) {
            std::vector<std::string> items;
            for (auto& item : *a) items.push_back(value(item));
            return "[" + join(items) + "]";
        }
        if (auto* t = node.as_table()) {
            std::vector<std::string> items;
            for (auto& [k, v] : *t) items.push_back(key(k.str()) + " = " + value(v));
            return "{ " + join(items) + " }";
        }
        std::ostringstream other;  // dates and times, which recipes do not use
        node.visit([&](auto& v) { other << v; });
        return other.str();
    };
    auto entries = [&](const toml::table& t, bool top) {
        std::string out;
        for (auto& [k, v] : t)
            if (!top || (!v.is_table() && !v.is_array_of_tables())) out += key(k.str()) + " = " + value(v) + "\n";
        return out;
    };
    std::string out = entries(root, true);
    // Appended piece by piece: GCC 12 warns falsely (-Wrestrict) on a literal + std::string&&.
    auto section = [&](std::string_view open, std::string_view name, std::string_view close, const toml::table& t) {
        if (!out.empty()) out += '\n';
        out += open;
        out += key(name);
        out += close;
        out += '\n';
        out += entries(t, false);
    };
    for (auto& [k, v] : root) {
        if (auto* t = v.as_table()) section("[", k.str(), "]", *t);
        if (v.is_array_of_tables())
            for (auto& t : *v.as_array()) section("[[", k.str(), "]]", *t.as_table());
    }
    return out;
}

/// The recipe's extra plugin folders.
inline std::vector<fs::path> plugin_path(const toml::table& effective) {
    std::vector<fs::path> dirs;
    if (auto list = effective["run"]["plugin_path"].value<std::string>()) {
        for (std::size_t begin = 0, end; begin <= list->size(); begin = end + 1) {
            end = std::min(list->find(':', begin), list->size());
            if (end > begin) dirs.emplace_back(list->substr(begin, end - begin));
        }
    }
    return dirs;
}

}  // namespace tessera::recipe
