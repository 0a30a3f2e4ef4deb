// runner parity RECIPE: the recipe's training, run by tessera and by PyTorch side by side, step by
// step. tessera trains first, from weights it writes (initial.safetensors, torchvision's names),
// recording every batch it trains on as the network sees it (after augmentation, mixup, cutmix);
// bench/parity/torch_side.py then trains torchvision's model, loaded from those weights, on those
// batches with torch.optim and torch.optim.lr_scheduler as the recipe maps to them
// (parity_mapping.cpp), once in the recipe's precision and once, over the checked steps, in fp64.
// The report: both losses and rates at every step, the relative L2 difference of the weights and
// BatchNorm statistics at every snapshot, the first step at which the two part by more than a
// tolerance and the tensor that parted first, and the test accuracy of both (--eval).
//
// What can be asked of two fp32 implementations. The first step starts from the same weights and
// batch, so its loss agrees to rounding (about 1e-7). From then on each side's rounding moves it off
// the exact trajectory, and ResNets with BatchNorm amplify that: a ReLU input within rounding of
// zero flips its mask, which moves the gradient by up to a percent (a ResNet-20's fp64 gradient,
// after one step on 16 px images, moved by 7e-3 when its input moved by 1e-6, by 2e-7 when by
// 1e-7), and training carries it on. So
// PyTorch's own fp32 run parts from its fp64 run: on the quick start by 1.2e-3 in the loss within
// 5 steps. The check therefore holds tessera to the tolerances asked (--loss-tol 1e-4,
// --weight-tol 1e-3), or, where PyTorch's fp32 run is further than that from the fp64 run, to
// twice PyTorch's distance: two runs each as far from the exact one as PyTorch's are at most twice
// that far from each other. The first step and the rates of every step are held to the tolerance
// itself. Exit 0 when the check holds over the first --check-steps steps; 3 when not.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "parity.hpp"
#include "runner.hpp"
#include "tessera/core/json.hpp"
#include "tessera/report/svg_chart.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/evaluate.hpp"
#include "tessera/train/step.hpp"

namespace tessera::runner {

namespace fs = std::filesystem;

namespace {

/// One side's step: the rate and momentum it used and its loss before the update.
struct StepRecord {
    double lr = 0, momentum = 0, loss = 0;
};

/// The relative L2 difference ||a - b|| / ||b|| of the weights and of BatchNorm's running
/// statistics, b being PyTorch's, and the tensor whose own relative difference is largest.
struct Difference {
    double weights = 0, statistics = 0, worst = 0;
    std::string worst_name;
};

Difference compare(const models::ParamStore& a, const models::ParamStore& b) {
    Difference d;
    auto side = [&](const std::vector<models::ParamEntry>& entries, const std::vector<float>& x,
                    const std::vector<float>& y, double& total) {
        double diff = 0, norm = 0;
        for (auto& e : entries) {
            if (e.role == models::Role::num_batches_tracked) continue;
            double de = 0, ne = 0, na = 0;
            for (std::size_t i = e.offset; i < e.offset + e.size; ++i) {
                const double u = x[i], v = y[i];
                de += (u - v) * (u - v), ne += v * v, na += u * u;
            }
            diff += de, norm += ne;
            const double scale = std::sqrt(std::max(ne, na));
            const double rel = scale > 0 ? std::sqrt(de) / scale : 0;
            if (rel > d.worst) d.worst = rel, d.worst_name = e.name;
        }
        total = norm > 0 ? std::sqrt(diff / norm) : std::sqrt(diff);
    };
    side(a.params, a.values, b.values, d.weights);
    side(a.buffer_entries, a.buffers, b.buffers, d.statistics);
    return d;
}

/// The PyTorch side's script: $TESSERA_PARITY_SCRIPT (a PyTorch side of your own, or one with a
/// planted mistake for a test), else next to an installed runner, else in the source tree.
fs::path torch_script() {
    if (const char* own = std::getenv("TESSERA_PARITY_SCRIPT"); own && *own) {
        if (!fs::exists(own))
            throw user_error(std::string("TESSERA_PARITY_SCRIPT=") + own, "no such file",
                             "unset it to use the PyTorch side installed with tessera");
        return own;
    }
    std::vector<fs::path> places;
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) places.push_back(exe.parent_path() / ".." / TESSERA_DATA_RELATIVE_DIR / "parity");
    places.emplace_back(fs::path(TESSERA_DATA_INSTALL_DIR) / "parity");
#ifdef TESSERA_SOURCE_PARITY_DIR
    places.emplace_back(TESSERA_SOURCE_PARITY_DIR);
#endif
    for (auto& dir : places)
        if (fs::exists(dir / "torch_side.py")) return dir / "torch_side.py";
    throw user_error("runner parity", "bench/parity/torch_side.py is not installed next to this runner",
                     "reinstall tessera");
}

/// Debian's python3-torch lives in the system Python: $TESSERA_PYTHON, else /usr/bin/python3 where
/// it exists, else python3 on the PATH.
std::string python() {
    if (const char* p = std::getenv("TESSERA_PYTHON"); p && *p) return p;
    return fs::exists("/usr/bin/python3") ? "/usr/bin/python3" : "python3";
}

std::string shell_quote(const std::string& s) {
    std::string out = "'";
    for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    return out + "'";
}

double positive(const Args& args, const char* name, double fallback) {
    const auto v = args.value(name);
    if (!v) return fallback;
    char* end = nullptr;
    const double x = std::strtod(v->c_str(), &end);
    if (end == v->c_str() || *end || !(x > 0))
        throw user_error(std::string("runner parity --") + name, "\"" + *v + "\" is not a positive number");
    return x;
}

template <class T>
void append(std::ofstream& out, const T* data, std::size_t count, const fs::path& file) {
    out.write(reinterpret_cast<const char*>(data), std::streamsize(count * sizeof(T)));
    if (!out) throw user_error(file.string(), "cannot write", "is the disk full?");
}

std::vector<StepRecord> read_torch_steps(const fs::path& file) {
    std::ifstream in(file);
    if (!in) throw user_error(file.string(), "the PyTorch side wrote no steps", "its output above says why");
    std::vector<StepRecord> steps;
    std::string line;
    std::getline(in, line);  // step,lr,momentum,loss
    while (std::getline(in, line)) {
        StepRecord r;
        long long step = 0;
        if (std::sscanf(line.c_str(), "%lld,%lf,%lf,%lf", &step, &r.lr, &r.momentum, &r.loss) == 4) steps.push_back(r);
    }
    return steps;
}

json::Object read_json(const fs::path& file) {
    std::ifstream in(file);
    std::stringstream text;
    text << in.rdbuf();
    const json::Value v = json::parse(text.str(), file.string());
    if (!v.is_object()) throw user_error(file.string(), "is not a JSON object");
    return v.object();
}

double relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-30); }

