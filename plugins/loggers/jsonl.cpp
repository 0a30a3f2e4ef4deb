// jsonl: one JSON object per line in <run>/events.jsonl, for scripts and dashboards:
//   {"event": "run_begin", "time": 1764176400.1, "global_step": 0, "name": "…", "arch": "resnet50", …}
//   {"event": "step", "time": …, "global_step": 120, "epoch": 1, "step": 120, "loss": 6.71, "top1": 0.002,
//    "lr": 0.0081, "img_per_s": 2410}  (one line in the file)
//   {"event": "epoch", "time": …, "global_step": 5004, "epoch": 1, "train_loss": …, "val_top1": …, …}
//   {"event": "run_end", "time": …, "global_step": 250200}
// Every line is flushed whole. A resumed run keeps the events up to the step it resumes from and
// goes on after them; a non-finite number (a diverged loss) is written as null.
#include <chrono>
#include <cmath>
#include <cstdio>

#include "run_files.hpp"
#include "tessera/core/json.hpp"

namespace {

using namespace tessera::plugin;
using namespace tessera::plugins::loggers;

/// One event line, built field by field.
class Line {
public:
    Line(const char* event, std::int64_t global_step) {
        const double now = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
        text_ = "{\"event\": \"" + std::string(event) + "\"";
        number("time", now, "%.3f");
        integer("global_step", global_step);
    }
    Line& number(const char* key, double v, const char* format = "%.7g") {
        char buf[64] = "null";
        if (std::isfinite(v)) std::snprintf(buf, sizeof buf, format, v);
        return raw(key, buf);
    }
    Line& integer(const char* key, long long v) { return raw(key, std::to_string(v)); }
    Line& text(const char* key, const std::string& v) { return raw(key, tessera::json::quote(v)); }
    std::string done() const { return text_ + "}\n"; }

private:
    Line& raw(const char* key, const std::string& v) {
        text_ += ", \"" + std::string(key) + "\": " + v;
        return *this;
    }
    std::string text_;
};

class Jsonl final : public Logger {
public:
    explicit Jsonl(const Options& o) : file_(o.text("file")), every_steps_(o.integer("every_steps")) {}

    void on_run_begin(const RunInfo& r) override {
        const fs::path path = fs::path(r.run_dir) / file_;
        last_step_ = r.first_step;
        const auto earlier = kept_lines(path, r, [&](const std::string& line) {
            try {
                const auto event = tessera::json::parse(line, path.string());
                const auto& step = event.object().at("global_step");
                return step.is_number() && step.number() <= double(r.first_step);
            } catch (const std::exception&) {
                return false;  // a line cut short by the interruption
            }
        });
        out_ = open_for_writing(path);
        for (auto& line : earlier) out_ << line << '\n';
        write(Line("run_begin", r.first_step)
                  .text("name", r.name)
                  .text("arch", r.arch)
                  .integer("epochs", r.epochs)
                  .integer("batch_size", r.batch_size)
                  .integer("steps_per_epoch", r.steps_per_epoch)
                  .integer("parameters", r.parameters)
                  .integer("first_epoch", r.first_epoch));
    }

    void on_step(const StepStats& s) override {
        last_step_ = s.global_step;
        if (every_steps_ == 0 || (s.global_step % every_steps_ != 0 && s.step != s.steps)) return;
        write(Line("step", s.global_step)
                  .integer("epoch", s.epoch)
                  .integer("step", s.step)
                  .integer("steps", s.steps)
                  .number("loss", s.loss)
                  .number("top1", s.top1)
                  .number("lr", s.lr)
                  .number("img_per_s", s.img_per_s, "%.1f"));
    }

    void on_epoch(const EpochStats& e) override {
        Line line("epoch", e.global_step);
        line.integer("epoch", e.epoch)
            .integer("epochs", e.epochs)
            .number("lr", e.lr)
            .number("train_loss", e.train_loss)
            .number("train_top1", e.train_top1)
            .number("val_loss", e.val_loss)
            .number("val_top1", e.val_top1)
            .number("val_top5", e.val_top5)
            .number("img_per_s", e.img_per_s, "%.1f")
            .number("time_s", e.time_s, "%.2f")
            .integer("bad_samples", e.bad_samples);
        if (e.has_ema)
            line.number("ema_val_loss", e.ema_val_loss)
                .number("ema_val_top1", e.ema_val_top1)
                .number("ema_val_top5", e.ema_val_top5);
        write(line);
    }

    void on_run_end() override { write(Line("run_end", last_step_)); }

private:
    void write(const Line& line) { out_ << line.done() << std::flush; }

    std::string file_;
    std::int64_t every_steps_;
    std::int64_t last_step_ = 0;
    std::ofstream out_;
};

Info info() {
    return {
        "",
        "jsonl",
        "events.jsonl: one JSON object per line for the run, its steps and its epochs",
        {{"file", std::string("events.jsonl"), "file in the run folder"},
         {"every_steps", std::int64_t(10), "write a step event every so many optimizer steps (0: none)", at_least(0)}}};
}

std::unique_ptr<Logger> create(const Options& o) { return std::make_unique<Jsonl>(o); }

}  // namespace

TESSERA_PLUGIN(Logger, info, create)
