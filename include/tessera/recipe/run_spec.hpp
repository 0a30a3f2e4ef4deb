#pragma once
// RunSpec: a recipe made into everything a run needs, in one place, every value checked before any
// work starts. The keys, their types and their ranges are declared once (recipe::core_sections()
// and each plugin's Info); recipe::resolve checks every value against them; open_run() then finds
// the plugins, makes the data source, checks what involves more than one key, and fills the
// trainer's configuration. `runner train`, `eval`, `lr-find` and `bench --data`, and library
// programs, all start here.
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "tessera/plugin/registry.hpp"
#include "tessera/recipe/recipe.hpp"
#include "tessera/train/config.hpp"
#include "tessera/train/loss_scale.hpp"

namespace tessera::recipe {

struct RunSpec {
    Recipe recipe;                               // the file, its checked tables, the effective TOML
    std::unique_ptr<plugin::Registry> registry;  // where its plugins came from
    std::shared_ptr<plugin::DataSource> data;
    plugin::DatasetInfo info;  // the data's
    int num_classes = 0;       // the model's: [model] num_classes, else the data's
    train::TrainConfig train;  // everything but what the launch decides: comm, stop, lr_scale

    const std::string& arch() const { return recipe.model.text("arch"); }
    const std::string& precision() const { return recipe.model.text("precision"); }
    const std::string& device() const { return recipe.train.text("device"); }
    std::uint64_t seed() const { return train.seed; }
    bool zero_init_residual() const { return recipe.model.flag("zero_init_residual"); }
    /// CPU threads per process the recipe asks for (0: the launch decides).
    int threads() const { return int(recipe.train.integer("threads")); }
    /// Where a message about [section] key points: "recipe.toml [train] device".
    std::string where(const std::string& section, const std::string& key) const {
        return recipe.file.string() + " [" + section + "] " + key;
    }

    std::shared_ptr<plugin::Optimizer> optimizer() const {
        return registry->create<plugin::Optimizer>(*recipe.optimizer.entry, recipe.optimizer.options);
    }
    std::shared_ptr<plugin::Scheduler> scheduler() const {
        return registry->create<plugin::Scheduler>(*recipe.scheduler.entry, recipe.scheduler.options);
    }
    std::vector<std::shared_ptr<plugin::Logger>> loggers() const {
        std::vector<std::shared_ptr<plugin::Logger>> made;
        for (auto& l : recipe.loggers) made.push_back(registry->create<plugin::Logger>(*l.entry, l.options));
        return made;
    }

    /// What linear scaling multiplies the schedule's rates by with `world_size` processes: global
    /// batch / base_batch, as Goyal et al. 2017; 1 unless scale_lr = "linear".
    double lr_scale(int world_size) const {
        if (recipe.train.text("scale_lr") != "linear") return 1;
        return double(train.batch_size) * world_size / double(recipe.train.integer("base_batch"));
    }
};

/// The recipe's loss scaling: [train] loss_scale when set, else dynamic for fp16 and none otherwise.
inline train::LossScaleConfig loss_scale_of(const Recipe& r) {
    const double fixed = r.train.number("loss_scale");
    const int window = int(r.train.integer("loss_scale_window"));
    if (fixed > 0) return {fixed, false, window};
    if (r.model.text("precision") == "fp16") return {train::LossScaler::dynamic_start, true, window};
    return {};
}

/// The trainer's configuration from a resolved recipe.
inline train::TrainConfig train_config(const Recipe& r) {
    train::TrainConfig c;
    c.batch_size = r.batch_size;
    c.accumulate = int(r.train.integer("accumulate"));
    c.label_smoothing = float(r.train.number("label_smoothing"));
    c.seed = std::uint64_t(r.run.integer("seed"));
    c.grad_clip = r.train.number("grad_clip");
    c.ema_decay = r.train.number("ema");
    c.mix = {r.train.number("mixup_alpha"), r.train.number("cutmix_alpha"), r.train.number("mix_prob"),
             r.train.number("mix_switch_prob")};
    c.max_bad_steps = int(r.train.integer("max_bad_steps"));
    c.loss_scale = loss_scale_of(r);
    c.sync_batchnorm = r.train.flag("sync_batchnorm");
    c.bucket_bytes = std::size_t(r.train.integer("bucket_mb")) << 20;
    c.epochs = int(r.train.integer("epochs"));
    c.checkpoint_every = int(r.checkpoint.integer("every_epochs"));
    c.run_dir = fs::path(r.run.text("out_dir")) / r.run.text("name");
    c.checkpoint_minutes = r.checkpoint.number("every_minutes");
    c.target_top1 = r.train.number("target_top1");
    c.keep_epochs = int(r.checkpoint.integer("keep"));
    c.stop_on_save_failure = r.checkpoint.text("on_failure") == "stop";
    return c;
}

/// Reads, overrides (`--set section.key=value`), checks and resolves a recipe; makes its data
/// source. Writes nothing. Every mistake is a user error naming the file and the key.
inline RunSpec open_run(const fs::path& file, const std::vector<std::string>& overrides) {
    RunSpec spec;
    spec.recipe = load(file, overrides);
    spec.registry = std::make_unique<plugin::Registry>(plugin_path(spec.recipe.effective));
    resolve(spec.recipe, *spec.registry);
    const Recipe& r = spec.recipe;
    spec.data = spec.registry->create<plugin::DataSource>(*r.data.entry, r.data.options);
    spec.info = spec.data->info();
    spec.num_classes = r.model.integer("num_classes") ? int(r.model.integer("num_classes")) : spec.info.num_classes;
    if (spec.num_classes < spec.info.num_classes)
        throw user_error(spec.where("model", "num_classes"),
                         std::to_string(spec.num_classes) + ", but the data has " +
                             std::to_string(spec.info.num_classes) + " classes",
                         "set num_classes = 0 to take the data's");
    spec.train = train_config(r);
    return spec;
}

}  // namespace tessera::recipe
