#pragma once
// The whole contract between tessera and its plugins. A plugin is one shared module that exports,
// with TESSERA_PLUGIN(...) below:
//   tessera_plugin_abi     int()                     abi_version it was built against
//   tessera_plugin_info    plugin::Info()            kind, name, description, options and defaults
//   tessera_plugin_create  std::unique_ptr<Kind>(const Options&)
// The host checks the ABI version first, then validates the recipe's table against Info::options
// (unknown keys, types) before calling create, so a factory sees every option it declared, with
// its default where the recipe gave none. Factories report a user's mistake (a missing file) by
// throwing tessera::Error from user_error(); the host prints it and exits 2.
//
// Only standard types cross this boundary. Change anything here and bump abi_version.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <variant>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/strings.hpp"

namespace tessera::plugin {

inline constexpr int abi_version = 6;

// ---- options -------------------------------------------------------------------------------------

using Value = std::variant<bool, std::int64_t, double, std::string, std::vector<double>>;

inline const char* type_name(const Value& v) {
    static const char* names[] = {"a boolean", "an integer", "a number", "a string", "a list of numbers"};
    return names[v.index()];
}

/// The values an option accepts beyond its type, declared once beside it and checked by the host
/// before a plugin is created: numbers (and each number of a list) within [min, max], either end
/// open; strings among `choices`. Numbers are always finite: TOML's nan and inf never pass.
struct Range {
    double min = -std::numeric_limits<double>::infinity(), max = std::numeric_limits<double>::infinity();
    bool min_open = false, max_open = false;
    std::vector<std::string> choices;

    bool contains(double x) const {
        return std::isfinite(x) && (min_open ? x > min : x >= min) && (max_open ? x < max : x <= max);
    }
    bool allows(const std::string& s) const {
        return choices.empty() || std::find(choices.begin(), choices.end(), s) != choices.end();
    }
    /// "at least 1", "in [0, 1)", "one of stop, continue": for messages.
    std::string describe() const {
        auto number = [](double x) { return shortest_decimal(x); };
        if (!choices.empty()) {
            std::string s = "one of ";
            for (std::size_t i = 0; i < choices.size(); ++i) s += (i ? ", " : "") + choices[i];
            return s;
        }
        const bool low = std::isfinite(min), high = std::isfinite(max);
        if (low && high)
            return std::string("in ") + (min_open ? "(" : "[") + number(min) + ", " + number(max) +
                   (max_open ? ")" : "]");
        if (low) return (min_open ? "above " : "at least ") + number(min);
        if (high) return (max_open ? "below " : "at most ") + number(max);
        return "a finite number";
    }
};

inline Range at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false, false, {}}; }
inline Range above(double lo) { return {lo, std::numeric_limits<double>::infinity(), true, false, {}}; }
inline Range between(double lo, double hi) { return {lo, hi, false, false, {}}; }       // [lo, hi]
inline Range from_to_below(double lo, double hi) { return {lo, hi, false, true, {}}; }  // [lo, hi)
inline Range above_to(double lo, double hi) { return {lo, hi, true, false, {}}; }       // (lo, hi]
inline Range inside(double lo, double hi) { return {lo, hi, true, true, {}}; }          // (lo, hi)
inline Range one_of(std::vector<std::string> choices) { return {0, 0, false, false, std::move(choices)}; }

struct Option {
    std::string name;
    Value default_value;
    std::string help;
    Range range = {};  // any finite number, any string
};

struct Info {
    std::string kind;  // "scheduler", "optimizer", "data", "logger"
    std::string name;
    std::string description;
    std::vector<Option> options;
};

/// A plugin's validated options: every declared option is present, with its declared type.
class Options {
public:
    Options() = default;
    explicit Options(std::map<std::string, Value> values) : values_(std::move(values)) {}

