// The recipe, mapped to the PyTorch training loop of bench/parity/torch_side.py. Each key is
// mapped, or has no bearing on the steps of one process (and the table says why), or is refused
// by name. The table is the whole of the mapping: a key it does not list is refused.
#include <cmath>
#include <cstdio>
#include <map>
#include <set>
#include <sstream>
#include <variant>

#include "parity.hpp"
#include "tessera/core/json.hpp"

namespace tessera::runner {

namespace {

// Core sections: every key, and how PyTorch gets it. "mapped" keys are written into spec.json;
// the others say why the PyTorch side needs nothing for them.
const std::map<std::string, std::map<std::string, std::string>>& core_mapping() {
    static const std::map<std::string, std::map<std::string, std::string>> table = {
        {"run",
         {{"name", "where files go"},
          {"out_dir", "where files go"},
          {"plugin_path", "where plugins are found"},
          {"seed", "through the initial weights and the recorded batches"}}},
        {"model",
         {{"arch", "mapped"},
          {"num_classes", "mapped"},
          {"zero_init_residual", "through the initial weights"},
          {"precision", "mapped"}}},
        {"data", {{"batch_size", "mapped"}}},  // the plugin's options: through the recorded batches
        {"train",
         {{"epochs", "mapped"},  // the schedule's length
          {"label_smoothing", "mapped"},
          {"device", "mapped"},
          {"threads", "mapped"},
          {"scale_lr", "mapped"},
          {"base_batch", "mapped"},
          {"accumulate", "mapped"},
          {"grad_clip", "mapped"},
          {"ema", "mapped"},
          {"mixup_alpha", "through the recorded batches and their mixing weights"},
          {"cutmix_alpha", "through the recorded batches and their mixing weights"},
          {"mix_prob", "through the recorded batches and their mixing weights"},
          {"mix_switch_prob", "through the recorded batches and their mixing weights"},
          {"sync_batchnorm", "one process: its own batch is every batch"},
          {"bucket_mb", "one process: nothing is all-reduced"},
          {"target_top1", "acts at an epoch's end, after the steps compared"},
          {"max_bad_steps", "a skipped step shows as the two sides parting"},
          {"loss_scale", "mapped"},  // refused unless 0
          {"loss_scale_window", "fp16's dynamic scale, which is refused"}}},
        {"checkpoint",
         {{"every_epochs", "parity saves no checkpoints"},
          {"every_minutes", "parity saves no checkpoints"},
          {"keep", "parity saves no checkpoints"},
          {"on_failure", "parity saves no checkpoints"}}},
    };
    return table;
}

// The optimizers and schedulers the PyTorch side builds, with every option each takes. `scaled`:
// the rates that [train] scale_lr multiplies, as the trainer multiplies the scheduler's output.
struct PluginMapping {
    std::set<std::string> options, scaled;
};
const std::map<std::string, PluginMapping> optimizers = {
    {"sgd", {{"momentum", "weight_decay", "nesterov", "no_decay_bn_bias"}, {}}},     // torch.optim.SGD
    {"adamw", {{"beta1", "beta2", "eps", "weight_decay", "no_decay_bn_bias"}, {}}},  // torch.optim.AdamW
    {"lars", {{"momentum", "weight_decay", "eeta", "epsilon", "nesterov"}, {}}},     // MLPerf's LARS
};
const std::map<std::string, PluginMapping> schedulers = {
    {"onecycle",  // OneCycleLR
     {{"max_lr", "pct_start", "div_factor", "final_div_factor", "cycle_momentum", "base_momentum", "max_momentum"},
      {"max_lr"}}},
    {"cosine", {{"lr", "min_lr", "warmup_epochs"}, {"lr", "min_lr"}}},  // LinearLR, CosineAnnealingLR
    {"poly", {{"lr", "end_lr", "power", "warmup_epochs", "decay_epochs"}, {"lr", "end_lr"}}},  // MLPerf's, as LambdaLR
    {"multistep", {{"lr", "milestones", "gamma"}, {"lr"}}},                                    // MultiStepLR
    {"constant", {{"lr"}, {"lr"}}},
};

std::string number(double x) {
    char text[32];
    std::snprintf(text, sizeof text, "%.17g", x);
    return text;
}

std::string json_value(const plugin::Value& v) {
    if (auto* b = std::get_if<bool>(&v)) return *b ? "true" : "false";
    if (auto* i = std::get_if<std::int64_t>(&v)) return std::to_string(*i);
    if (auto* d = std::get_if<double>(&v)) return number(*d);
    if (auto* s = std::get_if<std::string>(&v)) return json::quote(*s);
    std::string out = "[";
    for (double x : std::get<std::vector<double>>(v)) out += (out.size() > 1 ? ", " : "") + number(x);
    return out + "]";
}

// {"name": …, option: value, …}: every option the mapping knows, the rates scaled; any other is refused.
std::string plugin_json(const recipe::PluginChoice& choice, const std::string& section,
                        const std::map<std::string, PluginMapping>& known, double lr_scale) {
    const std::string& name = choice.entry->info.name;
    const auto mapping = known.find(name);
    if (mapping == known.end()) {
        std::string names;
        for (auto& [n, m] : known) names += (names.empty() ? "" : ", ") + n;
        throw user_error(choice.where + " plugin",
                         "\"" + name + "\" has no PyTorch counterpart in runner parity (it maps " + names + ")",
                         "compare a recipe that uses one of those, or teach runner/parity_mapping.cpp and "
                         "bench/parity/torch_side.py this " +
                             section);
    }
    std::string out = "{\"name\": " + json::quote(name);
    for (auto& [key, value] : choice.options.values()) {
        if (!mapping->second.options.count(key))
            throw user_error(choice.where + " " + key,
                             "runner parity has no PyTorch counterpart for " + name + "'s option \"" + key + "\"",
                             "teach runner/parity_mapping.cpp and bench/parity/torch_side.py the option");
        const bool scaled = mapping->second.scaled.count(key) && std::holds_alternative<double>(value);
        out +=
            ", " + json::quote(key) + ": " + (scaled ? number(std::get<double>(value) * lr_scale) : json_value(value));
    }
    return out + "}";
}

// Every key of a core section is in the table; the values the PyTorch side cannot reproduce are
// refused by name.
void check_core(const recipe::RunSpec& spec) {
    const recipe::Recipe& r = spec.recipe;
    const std::map<std::string, const plugin::Options*> sections = {
        {"run", &r.run}, {"model", &r.model}, {"train", &r.train}, {"checkpoint", &r.checkpoint}};
    for (auto& [section, options] : sections)
        for (auto& [key, value] : options->values())
            if (!core_mapping().at(section).count(key))
                throw user_error(spec.where(section, key), "runner parity has no mapping to PyTorch for this key",
                                 "teach runner/parity_mapping.cpp the key, or leave it out of the recipe");
    const std::string& precision = spec.precision();
    if (precision == "fp16")
        throw user_error(
            spec.where("model", "precision"),
            "\"fp16\": runner parity does not map fp16's dynamic loss scaling to torch.cuda.amp.GradScaler",
            "compare in \"bf16\", \"tf32\" or \"fp32\"");
    if (r.train.number("loss_scale") > 0)
        throw user_error(spec.where("train", "loss_scale"), "a fixed loss scale has no mapping in runner parity",
                         "set train.loss_scale = 0 to compare");
}

}  // namespace

std::vector<std::string> parity_known_keys(const std::string& section) {
    std::vector<std::string> keys;
    const auto it = core_mapping().find(section);
    if (it != core_mapping().end())
        for (auto& [key, how] : it->second) keys.push_back(key);
    return keys;
}

std::string parity_spec(const recipe::RunSpec& spec, const ParityShape& shape, double lr_scale) {
    check_core(spec);
    const recipe::Recipe& r = spec.recipe;
    const train::TrainConfig& t = spec.train;
    std::ostringstream out;
    auto list = [](const auto& values) {
        std::string s = "[";
        for (auto& v : values) s += (s.size() > 1 ? ", " : "") + number(double(v));
        return s + "]";
    };
    out << "{\n"
        << "  \"recipe\": " << json::quote(r.file.string()) << ",\n"
        << "  \"arch\": " << json::quote(spec.arch()) << ",\n"
        << "  \"num_classes\": " << spec.num_classes << ",\n"
        << "  \"height\": " << shape.height << ", \"width\": " << shape.width << ", \"channels\": " << shape.channels
        << ",\n"
        << "  \"mean\": " << list(spec.info.mean) << ", \"std\": " << list(spec.info.std) << ",\n"
        << "  \"device\": " << json::quote(spec.device()) << ", \"precision\": " << json::quote(spec.precision())
        << ", \"threads\": " << shape.threads << ",\n"
        << "  \"batch_size\": " << t.batch_size << ", \"accumulate\": " << t.accumulate << ",\n"
        << "  \"steps\": " << shape.steps << ", \"steps_per_epoch\": " << shape.steps_per_epoch
        << ", \"total_steps\": " << shape.total_steps << ",\n"
        << "  \"snapshots\": " << list(shape.snapshots) << ",\n"
        << "  \"label_smoothing\": " << number(t.label_smoothing) << ", \"grad_clip\": " << number(t.grad_clip)
        << ", \"ema\": " << number(t.ema_decay) << ",\n"
        << "  \"eval\": " << (shape.eval ? "true" : "false") << ",\n"
        << "  \"optimizer\": " << plugin_json(r.optimizer, "optimizer", optimizers, 1) << ",\n"
        << "  \"scheduler\": " << plugin_json(r.scheduler, "scheduler", schedulers, lr_scale) << "\n"
        << "}\n";
    return out.str();
}

}  // namespace tessera::runner
