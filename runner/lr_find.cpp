// runner lr-find RECIPE: the learning-rate range test (Smith 2017; the seed's lr_finder.py, as
// torch-lr-finder): the rate grows exponentially from --start to --end over --iters steps of the
// recipe's training, the loss is smoothed (exponential moving average, bias-corrected), the test
// stops once the smoothed loss exceeds 5 times its best, and the suggestion is the rate where the
// smoothed loss falls fastest. Writes lr_find.csv and lr_find.svg to the run folder; the model's
// weights are neither saved nor changed on disk.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "recipe_run.hpp"
#include "runner.hpp"
#include "tessera/core/json.hpp"
#include "tessera/train/trainer.hpp"

namespace tessera::runner {

namespace fs = std::filesystem;

namespace {

struct Point {
    double lr, loss, smoothed;
};

/// Index of the steepest descent of the smoothed loss against log(lr), leaving out the first 10
/// and last 5 points as torch-lr-finder does (fewer when the test was short).
std::size_t steepest(const std::vector<Point>& p) {
    const std::size_t skip_start = std::min<std::size_t>(10, p.size() / 4), skip_end = std::min<std::size_t>(5, p.size() / 4);
    std::size_t best = skip_start;
    double slope_min = INFINITY;
    for (std::size_t i = skip_start + 1; i + skip_end < p.size(); ++i) {
        const double slope = (p[i].smoothed - p[i - 1].smoothed) / (std::log(p[i].lr) - std::log(p[i - 1].lr));
        if (slope < slope_min) slope_min = slope, best = i;
    }
    return best;
}

/// The smoothed loss against the rate (log scale), the suggestion marked: a self-contained SVG.
void write_plot(const fs::path& file, const std::vector<Point>& p, std::size_t suggestion) {
    const double w = 640, h = 400, left = 60, right = 20, top = 20, bottom = 50;
    const double x0 = std::log10(p.front().lr), x1 = std::log10(p.back().lr);
    double y0 = INFINITY, y1 = -INFINITY;
    for (auto& q : p) y0 = std::min(y0, q.smoothed), y1 = std::max(y1, q.smoothed);
    if (y1 <= y0) y1 = y0 + 1;
    auto x = [&](double lr) { return left + (std::log10(lr) - x0) / std::max(x1 - x0, 1e-12) * (w - left - right); };
    auto y = [&](double v) { return top + (y1 - v) / (y1 - y0) * (h - top - bottom); };
    std::ofstream out(file);
    out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << w << "\" height=\"" << h << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
        << "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<polyline fill=\"none\" stroke=\"#1f77b4\" stroke-width=\"2\" points=\"";
    for (auto& q : p) out << x(q.lr) << "," << y(q.smoothed) << " ";
    out << "\"/>\n<line x1=\"" << x(p[suggestion].lr) << "\" y1=\"" << top << "\" x2=\"" << x(p[suggestion].lr) << "\" y2=\""
        << h - bottom << "\" stroke=\"#d62728\" stroke-dasharray=\"4\"/>\n";
    for (int decade = int(std::ceil(x0)); decade <= int(std::floor(x1)); ++decade)
        out << "<text x=\"" << x(std::pow(10.0, decade)) << "\" y=\"" << h - bottom + 18 << "\" text-anchor=\"middle\">1e" << decade << "</text>\n";
    out << "<text x=\"" << w / 2 << "\" y=\"" << h - 8 << "\" text-anchor=\"middle\">learning rate (log scale); dashed: suggested "
        << p[suggestion].lr << "</text>\n<text x=\"14\" y=\"" << h / 2 << "\" transform=\"rotate(-90 14 " << h / 2
        << ")\" text-anchor=\"middle\">smoothed loss</text>\n</svg>\n";
}

}  // namespace

int lr_find(const std::vector<std::string>& raw) {
    Args args(raw, {"json"}, {"start", "end", "iters", "threads"}, {"set"});
    if (args.positional().size() != 1)
        throw user_error("runner lr-find", "expected one recipe file", "e.g. runner lr-find recipes/quickstart.toml --iters 100");
    auto number = [&](const char* name, double fallback) {
        const auto v = args.value(name);
        if (!v) return fallback;
        char* end = nullptr;
        const double x = std::strtod(v->c_str(), &end);
        if (end == v->c_str() || *end || !(x > 0)) throw user_error(std::string("runner lr-find --") + name, "\"" + *v + "\" is not a positive number");
        return x;
    };
    const double start = number("start", 1e-7), end = number("end", 10);
    const int iters = args.integer("iters", 100, 2);
    if (end <= start) throw user_error("runner lr-find", "--end must be above --start");

    const World world;
    RecipeRun run = open_recipe(args.positional()[0], args.values("set"));
    const recipe::Recipe& r = run.recipe;
    const fs::path run_dir = fs::path(r.run.text("out_dir")) / r.run.text("name");
    std::vector<Point> points;
    on_device(r.train.text("device"), r.file.string() + " [train] device", [&]<class B>() {
        auto ctx = make_context<B>(args.value("threads") ? thread_count(args) : ThreadPool::default_threads(),
                                   r.model.text("precision"), r.file.string() + " [model] precision", world->local_rank());
        auto net = make_network<B>(r.model.text("arch"), run.num_classes, run.info.channels);
        net->init(std::uint64_t(r.run.integer("seed")), {r.model.flag("zero_init_residual")});
        auto optimizer = run.registry->create<plugin::Optimizer>(*r.optimizer.entry, r.optimizer.options);
        auto scheduler = run.registry->create<plugin::Scheduler>(*r.scheduler.entry, r.scheduler.options);
        train::TrainConfig config;
        config.batch_size = r.batch_size;
        config.seed = std::uint64_t(r.run.integer("seed"));
        config.label_smoothing = float(r.train.number("label_smoothing"));
        config.comm = world.get();
        config.loss_scale = loss_scale_of(r);
        train::Trainer<B> trainer(*ctx, *net, *run.data, *optimizer, *scheduler, {}, config);
        const plugin::Parameters params = train::optimizer_view(*net, *ctx);
        plugin::EpochPlan plan;
        plan.seed = config.seed;
        plan.batch_size = r.batch_size;
        plan.drop_last = true;
        plan.rank = world->rank();
        plan.world_size = world->size();
        double average = 0, best = INFINITY;
        for (int i = 0; i < iters; ++i) {
            if (i == 0 || !run.data->next(trainer.batch())) {  // as many epochs as the test needs
                plan.epoch += 1;
                run.data->start_epoch(plugin::Split::train, plan);
                if (!run.data->next(trainer.batch())) throw user_error(r.file.string(), "the training data holds no full batch");
            }
            const double lr = start * std::pow(end / start, double(i) / (iters - 1));
            double loss = trainer.train_step({lr, std::nullopt}, params).loss();
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
        std::printf("{\"suggested_lr\": %.6g, \"steps\": %zu, \"start\": %.6g, \"end\": %.6g, \"diverged\": %s, \"csv\": %s, \"plot\": %s}\n",
                    points[suggestion].lr, points.size(), start, points.back().lr, diverged ? "true" : "false",
                    json::quote((run_dir / "lr_find.csv").string()).c_str(), json::quote((run_dir / "lr_find.svg").string()).c_str());
        return 0;
    }
    std::printf("lr-find: %zu steps from %.3g to %.3g%s\n", points.size(), start, points.back().lr,
                diverged ? " (stopped: the loss diverged)" : "");
    std::printf("suggested learning rate: %.4g (steepest descent of the smoothed loss); curve in %s and %s\n",
                points[suggestion].lr, (run_dir / "lr_find.csv").string().c_str(), (run_dir / "lr_find.svg").string().c_str());
    return 0;
}

}  // namespace tessera::runner