/// A number for JSON: null when not finite.
std::string num(double x) {
    if (!std::isfinite(x)) return "null";
    char text[32];
    std::snprintf(text, sizeof text, "%.6g", x);
    return text;
}

/// One side's run: its steps and what it measured at the end (seconds, test accuracy).
struct Side {
    std::string name;
    std::vector<StepRecord> steps;
    json::Object result;

    double number(const std::string& key) const {
        const auto it = result.find(key);
        return it != result.end() && it->second.is_number() ? it->second.number() : NAN;
    }
    std::string text(const std::string& key) const {
        const auto it = result.find(key);
        return it != result.end() && it->second.is_string() ? it->second.string() : "";
    }
    void set(const std::string& key, double x) { result[key] = json::Value{x}; }
    bool empty() const { return steps.empty(); }
};

/// The weights after one step count: tessera against PyTorch, and each against the fp64 run.
struct Snapshot {
    std::int64_t step = 0;
    Difference ours, average, ours_exact, theirs_exact;
};

double loss_difference(const Side& x, const Side& y, std::size_t i) {
    return relative(x.steps[i].loss, y.steps[i].loss);
}

/// The largest relative loss difference between two sides over the first `steps` steps, and where.
std::pair<double, std::int64_t> largest_loss_difference(const Side& x, const Side& y, std::int64_t steps) {
    std::pair<double, std::int64_t> worst{0, 0};
    for (std::int64_t i = 0; i < steps; ++i)
        if (const double d = loss_difference(x, y, std::size_t(i)); !(d <= worst.first)) worst = {d, i + 1};
    return worst;
}

/// What the check found. The limits: the tolerances asked for, or twice PyTorch fp32's distance
/// from the fp64 run where that is larger (see the top of this file).
struct Verdict {
    std::int64_t check_steps = 0;
    double loss_tol = 0, weight_tol = 0;  // as asked
    double loss_limit = 0, weight_limit = 0, statistics_limit = 0;
    std::pair<double, std::int64_t> loss{0, 0}, theirs_exact_loss{0, 0}, ours_exact_loss{0, 0};
    std::int64_t loss_parts_at = 0, rates_part_at = 0, weights_part_at = 0;
    std::string parted_first;
    const Snapshot* at_check = nullptr;
    // The loss curves over the run: each side's mean loss over its last (up to) 50 steps.
    double mean_tol = 0, last_mean_ours = 0, last_mean_theirs = 0;
    bool stepwise = true;  // fp32 and tf32 are held step by step; bf16's rounding parts at once
    bool first_step = false, passed = false;
};

