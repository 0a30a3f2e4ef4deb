#pragma once
// RunFolder: what a run keeps on disk, and how a save is committed so that a kill at any instant
// leaves a whole checkpoint to resume from.
//
//   checkpoints/<serial>/model.safetensors        the weights and BatchNorm statistics (a state_dict)
//   checkpoints/<serial>/model.state.safetensors  the optimizer's state and where training stood
//   checkpoints/<serial>/model.ema.safetensors    the weights' moving average, if the run keeps one
//   checkpoints/current                           the name of the newest whole set
//   last.safetensors, last.state.safetensors, last.ema.safetensors   the current set's files, linked
//   best.safetensors, epoch_<N>.safetensors       single files
//
// A save writes a new set's files into a folder of their own, flushes them to the disk, then
// renames a new `current` over the old one: that rename, atomic in POSIX, is the commit. Before it
// the previous set is current and untouched; after it the new one is. Only then are the `last.*`
// names pointed at the new files and older sets removed; resume reads `current`, never the names.
#include <csignal>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/json.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/plugin/api.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/loss_scale.hpp"
#include "tessera/train/metrics.hpp"

namespace tessera::train {

namespace fs = std::filesystem;

/// Where training stands: the next step is batch `batch` of epoch `epoch` (from 1), with `meter` the
/// figures of the epoch's steps so far.
struct Progress {
    int epoch = 1;
    std::int64_t batch = 0;  // batches of the epoch done: optimizer steps times accumulate
    Meter meter;
    double best_top1 = -1;
};

/// What a run must keep to continue from a checkpoint: its network, and the batches its epochs
/// hold (batch size per rank, ranks, batches per step).
struct RunShape {
    std::string arch;
    int batch_size = 0, world_size = 1, accumulate = 1;
};

/// A checkpoint as read back: the weights' file, the training state and where it stood.
struct SavedCheckpoint {
    fs::path weights, average;  // average: empty when the set has none of the same step
    checkpoint::TrainingState state;
    std::map<std::string, std::string> metadata;  // the weights' metadata
    Progress progress;
    std::int64_t step = 0;

    /// A number of the state's metadata; a user error naming the file when it is missing or not one.
    double number(const std::string& key) const;
    /// Refuses a run that cannot continue from here: another network, or epochs of other batches.
    void check_continues(const RunShape& run) const;
    /// The same, for keys that checkpoints before them lack.
    std::optional<double> optional_number(const std::string& key) const {
        if (!state.metadata.count(key)) return std::nullopt;
        return number(key);
    }
};

class RunFolder {
public:
    explicit RunFolder(fs::path dir) : dir_(std::move(dir)) {}

    const fs::path& path() const { return dir_; }

    static fs::path state_file(const fs::path& weights) {
        return weights.parent_path() / (weights.stem().string() + ".state.safetensors");
    }
    /// The weights' moving average saved with `weights`: a checkpoint that eval and predict take too.
    static fs::path ema_file(const fs::path& weights) {
        return weights.parent_path() / (weights.stem().string() + ".ema.safetensors");
    }

    /// The weights of the newest whole checkpoint set; a run folder of an older tessera, which has
    /// last.safetensors and no sets, gives that; none: nothing to resume.
    std::optional<fs::path> latest() const {
        if (const std::string name = current_set(); !name.empty()) {
            const fs::path weights = dir_ / "checkpoints" / name / "model.safetensors";
            if (!fs::exists(weights))
                throw user_error((dir_ / "checkpoints" / "current").string(),
                                 "names the checkpoint set \"" + name + "\", which is missing",
                                 "resume from a copy (--resume PATH), or start over with --fresh");
            return weights;
        }
        if (fs::exists(dir_ / "last.safetensors")) return dir_ / "last.safetensors";
        return std::nullopt;
    }

    /// `path` as given to --resume: a run folder's last.safetensors means its current set (the
    /// names may be caught between two saves); any other file is taken as it is.
    static fs::path resolve(const fs::path& path) {
        if (path.filename() == "last.safetensors" && fs::exists(path.parent_path() / "checkpoints" / "current"))
            return *RunFolder(path.parent_path()).latest();
        return path;
    }