    bool flag(const std::string& k) const { return get<bool>(k); }
    std::int64_t integer(const std::string& k) const { return get<std::int64_t>(k); }
    double number(const std::string& k) const { return get<double>(k); }
    const std::string& text(const std::string& k) const { return get<std::string>(k); }
    const std::vector<double>& list(const std::string& k) const { return get<std::vector<double>>(k); }
    const std::map<std::string, Value>& values() const { return values_; }

private:
    template <class T>
    const T& get(const std::string& k) const {
        auto it = values_.find(k);
        if (it == values_.end() || !std::holds_alternative<T>(it->second))
            throw internal_error("plugin options", "option \"" + k + "\" was not declared with this type");
        return std::get<T>(it->second);
    }
    std::map<std::string, Value> values_;
};

// ---- schedulers ----------------------------------------------------------------------------------

/// Where training stands. Schedulers are pure functions of it, so a resumed run gets the same rates.
struct Clock {
    std::int64_t step = 0;  // optimizer steps taken so far, from 0
    std::int64_t total_steps = 1;
    std::int64_t steps_per_epoch = 1;
};

class Scheduler {
public:
    virtual ~Scheduler() = default;
    /// The learning rate for the step about to be taken.
    virtual double lr(const Clock& clock) const = 0;
    /// The momentum for that step, for schedulers that cycle it (OneCycleLR); none: the optimizer's own.
    virtual std::optional<double> momentum(const Clock&) const { return std::nullopt; }
};

// ---- optimizers ----------------------------------------------------------------------------------

/// One named tensor in the flat buffers; role is "conv_weight", "linear_weight", "linear_bias",
/// "bn_weight" or "bn_bias".
struct Tensor {
    std::string name;
    std::string role;
    std::size_t offset = 0, size = 0;
};

/// The model's trainable parameters and their gradients, each one flat buffer of `count` floats in
/// the memory of `device`: "cpu", or "cuda" (device pointers; launch work on `stream`, a
/// cudaStream_t, and never synchronise).
struct Parameters {
    float* values = nullptr;
    const float* grads = nullptr;
    std::size_t count = 0;
    std::vector<Tensor> tensors;
    std::string device = "cpu";
    void* stream = nullptr;
};

/// What the scheduler decided for one step.
struct StepRates {
    double lr = 0;
    std::optional<double> momentum;  // replaces the optimizer's momentum (or beta1) when set
};

/// An optimizer's state for checkpoints: named host copies, each of the parameters' count.
using OptimizerState = std::map<std::string, std::vector<float>>;

class Optimizer {
public:
    virtual ~Optimizer() = default;
    /// values -= update(grads, state, rates). Called once per optimizer step, with the same layout.
    virtual void step(const Parameters& params, const StepRates& rates) = 0;
    /// The state a resumed run needs to continue exactly (torch's optimizer.state_dict()), and its
    /// restoration before the first step. Empty before the first step.
    virtual OptimizerState state() const { return {}; }
    virtual void load_state(const OptimizerState&) {}
};

// ---- data ----------------------------------------------------------------------------------------

enum class Split { train, val };

struct DatasetInfo {
    int height = 0, width = 0, channels = 0;  // of the batches next() gives
    int num_classes = 0;
    std::int64_t train_size = 0, val_size = 0;
    std::vector<double> mean, std;         // per channel, in [0, 1] units: x = (pixel / 255 - mean) / std
    std::vector<std::string> class_names;  // may be empty
    int val_resize =
        0;  // validation: the shorter side resized to this, then the centre height x width (0: as they are)
};

struct EpochPlan {
    std::int64_t epoch = 0;
    std::uint64_t seed = 0;
    int batch_size = 1;
    int rank = 0, world_size = 1;  // each rank sees its own shard (DistributedSampler semantics)
    bool drop_last = false;        // true in training: every batch is full
    std::int64_t first_batch = 0;  // a resumed epoch starts here: the batches before it were trained on
};

struct Batch {
    int count = 0, height = 0, width = 0, channels = 0;
    std::vector<std::uint8_t> pixels;  // (count, height, width, channels)
    std::vector<std::int32_t> labels;  // (count)
};