/// The mean loss over the last `count` steps (all of them when fewer).
double last_mean(const Side& side, std::size_t count) {
    const std::size_t n = std::min(count, side.steps.size());
    double sum = 0;
    for (std::size_t i = side.steps.size() - n; i < side.steps.size(); ++i) sum += side.steps[i].loss;
    return n ? sum / double(n) : NAN;
}

Verdict judge(const Side& ours, const Side& theirs, const Side& truth, const std::vector<Snapshot>& snapshots,
              std::int64_t check_steps, double loss_tol, double weight_tol, double mean_tol, bool stepwise) {
    Verdict v;
    v.mean_tol = mean_tol, v.stepwise = stepwise;
    v.last_mean_ours = last_mean(ours, 50), v.last_mean_theirs = last_mean(theirs, 50);
    v.check_steps = check_steps;
    v.loss_tol = loss_tol, v.weight_tol = weight_tol;
    v.loss = largest_loss_difference(ours, theirs, check_steps);
    v.loss_limit = loss_tol, v.weight_limit = weight_tol, v.statistics_limit = weight_tol;
    for (auto& s : snapshots)
        if (s.step == check_steps) v.at_check = &s;
    if (!truth.empty()) {
        v.theirs_exact_loss = largest_loss_difference(theirs, truth, check_steps);
        v.ours_exact_loss = largest_loss_difference(ours, truth, check_steps);
        v.loss_limit = std::max(loss_tol, 2 * v.theirs_exact_loss.first);
        if (v.at_check) {
            v.weight_limit = std::max(weight_tol, 2 * v.at_check->theirs_exact.weights);
            v.statistics_limit = std::max(weight_tol, 2 * v.at_check->theirs_exact.statistics);
        }
    }
    for (std::size_t i = 0; i < ours.steps.size(); ++i) {
        if (!v.loss_parts_at && !(loss_difference(ours, theirs, i) <= loss_tol)) v.loss_parts_at = std::int64_t(i) + 1;
        if (!v.rates_part_at && (relative(ours.steps[i].lr, theirs.steps[i].lr) > 1e-6 ||
                                 std::abs(ours.steps[i].momentum - theirs.steps[i].momentum) > 1e-6))
            v.rates_part_at = std::int64_t(i) + 1;
    }
    for (auto& s : snapshots)
        if (!(std::max(s.ours.weights, s.ours.statistics) <= weight_tol)) {
            v.weights_part_at = s.step, v.parted_first = s.ours.worst_name;
            break;
        }
    // The first step's loss comes from the same weights and the same batch: no rounding has been
    // amplified yet, so it holds to the tolerance asked for.
    // bf16 rounds each side's activations in its own places from the first layer on: its first step
    // agrees to bf16's precision, and its curves statistically.
    const double first_tol = stepwise ? loss_tol : std::max(loss_tol, 1e-2);
    v.first_step = !ours.steps.empty() && loss_difference(ours, theirs, 0) <= first_tol;
    const bool curves = relative(v.last_mean_ours, v.last_mean_theirs) <= mean_tol;
    const bool steps = v.loss.first <= v.loss_limit && v.at_check && v.at_check->ours.weights <= v.weight_limit &&
                       v.at_check->ours.statistics <= v.statistics_limit;
    v.passed = v.first_step && !v.rates_part_at && curves && (steps || !stepwise);
    return v;
}

