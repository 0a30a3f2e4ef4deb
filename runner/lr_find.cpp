// runner lr-find RECIPE: the learning-rate range test (Smith 2017; the seed's lr_finder.py, as
// torch-lr-finder): the rate grows exponentially from --start to --end over --iters steps of the
// recipe's training, the loss is smoothed (exponential moving average, bias-corrected), the test
// stops once the smoothed loss exceeds 5 times its best, and the suggestion is the rate where the
// smoothed loss falls fastest before its lowest point. Writes lr_find.csv and lr_find.svg to the run folder; the model's
// weights are neither saved nor changed on disk.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "runner.hpp"
#include "tessera/core/json.hpp"
#include "tessera/report/svg_chart.hpp"
#include "tessera/recipe/run_spec.hpp"
#include "tessera/train/step.hpp"

namespace tessera::runner {

namespace fs = std::filesystem;

namespace {

struct Point {
    double lr, loss, smoothed;
};

/// Index of the steepest descent of the smoothed loss against log(lr), leaving out the first 10
/// and last 5 points as torch-lr-finder does (fewer when the test was short), and every point past
/// the smoothed loss's lowest: beyond it training is diverging, and a descent there is the model
/// recovering from a blow-up, not a rate it trains at (on the quick start, a recovery at 2.1 once
/// tied the true descent at 0.13 to two digits, so the build's rounding chose between them).
std::size_t steepest(const std::vector<Point>& p) {
    const std::size_t skip_start = std::min<std::size_t>(10, p.size() / 4),
                      skip_end = std::min<std::size_t>(5, p.size() / 4);
    const auto lowest =
        std::min_element(p.begin(), p.end(), [](const Point& a, const Point& b) { return a.smoothed < b.smoothed; });
    const std::size_t last = std::min(std::size_t(lowest - p.begin()), p.size() - 1 - skip_end);
    std::size_t best = std::min(skip_start, last);
    double slope_min = INFINITY;
    for (std::size_t i = skip_start + 1; i <= last; ++i) {
        const double slope = (p[i].smoothed - p[i - 1].smoothed) / (std::log(p[i].lr) - std::log(p[i - 1].lr));
        if (slope < slope_min) slope_min = slope, best = i;
    }
    return best;
}

/// The smoothed loss against the rate (log scale), the suggestion marked: a self-contained SVG.
void write_plot(const fs::path& file, const std::vector<Point>& p, std::size_t suggestion) {
    report::Series smoothed{"smoothed loss", "#1f77b4", {}, {}};
    for (auto& q : p) smoothed.x.push_back(q.lr), smoothed.y.push_back(q.smoothed);
    char label[96];
    std::snprintf(label, sizeof label, "learning rate (log scale); dashed: suggested %.3g", p[suggestion].lr);
    std::ofstream out(file);
    out << report::svg_chart(label, {smoothed}, {.log_x = true, .mark_x = p[suggestion].lr}) << "\n";
    if (!out.flush()) throw user_error(file.string(), "cannot write", "is the disk full?");
}

}  // namespace

int lr_find(const std::vector<std::string>& raw) {
    Args args(raw, {"json"}, {"start", "end", "iters", "threads"}, {"set"});
    if (args.positional().size() != 1)
        throw user_error("runner lr-find", "expected one recipe file",
                         "e.g. runner lr-find recipes/quickstart.toml --iters 100");
    auto number = [&](const char* name, double fallback) {
        const auto v = args.value(name);
        if (!v) return fallback;
        char* end = nullptr;
        const double x = std::strtod(v->c_str(), &end);
        if (end == v->c_str() || *end || !(x > 0))
            throw user_error(std::string("runner lr-find --") + name, "\"" + *v + "\" is not a positive number");
        return x;
    };
    const double start = number("start", 1e-7), end = number("end", 10);
    const int iters = args.integer("iters", 100, 2);
    if (end <= start) throw user_error("runner lr-find", "--end must be above --start");

    const World world;
    const recipe::RunSpec spec = recipe::open_run(args.positional()[0], args.values("set"));
    const fs::path& run_dir = spec.train.run_dir;
    std::vector<Point> points;
    on_device(spec.device(), spec.where("train", "device"), [&]<class B>() {
        auto ctx = make_context<B>(args.value("threads") ? thread_count(args) : ThreadPool::default_threads(),
                                   spec.precision(), spec.where("model", "precision"), world->local_rank());
        auto net = make_network<B>(spec.arch(), spec.num_classes, spec.info.channels);
        net->init(spec.seed(), {spec.zero_init_residual()});
        auto optimizer = spec.optimizer();
        // The recipe's step, one batch at a time and unmixed, as torch-lr-finder's.
        train::StepConfig config = spec.train;
        config.accumulate = 1;
        config.mix = {};
        config.ema_decay = 0;
        config.comm = world.get();
        train::Step<B> step(*ctx, *net, *optimizer, spec.info, config);
        const plugin::EpochPlan first =
            train::epoch_plan(1, plugin::Split::train, config.batch_size, config.seed, world.get());
        const std::int64_t batches = spec.data->num_batches(plugin::Split::train, first);
        if (batches < 1)
            throw user_error(spec.recipe.file.string(), "the training data holds no full batch",
                             "lower data.batch_size");
        int epoch = 0;
        std::int64_t batch = batches;
        double average = 0, best = INFINITY;
        for (int i = 0; i < iters; ++i) {
            if (batch == batches) {  // as many epochs as the test needs
                spec.data->start_epoch(
                    plugin::Split::train,
                    train::epoch_plan(++epoch, plugin::Split::train, config.batch_size, config.seed, world.get()));
                batch = 0;
            }
            const double lr = start * std::pow(end / start, double(i) / (iters - 1));
            double loss = step.run(*spec.data, epoch, batch, {lr, std::nullopt}).loss();
            if (world->size() > 1) {
                world->all_reduce_sum(&loss, 1);
                loss /= world->size();
            }
            average = 0.98 * average + 0.02 * loss;
            const double smoothed = average / (1 - std::pow(0.98, i + 1));
            points.push_back({lr, loss, smoothed});
            best = std::min(best, smoothed);
            if (!std::isfinite(smoothed) || smoothed > 5 * best) break;  // diverged
        }
        return 0;
    });
    if (!world->is_root()) return 0;
    if (points.size() < 3) throw user_error("runner lr-find", "the loss diverged at once", "lower --start");
    const std::size_t suggestion = steepest(points);
    std::error_code ec;
    fs::create_directories(run_dir, ec);
    if (ec) throw user_error(run_dir.string(), "cannot create the run folder: " + ec.message());
    {
        std::ofstream csv(run_dir / "lr_find.csv");
        csv << "lr,loss,smoothed_loss\n";
        for (auto& p : points) csv << p.lr << ',' << p.loss << ',' << p.smoothed << '\n';
        if (!csv.flush()) throw user_error((run_dir / "lr_find.csv").string(), "cannot write", "is the disk full?");
    }
    write_plot(run_dir / "lr_find.svg", points, suggestion);
    const bool diverged = int(points.size()) < iters;
    if (args.flag("json")) {
        std::printf(
            "{\"suggested_lr\": %.6g, \"steps\": %zu, \"start\": %.6g, \"end\": %.6g, \"diverged\": %s, \"csv\": %s, "
            "\"plot\": %s}\n",
            points[suggestion].lr, points.size(), start, points.back().lr, diverged ? "true" : "false",
            json::quote((run_dir / "lr_find.csv").string()).c_str(),
            json::quote((run_dir / "lr_find.svg").string()).c_str());
        return 0;
    }
    std::printf("lr-find: %zu steps from %.3g to %.3g%s\n", points.size(), start, points.back().lr,
                diverged ? " (stopped: the loss diverged)" : "");
    std::printf("suggested learning rate: %.4g (steepest descent of the smoothed loss); curve in %s and %s\n",
                points[suggestion].lr, (run_dir / "lr_find.csv").string().c_str(),
                (run_dir / "lr_find.svg").string().c_str());
    return 0;
}

}  // namespace tessera::runner