    /// Points the last.* names at the current set's files, where a save was stopped between its
    /// commit and their update: resume reads the set, and users the names.
    void refresh_names() {
        const std::string name = current_set();
        if (name.empty()) return;
        const fs::path folder = dir_ / "checkpoints" / name;
        for (auto [file, link_name] : {std::pair{"model.safetensors", "last.safetensors"},
                                       {"model.state.safetensors", "last.state.safetensors"},
                                       {"model.ema.safetensors", "last.ema.safetensors"}}) {
            std::error_code ec;
            if (!fs::exists(folder / file))
                remove(dir_ / link_name);
            else if (!fs::equivalent(folder / file, dir_ / link_name, ec))
                link(file, link_name, folder);
        }
    }

    /// What to call a checkpoint in messages: a set's weights by the name users know, the run
    /// folder's last.safetensors.
    static fs::path display_name(const fs::path& weights) {
        const fs::path set = weights.parent_path();
        if (set.parent_path().filename() == "checkpoints") return set.parent_path().parent_path() / "last.safetensors";
        return weights;
    }

    /// Commits a checkpoint set: the training state, and the files that write_weights(path, files)
    /// and, with has_average, write_average(path, files) add to the set.
    template <class Weights, class Average>
    void save_checkpoint(const checkpoint::TrainingState& state, Weights write_weights, Average write_average,
                         bool has_average) {
        const fs::path sets = dir_ / "checkpoints";
        const std::string name = next_set_name();
        const fs::path folder = sets / name;
        std::error_code ec;
        file_operation();
        fs::remove_all(folder, ec);  // what a killed save left under this name
        file_operation();
        fs::create_directories(folder, ec);
        if (ec)
            throw user_error(folder.string(), "cannot create the checkpoint folder: " + ec.message(),
                             "check that the run folder is writable");
        {
            checkpoint::FileSet files;
            checkpoint::save_state(state, folder / "model.state.safetensors", &files);
            if (has_average) write_average(folder / "model.ema.safetensors", &files);
            write_weights(folder / "model.safetensors", &files);
            files.commit();
        }
        checkpoint::detail::sync_to_disk(folder);
        // The commit.
        write_text(sets / "current.tmp", name + "\n");
        file_operation();
        fs::rename(sets / "current.tmp", sets / "current", ec);
        if (ec) throw user_error((sets / "current").string(), "cannot commit the checkpoint: " + ec.message());
        checkpoint::detail::sync_to_disk(sets);
        // The names users know point at the new set; older sets go.
        link("model.safetensors", "last.safetensors", folder);
        link("model.state.safetensors", "last.state.safetensors", folder);
        if (has_average)
            link("model.ema.safetensors", "last.ema.safetensors", folder);
        else
            remove(dir_ / "last.ema.safetensors");
        for (auto& entry : fs::directory_iterator(sets, ec))
            if (entry.path().filename() != name && entry.path().filename() != "current") remove(entry.path());
    }