void write_report(const fs::path& dir, const recipe::RunSpec& spec, const Side& ours, const Side& theirs,
                  const Side& truth, const std::vector<Snapshot>& snapshots) {
    std::ofstream csv(dir / "parity.csv");
    csv << "step,lr_tessera,lr_torch,momentum_tessera,momentum_torch,loss_tessera,loss_torch,loss_torch_fp64,"
           "loss_rel_diff,weights_rel_l2,statistics_rel_l2,weights_rel_l2_tessera_fp64,weights_rel_l2_torch_fp64\n";
    std::size_t next = 0;
    for (std::size_t i = 0; i < ours.steps.size(); ++i) {
        const auto &o = ours.steps[i], &t = theirs.steps[i];
        csv << i + 1 << ',' << o.lr << ',' << t.lr << ',' << o.momentum << ',' << t.momentum << ',' << o.loss << ','
            << t.loss << ',';
        if (i < truth.steps.size()) csv << truth.steps[i].loss;
        csv << ',' << relative(o.loss, t.loss) << ',';
        while (next < snapshots.size() && snapshots[next].step < std::int64_t(i) + 1) ++next;
        if (next < snapshots.size() && snapshots[next].step == std::int64_t(i) + 1) {
            const Snapshot& s = snapshots[next];
            csv << s.ours.weights << ',' << s.ours.statistics << ',';
            if (!truth.empty() && s.step <= std::int64_t(truth.steps.size()))
                csv << s.ours_exact.weights << ',' << s.theirs_exact.weights;
            else
                csv << ',';
        } else {
            csv << ",,,";
        }
        csv << '\n';
    }
    const std::string torch = "PyTorch " + theirs.text("torch");
    auto loss_series = [](const Side& side, std::string name, const char* colour) {
        report::Series s{std::move(name), colour, {}, {}};
        for (std::size_t i = 0; i < side.steps.size(); ++i)
            s.x.push_back(double(i + 1)), s.y.push_back(side.steps[i].loss);
        return s;
    };
    std::ofstream svg(dir / "parity.svg");
    svg << report::svg_chart("step; training loss, " + spec.arch() + ", " + spec.recipe.file.filename().string(),
                             {loss_series(ours, "tessera", "#1f77b4"), loss_series(theirs, torch, "#d62728")})
        << "\n";
    std::vector<report::Series> weights{{"tessera vs PyTorch", "#1f77b4", {}, {}}};
    if (!truth.empty()) {
        weights.push_back({"tessera vs fp64", "#2ca02c", {}, {}});
        weights.push_back({"PyTorch vs fp64", "#d62728", {}, {}});
    }
    for (auto& s : snapshots) {
        const double y[3] = {s.ours.weights, s.ours_exact.weights, s.theirs_exact.weights};
        const std::size_t sides = s.step <= std::int64_t(truth.steps.size()) ? weights.size() : 1;
        for (std::size_t k = 0; k < sides; ++k) weights[k].x.push_back(double(s.step)), weights[k].y.push_back(y[k]);
    }
    std::ofstream svg2(dir / "parity_weights.svg");
    svg2 << report::svg_chart("step; relative L2 difference of the weights", weights) << "\n";
    if (!csv.flush() || !svg.flush() || !svg2.flush())
        throw user_error(dir.string(), "cannot write the report", "is the disk full?");
}

std::string summary_json(const recipe::RunSpec& spec, const ParityShape& shape, std::int64_t check_steps,
                         const Side& ours, const Side& theirs, const Side& truth, const Verdict& v) {
    std::ostringstream out;
    auto pair = [&](const char* key) { return "[" + num(ours.number(key)) + ", " + num(theirs.number(key)) + "]"; };
    const Snapshot* c = v.at_check;
    out << "{\"recipe\": " << json::quote(spec.recipe.file.string()) << ", \"arch\": " << json::quote(spec.arch())
        << ", \"steps\": " << shape.steps << ", \"batch_size\": " << spec.train.batch_size
        << ", \"device\": " << json::quote(spec.device()) << ", \"precision\": " << json::quote(spec.precision())
        << ", \"torch\": " << json::quote(theirs.text("torch")) << ", \"check_steps\": " << check_steps
        << ", \"first_step_loss_rel_diff\": " << num(loss_difference(ours, theirs, 0))
        << ", \"max_loss_rel_diff\": " << num(v.loss.first) << ", \"loss_limit\": " << num(v.loss_limit)
        << ", \"loss_parts_at\": " << v.loss_parts_at << ", \"rates_part_at\": " << v.rates_part_at
        << ", \"weights_rel_l2\": " << num(c ? c->ours.weights : NAN)
        << ", \"statistics_rel_l2\": " << num(c ? c->ours.statistics : NAN)
        << ", \"weight_limit\": " << num(v.weight_limit) << ", \"weights_part_at\": " << v.weights_part_at
        << ", \"parted_first\": " << json::quote(v.parted_first);
    if (!truth.empty())
        out << ", \"fp64\": {\"tessera_max_loss_rel_diff\": " << num(v.ours_exact_loss.first)
            << ", \"torch_max_loss_rel_diff\": " << num(v.theirs_exact_loss.first)
            << ", \"tessera_weights_rel_l2\": " << num(c ? c->ours_exact.weights : NAN)
            << ", \"torch_weights_rel_l2\": " << num(c ? c->theirs_exact.weights : NAN) << "}";
    out << ", \"last50_mean_loss\": [" << num(v.last_mean_ours) << ", " << num(v.last_mean_theirs)
        << "], \"mean_tol\": " << num(v.mean_tol);
    out << ", \"final_loss\": [" << num(ours.steps.back().loss) << ", " << num(theirs.steps.back().loss)
        << "], \"seconds\": " << pair("seconds");
    if (!std::isnan(ours.number("val_top1"))) out << ", \"val_top1\": " << pair("val_top1");
    if (!std::isnan(ours.number("ema_val_top1"))) out << ", \"ema_val_top1\": " << pair("ema_val_top1");
    out << ", \"passed\": " << (v.passed ? "true" : "false") << "}";
    return out.str();
}