class DataSource {
public:
    virtual ~DataSource() = default;
    virtual DatasetInfo info() const = 0;
    /// Batches in this epoch's order for this rank.
    virtual std::int64_t num_batches(Split split, const EpochPlan& plan) const = 0;
    virtual void start_epoch(Split split, const EpochPlan& plan) = 0;
    /// Fills the next batch; false when the epoch is done. `batch` is reused between calls.
    virtual bool next(Batch& batch) = 0;
    /// Samples of the current epoch that could not be read and were replaced by others.
    virtual std::int64_t bad_samples() const { return 0; }
};

// ---- loggers -------------------------------------------------------------------------------------

struct RunInfo {
    std::string name, run_dir, arch;
    int epochs = 0, batch_size = 0;
    std::int64_t steps_per_epoch = 0, parameters = 0;
    int first_epoch = 1;          // a resumed run starts later: loggers keep what earlier epochs wrote
    std::int64_t first_step = 0;  // optimizer steps already taken when this process started
    std::string recipe;           // the effective recipe, TOML
    bool has_ema = false;         // epochs report the EMA's validation too
    std::string device, kernels;  // "cpu", "onednn avx2, openblas Haswell"
};

struct StepStats {
    int epoch = 0;                      // from 1
    std::int64_t step = 0, steps = 0;   // within the epoch, step from 1
    double loss = 0, top1 = 0, lr = 0;  // loss and top-1 are running means over the epoch
    double img_per_s = 0, elapsed_s = 0, eta_s = 0;
    std::int64_t global_step = 0;  // optimizer steps taken since the run began
};

struct EpochStats {
    int epoch = 0, epochs = 0;
    double lr = 0, train_loss = 0, train_top1 = 0;
    double val_loss = 0, val_top1 = 0, val_top5 = 0;
    double img_per_s = 0, time_s = 0;
    std::int64_t bad_samples = 0;  // unreadable training and validation samples replaced in this epoch
    bool has_ema = false;          // the EMA of the weights was evaluated too ([train] ema)
    double ema_val_loss = 0, ema_val_top1 = 0, ema_val_top5 = 0;
    std::int64_t global_step = 0;    // optimizer steps taken when the epoch ended
    std::int64_t skipped_steps = 0;  // steps of this epoch whose gradients were not finite, so not taken
};

class Logger {
public:
    virtual ~Logger() = default;
    virtual void on_run_begin(const RunInfo&) {}
    virtual void on_step(const StepStats&) {}
    virtual void on_epoch(const EpochStats&) {}
    virtual void on_run_end() {}
};

template <class T>
inline constexpr const char* kind_of = nullptr;
template <>
inline constexpr const char* kind_of<Scheduler> = "scheduler";
template <>
inline constexpr const char* kind_of<Optimizer> = "optimizer";
template <>
inline constexpr const char* kind_of<DataSource> = "data";
template <>
inline constexpr const char* kind_of<Logger> = "logger";

}  // namespace tessera::plugin

#ifndef BOOST_DLL_USE_STD_FS
#define BOOST_DLL_USE_STD_FS
#endif
#include <boost/dll/alias.hpp>

/// Exports a plugin: TESSERA_PLUGIN(Scheduler, info_function, create_function).
#define TESSERA_PLUGIN(Kind, info_function, create_function)                                               \
    namespace tessera_plugin_exports {                                                                     \
    inline int exported_abi() { return ::tessera::plugin::abi_version; }                                   \
    inline ::tessera::plugin::Info exported_info() {                                                       \
        ::tessera::plugin::Info i = info_function();                                                       \
        i.kind = ::tessera::plugin::kind_of<::tessera::plugin::Kind>;                                      \
        return i;                                                                                          \
    }                                                                                                      \
    inline std::unique_ptr<::tessera::plugin::Kind> exported_create(const ::tessera::plugin::Options& o) { \
        return create_function(o);                                                                         \
    }                                                                                                      \
    }                                                                                                      \
    BOOST_DLL_ALIAS(tessera_plugin_exports::exported_abi, tessera_plugin_abi)                              \
    BOOST_DLL_ALIAS(tessera_plugin_exports::exported_info, tessera_plugin_info)                            \
    BOOST_DLL_ALIAS(tessera_plugin_exports::exported_create, tessera_plugin_create)