    /// Reads a checkpoint for resuming: the weights' metadata and the training state beside them,
    /// which must be of the same step. Every problem is a user error naming the file.
    static SavedCheckpoint read(const fs::path& weights) {
        SavedCheckpoint saved;
        saved.weights = weights;
        const auto state_path = state_file(weights);
        if (!fs::exists(state_path))
            throw user_error(weights.string(),
                             "has no training state beside it (" + state_path.filename().string() + ")",
                             "resume from a run's last.safetensors, or start over with --fresh");
        saved.metadata = checkpoint::read_metadata(weights);
        saved.state = checkpoint::load_state(state_path);
        for (const char* key : {"epoch", "batch", "step"})
            if (!saved.metadata.count(key) || !saved.state.metadata.count(key) ||
                saved.metadata.at(key) != saved.state.metadata.at(key))
                throw user_error(state_path.string(),
                                 "does not belong to " + weights.filename().string() +
                                     " (their epoch, batch or step differ): a save was interrupted",
                                 "start over with --fresh, or resume from a copy that is whole");
        const double epoch = saved.number("epoch"), batch = saved.number("batch"), step = saved.number("step");
        if (epoch < 1 || epoch > 1e6 || batch < 0 || step < 0 || epoch != std::floor(epoch) ||
            batch != std::floor(batch))
            throw user_error(state_path.string(),
                             "holds no position a run can be at (epoch " + saved.state.metadata.at("epoch") +
                                 ", batch " + saved.state.metadata.at("batch") + ")",
                             "start over with --fresh");
        saved.progress = {int(epoch), std::int64_t(batch), Meter{}, saved.number("best_top1")};
        saved.progress.meter = {saved.number("loss_sum"), std::int64_t(saved.number("top1")),
                                std::int64_t(saved.number("top5")), std::int64_t(saved.number("count"))};
        saved.step = std::int64_t(step);
        if (fs::exists(ema_file(weights))) {
            const auto average = checkpoint::read_metadata(ema_file(weights));
            if (average.count("step") && average.at("step") == saved.metadata.at("step"))
                saved.average = ema_file(weights);
        }
        return saved;
    }

    /// One file replaced whole: best.safetensors, epoch_<N>.safetensors.
    template <class Write>
    void save_file(const std::string& name, Write write) {
        checkpoint::FileSet files;
        write(dir_ / name, &files);
        files.commit();
    }
    void remove_file(const std::string& name) { remove(dir_ / name); }

    /// Counts the file operations of saves, and kills the process before the one that
    /// TESSERA_KILL_AT_FILE_OP names (from 1): the fault tests' way to stop a save between any two
    /// of its operations, as a power cut or SIGKILL would.
    static void file_operation() { checkpoint::detail::file_operation(); }

private:
    // The name `checkpoints/current` holds: the newest whole set's folder ("" where there is none).
    std::string current_set() const {
        std::ifstream pointer(dir_ / "checkpoints" / "current");
        std::string name;
        pointer >> name;
        return name;
    }

    // The set after the current one: its serial plus one, six digits.
    std::string next_set_name() const {
        char name[32];
        std::snprintf(name, sizeof name, "%06lld", std::atoll(current_set().c_str()) + 1);
        return name;
    }

    static void write_text(const fs::path& path, const std::string& text) {
        file_operation();
        std::ofstream out(path, std::ios::trunc);
        if (!out) throw user_error(path.string(), "cannot open for writing", "check that the run folder is writable");
        out << text;
        out.flush();
        if (!out) throw user_error(path.string(), "write failed (disk full?)", "free some space and try again");
        out.close();
        checkpoint::detail::sync_to_disk(path);
    }

    // dir/name becomes the set's file: a hard link (no copy), put in place by a rename; a copy where
    // the filesystem has no hard links.
    void link(const std::string& file, const std::string& name, const fs::path& folder) {
        const fs::path tmp = dir_ / (name + ".tmp");
        std::error_code ec;
        fs::remove(tmp, ec);
        file_operation();
        fs::create_hard_link(folder / file, tmp, ec);
        if (ec) fs::copy_file(folder / file, tmp, fs::copy_options::overwrite_existing, ec);
        if (ec) throw user_error(tmp.string(), "cannot link the checkpoint: " + ec.message());
        file_operation();
        fs::rename(tmp, dir_ / name, ec);
        if (ec) throw user_error((dir_ / name).string(), "cannot replace the checkpoint: " + ec.message());
    }

    static void remove(const fs::path& path) {
        std::error_code ec;
        if (!fs::exists(path, ec)) return;
        file_operation();
        fs::remove_all(path, ec);
    }