void print_report(const fs::path& dir, const recipe::RunSpec& spec, const ParityShape& shape, std::int64_t check_steps,
                  const Side& ours, const Side& theirs, const Side& truth, const std::vector<Snapshot>& snapshots,
                  const Verdict& v) {
    std::printf("\nparity: %s, %s, %lld steps of %d images on %s (%s); PyTorch %s\n", spec.recipe.file.string().c_str(),
                spec.arch().c_str(), (long long)shape.steps, spec.train.batch_size, spec.device().c_str(),
                spec.precision().c_str(), theirs.text("torch").c_str());
    std::printf("%6s %11s %11s  %9s %9s %9s  %8s  %9s %9s", "step", "lr tessera", "lr torch", "loss", "loss", "loss",
                "loss", "weights", "BN stats");
    if (!truth.empty()) std::printf("  %9s %9s", "weights", "weights");
    std::printf("\n%6s %11s %11s  %9s %9s %9s  %8s  %9s %9s", "", "", "", "tessera", "torch", "fp64", "rel diff",
                "rel L2", "rel L2");
    if (!truth.empty()) std::printf("  %9s %9s", "tess-fp64", "torch-fp64");
    std::printf("\n");
    std::size_t next = 0;
    for (std::size_t i = 0; i < ours.steps.size(); ++i) {
        const std::int64_t s = std::int64_t(i) + 1;
        while (next < snapshots.size() && snapshots[next].step < s) ++next;
        const bool snap = next < snapshots.size() && snapshots[next].step == s;
        if (!(s <= 3 || snap || s == v.loss_parts_at)) continue;
        char exact_loss[16] = "-";
        if (i < truth.steps.size()) std::snprintf(exact_loss, sizeof exact_loss, "%.5f", truth.steps[i].loss);
        std::printf("%6lld %11.5g %11.5g  %9.5f %9.5f %9s  %8.1e", (long long)s, ours.steps[i].lr, theirs.steps[i].lr,
                    ours.steps[i].loss, theirs.steps[i].loss, exact_loss, loss_difference(ours, theirs, i));
        if (snap) {
            const Snapshot& p = snapshots[next];
            std::printf("  %9.1e %9.1e", p.ours.weights, p.ours.statistics);
            if (s <= std::int64_t(truth.steps.size()))
                std::printf("  %9.1e %9.1e", p.ours_exact.weights, p.theirs_exact.weights);
        }
        std::printf("\n");
    }
    std::printf("first step's loss (same weights, same batch): %.1e apart (limit %.0e)\n",
                loss_difference(ours, theirs, 0), v.loss_tol);
    std::printf("loss over steps 1-%lld: at most %.1e apart, at step %lld (limit %.1e)", (long long)check_steps,
                v.loss.first, (long long)v.loss.second, v.loss_limit);
    if (!truth.empty())
        std::printf("; from the fp64 run: tessera %.1e, PyTorch fp32 %.1e", v.ours_exact_loss.first,
                    v.theirs_exact_loss.first);
    std::printf("\n");
    if (v.loss_parts_at)
        std::printf("the losses first part by more than %.0e at step %lld\n", v.loss_tol, (long long)v.loss_parts_at);
    if (v.rates_part_at)
        std::printf("rates: the two sides' learning rate or momentum differ from step %lld\n",
                    (long long)v.rates_part_at);
    if (const Snapshot* c = v.at_check) {
        std::printf(
            "weights at step %lld: %.1e apart (limit %.1e), BatchNorm statistics %.1e (limit %.1e); furthest: %s "
            "%.1e\n",
            (long long)check_steps, c->ours.weights, v.weight_limit, c->ours.statistics, v.statistics_limit,
            c->ours.worst_name.c_str(), c->ours.worst);
        if (!truth.empty())
            std::printf("  from the fp64 run: tessera %.1e, PyTorch fp32 %.1e\n", c->ours_exact.weights,
                        c->theirs_exact.weights);
    }
    if (v.weights_part_at)
        std::printf("the weights first part by more than %.0e at step %lld; the tensor furthest apart then: %s\n",
                    v.weight_tol, (long long)v.weights_part_at, v.parted_first.c_str());
    std::printf("mean loss over the last %zu steps: tessera %.5f, PyTorch %.5f (%.1e apart, limit %.0e)%s\n",
                std::min<std::size_t>(50, ours.steps.size()), v.last_mean_ours, v.last_mean_theirs,
                relative(v.last_mean_ours, v.last_mean_theirs), v.mean_tol,
                v.stepwise ? "" : "; in bf16 this and the first step decide, the steps are shown only");
    if (!snapshots.back().average.worst_name.empty())
        std::printf("weight average at step %lld: %.1e apart\n", (long long)snapshots.back().step,
                    snapshots.back().average.weights);
    if (!std::isnan(ours.number("val_top1"))) {
        std::printf("test top-1 after %lld steps: tessera %.2f%%, PyTorch %.2f%% (%.2f points apart)\n",
                    (long long)shape.steps, 100 * ours.number("val_top1"), 100 * theirs.number("val_top1"),
                    100 * std::abs(ours.number("val_top1") - theirs.number("val_top1")));
        if (!std::isnan(ours.number("ema_val_top1")))
            std::printf("test top-1 of the weight average: tessera %.2f%%, PyTorch %.2f%%\n",
                        100 * ours.number("ema_val_top1"), 100 * theirs.number("ema_val_top1"));
    }
    std::printf("time: tessera %.1f s, PyTorch %.1f s (each with its snapshots)\n", ours.number("seconds"),
                theirs.number("seconds"));
    std::printf("parity: %s; %s and .json, .svg, _weights.svg\n", v.passed ? "passed" : "FAILED",
                (dir / "parity.csv").string().c_str());
}

}  // namespace