    fs::path dir_;
};

inline double SavedCheckpoint::number(const std::string& key) const {
    const fs::path file = RunFolder::state_file(weights);
    const auto it = state.metadata.find(key);
    if (it == state.metadata.end())
        throw user_error(file.string(),
                         "has no \"" + key + "\" in its metadata: it is damaged or not a tessera training state",
                         "resume from another copy (--resume PATH), or start over with --fresh");
    char* end = nullptr;
    const double x = std::strtod(it->second.c_str(), &end);
    if (it->second.empty() || *end || !std::isfinite(x))
        throw user_error(file.string(), "\"" + key + "\" in its metadata is \"" + it->second + "\", not a number",
                         "resume from another copy (--resume PATH), or start over with --fresh");
    return x;
}

inline void SavedCheckpoint::check_continues(const RunShape& run) const {
    const std::string file = weights.string();
    if (metadata.count("arch") && metadata.at("arch") != run.arch)
        throw user_error(file, "holds a " + metadata.at("arch") + ", but the recipe builds a " + run.arch,
                         "resume with the recipe that made it, or start over with --fresh");
    const auto batch_size = optional_number("batch_size"), ranks = optional_number("world_size");
    if ((batch_size && *batch_size != run.batch_size) || (ranks && *ranks != run.world_size))
        throw user_error(
            file,
            "was saved by " + std::to_string(std::int64_t(ranks.value_or(run.world_size))) + " process(es) of batch " +
                std::to_string(std::int64_t(batch_size.value_or(run.batch_size))) + ", and this run has " +
                std::to_string(run.world_size) + " of batch " + std::to_string(run.batch_size) +
                ": its epochs hold other batches, and it would go on at the wrong place",
            "resume with the data.batch_size and number of processes it was started with, or start over with --fresh");
    if (progress.batch % run.accumulate != 0)
        throw user_error(
            file,
            "was saved after batch " + std::to_string(progress.batch) +
                " of its epoch, which is no whole step of train.accumulate = " + std::to_string(run.accumulate),
            "resume with the accumulate the run was started with");
}

/// The training state a checkpoint set holds: the optimizer's state, and as metadata where training
/// stood (`at`, its meter summed over the ranks), the run's shape and the loss scale; what
/// RunFolder::read reads back.
inline checkpoint::TrainingState training_state(std::map<std::string, std::string> metadata,
                                                plugin::OptimizerState optimizer, const Progress& at,
                                                const RunShape& run, const LossScaler& scaler) {
    checkpoint::TrainingState state{std::move(metadata), std::move(optimizer)};
    for (auto& [key, value] : std::map<std::string, double>{{"loss_sum", at.meter.loss_sum},
                                                            {"top1", double(at.meter.top1)},
                                                            {"top5", double(at.meter.top5)},
                                                            {"count", double(at.meter.count)},
                                                            {"best_top1", at.best_top1},
                                                            {"batch_size", double(run.batch_size)},
                                                            {"world_size", double(run.world_size)},
                                                            {"accumulate", double(run.accumulate)}})
        state.metadata[key] = shortest_decimal(value);
    if (scaler.dynamic()) {
        state.metadata["loss_scale"] = shortest_decimal(scaler.scale());
        state.metadata["loss_scale_good_steps"] = std::to_string(scaler.good_steps());
    }
    return state;
}

/// What a checkpoint says of the model, for `runner predict`, `eval` and `export` to use the weights
/// alone: the architecture, the input size, its normalisation, the validation resize, the classes.
inline std::map<std::string, std::string> model_metadata(const std::string& arch, const plugin::DatasetInfo& info) {
    auto numbers = [](const std::vector<double>& v) {
        std::vector<std::string> each;
        for (double x : v) each.push_back(shortest_decimal(float(x)));  // the floats they become
        return join(each, ",");
    };
    std::map<std::string, std::string> m = {{"arch", arch},
                                            {"input_height", std::to_string(info.height)},
                                            {"input_width", std::to_string(info.width)},
                                            {"val_resize", std::to_string(info.val_resize)},
                                            {"mean", numbers(info.mean)},
                                            {"std", numbers(info.std)}};
    if (!info.class_names.empty()) {
        std::vector<std::string> quoted;
        for (auto& n : info.class_names) quoted.push_back(json::quote(n));
        std::string& names = m["class_names"];
        names = "[";
        names += join(quoted);
        names += ']';
    }
    return m;
}

}  // namespace tessera::train