int parity(const std::vector<std::string>& raw) {
    Args args(raw, {"json", "eval", "keep", "no-fp64"},
              {"steps", "every", "threads", "out", "loss-tol", "weight-tol", "mean-tol", "check-steps"}, {"set"});
    if (args.positional().size() != 1)
        throw user_error("runner parity", "expected one recipe file",
                         "e.g. runner parity recipes/quickstart.toml --steps 50");
    const double loss_tol = positive(args, "loss-tol", 1e-4), weight_tol = positive(args, "weight-tol", 1e-3),
                 mean_tol = positive(args, "mean-tol", 0.02);
    const World world;
    if (world->size() > 1)
        throw user_error("runner parity", "runs as one process, and was started as " + std::to_string(world->size()),
                         "run it without mpirun or srun");
    const recipe::RunSpec spec = recipe::open_run(args.positional()[0], args.values("set"));
    const fs::path dir = args.value("out") ? fs::path(*args.value("out")) : spec.train.run_dir / "parity";
    const int threads = args.value("threads") ? thread_count(args) : ThreadPool::default_threads();

    train::StepConfig config = spec.train;
    const std::int64_t batches_per_epoch = spec.data->num_batches(
        plugin::Split::train, train::epoch_plan(1, plugin::Split::train, config.batch_size, config.seed, nullptr));
    ParityShape shape;
    shape.steps_per_epoch = batches_per_epoch / config.accumulate;
    if (shape.steps_per_epoch < 1)
        throw user_error(spec.recipe.file.string(), "the training data holds no full step",
                         "lower data.batch_size or train.accumulate");
    shape.total_steps = shape.steps_per_epoch * spec.train.epochs;
    shape.steps = args.integer("steps", int(std::min<std::int64_t>(50, shape.total_steps)));
    if (shape.steps > shape.total_steps)
        throw user_error(
            "runner parity --steps",
            std::to_string(shape.steps) + " is beyond the recipe's " + std::to_string(shape.total_steps) + " steps",
            "raise train.epochs with --set train.epochs=N");
    const std::int64_t check_steps = std::min<std::int64_t>(args.integer("check-steps", 50), shape.steps);
    const std::int64_t every = args.integer("every", 10);
    for (std::int64_t s = 0; s <= shape.steps; s += every) shape.snapshots.push_back(s);
    for (std::int64_t s : {check_steps, shape.steps})
        if (std::find(shape.snapshots.begin(), shape.snapshots.end(), s) == shape.snapshots.end())
            shape.snapshots.push_back(s);
    std::sort(shape.snapshots.begin(), shape.snapshots.end());
    shape.threads = threads;
    shape.eval = args.flag("eval");
    shape.channels = spec.info.channels;
    const double lr_scale = spec.lr_scale(1);
    // Checked before anything is written: a recipe the mapping refuses leaves no files.
    std::string torch_spec = parity_spec(spec, shape, lr_scale);

    std::error_code ec;
    fs::remove_all(dir / "tessera", ec);
    fs::remove_all(dir / "torch", ec);
    fs::remove_all(dir / "torch_fp64", ec);
    fs::create_directories(dir / "tessera", ec);
    if (ec) throw user_error(dir.string(), "cannot create the parity folder: " + ec.message());

    // ---- tessera's side ----------------------------------------------------------------------------
    Side ours{"tessera", {}, {}};
    const auto start = std::chrono::steady_clock::now();
    on_device(spec.device(), spec.where("train", "device"), [&]<class B>() {
        auto ctx = make_context<B>(threads, spec.precision(), spec.where("model", "precision"));
        auto net = make_network<B>(spec.arch(), spec.num_classes, spec.info.channels);
        net->init(spec.seed(), {spec.zero_init_residual()});
        checkpoint::save(net->params(), dir / "initial.safetensors", {{"arch", net->arch()}});
        auto optimizer = spec.optimizer();
        auto scheduler = spec.scheduler();

        std::ofstream pixels(dir / "batches.u8", std::ios::binary), labels(dir / "labels.i32", std::ios::binary),
            lams(dir / "lam.f32", std::ios::binary);
        config.on_batch = [&](const plugin::Batch& b, const train::Mixing& m) {
            shape.height = b.height, shape.width = b.width;
            append(pixels, b.pixels.data(), b.pixels.size(), dir / "batches.u8");
            append(labels, b.labels.data(), std::size_t(b.count), dir / "labels.i32");
            const float lam = m.active ? m.lam : 1.f;
            append(lams, &lam, 1, dir / "lam.f32");
        };
        train::Step<B> step(*ctx, *net, *optimizer, spec.info, config);
        auto snapshot = [&](std::int64_t s) {
            net->download();
            checkpoint::save(net->params(), dir / "tessera" / ("step_" + std::to_string(s) + ".safetensors"), {});
            if (auto* average = step.average()) {
                const auto swapped = average->swapped_in();
                net->download();
                checkpoint::save(net->params(), dir / "tessera" / ("ema_" + std::to_string(s) + ".safetensors"), {});
            }
        };
        plugin::Clock clock{0, shape.total_steps, shape.steps_per_epoch};
        // The momentum a step uses when the scheduler sets none: the optimizer's own.
        const auto& o = spec.recipe.optimizer.options.values();
        const double momentum = o.count("momentum") ? std::get<double>(o.at("momentum"))
                                : o.count("beta1")  ? std::get<double>(o.at("beta1"))
                                                    : 0;
        snapshot(0);
        int epoch = 0;
        std::int64_t batch = 0;  // a new epoch starts the data source over, whatever it had left
        for (; clock.step < shape.steps; ++clock.step) {
            if (clock.step % shape.steps_per_epoch == 0) {
                spec.data->start_epoch(
                    plugin::Split::train,
                    train::epoch_plan(++epoch, plugin::Split::train, config.batch_size, config.seed, nullptr));
                batch = 0;
            }
            const plugin::StepRates rates{scheduler->lr(clock) * lr_scale, scheduler->momentum(clock)};
            const train::Meter m = step.run(*spec.data, epoch, batch, rates);
            ours.steps.push_back({rates.lr, rates.momentum.value_or(momentum), m.loss()});
            if (std::find(shape.snapshots.begin(), shape.snapshots.end(), clock.step + 1) != shape.snapshots.end())
                snapshot(clock.step + 1);
        }
        if (shape.eval) {
            const train::Evaluation e = train::evaluate<B>(*ctx, *net, *spec.data, config.batch_size);
            ours.set("val_top1", e.top1), ours.set("val_loss", e.loss);
            if (auto* average = step.average()) {
                const auto swapped = average->swapped_in();
                const train::Evaluation e = train::evaluate<B>(*ctx, *net, *spec.data, config.batch_size);
                ours.set("ema_val_top1", e.top1), ours.set("ema_val_loss", e.loss);
            }
            // The validation images as the network saw them, for PyTorch to evaluate on.
            std::ofstream val(dir / "val.u8", std::ios::binary), val_labels(dir / "val_labels.i32", std::ios::binary);
            spec.data->start_epoch(plugin::Split::val,
                                   train::epoch_plan(1, plugin::Split::val, config.batch_size, config.seed, nullptr));
            plugin::Batch b;
            while (spec.data->next(b)) {
                append(val, b.pixels.data(), b.pixels.size(), dir / "val.u8");
                append(val_labels, b.labels.data(), std::size_t(b.count), dir / "val_labels.i32");
            }
        }
        return 0;
    });
    ours.set("seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    torch_spec = parity_spec(spec, shape, lr_scale);  // now with the batches' height and width
    {
        std::ofstream out(dir / "spec.json");
        out << torch_spec;
        if (!out.flush()) throw user_error((dir / "spec.json").string(), "cannot write", "is the disk full?");
    }

    // ---- PyTorch's side: fp32 (or the recipe's precision), and fp64 as the run without rounding -------
    const bool exact = !args.flag("no-fp64");
    auto run_torch = [&](const std::string& extra, const char* folder, std::int64_t steps) {
        const std::string command =
            python() + " " + shell_quote(torch_script().string()) + " " + shell_quote(dir.string()) + extra;
        if (!args.flag("json")) std::printf("parity: %s\n", command.c_str());
        std::fflush(stdout);
        if (std::system(command.c_str()) != 0)
            throw user_error("runner parity", "the PyTorch side failed (" + command + ")",
                             "its output above says why; it needs Debian's python3-torch and python3-torchvision");
        Side side{folder, read_torch_steps(dir / folder / "steps.csv"), read_json(dir / folder / "result.json")};
        if (side.steps.size() != std::min<std::size_t>(ours.steps.size(), std::size_t(steps)))
            throw user_error((dir / folder / "steps.csv").string(), "holds " + std::to_string(side.steps.size()) +
                                                                        " steps, tessera took " +
                                                                        std::to_string(ours.steps.size()));
        return side;
    };
    if (!args.flag("json"))
        std::printf("parity: tessera trained %lld steps in %.1f s\n", (long long)shape.steps, ours.number("seconds"));
    const Side theirs = run_torch("", "torch", shape.steps);
    // The fp64 run over the checked steps only: it is the yardstick for them, and slow on a CPU.
    const Side truth =
        exact ? run_torch(" --fp64 --steps " + std::to_string(check_steps), "torch_fp64", check_steps) : Side{};

    // ---- the comparison ----------------------------------------------------------------------------
    auto a = make_cpu_network(spec.arch(), spec.num_classes, spec.info.channels);
    auto b = make_cpu_network(spec.arch(), spec.num_classes, spec.info.channels);
    auto difference = [&](const fs::path& x, const fs::path& y) {
        checkpoint::load(a->params(), x);
        checkpoint::load(b->params(), y);
        return compare(a->params(), b->params());
    };
    std::vector<Snapshot> snapshots;
    for (std::int64_t s : shape.snapshots) {
        Snapshot snap;
        snap.step = s;
        const std::string file = "step_" + std::to_string(s) + ".safetensors",
                          average = "ema_" + std::to_string(s) + ".safetensors";
        snap.ours = difference(dir / "tessera" / file, dir / "torch" / file);
        if (fs::exists(dir / "tessera" / average))
            snap.average = difference(dir / "tessera" / average, dir / "torch" / average);
        if (exact && s <= check_steps) {
            snap.ours_exact = difference(dir / "tessera" / file, dir / "torch_fp64" / file);
            snap.theirs_exact = difference(dir / "torch" / file, dir / "torch_fp64" / file);
        }
        snapshots.push_back(snap);
    }
    const Verdict v = judge(ours, theirs, truth, snapshots, check_steps, loss_tol, weight_tol, mean_tol,
                            spec.precision() == "fp32" || spec.precision() == "tf32");

    write_report(dir, spec, ours, theirs, truth, snapshots);
    const std::string summary = summary_json(spec, shape, check_steps, ours, theirs, truth, v);
    {
        std::ofstream out(dir / "parity.json");
        out << summary << "\n";
    }
    if (!args.flag("keep")) {
        std::error_code ignored;
        for (const char* f : {"batches.u8", "labels.i32", "lam.f32", "val.u8", "val_labels.i32"})
            fs::remove(dir / f, ignored);
        for (const char* side : {"tessera", "torch", "torch_fp64"})
            for (auto& s : shape.snapshots)
                for (const char* kind : {"step_", "ema_"})
                    if (s != 0) fs::remove(dir / side / (kind + std::to_string(s) + ".safetensors"), ignored);
    }
    if (args.flag("json"))
        std::printf("%s\n", summary.c_str());
    else
        print_report(dir, spec, shape, check_steps, ours, theirs, truth, snapshots, v);
    return v.passed ? 0 : 3;
}

}  // namespace tessera::runner
