// csv: one row per epoch in <run>/metrics.csv (and, if asked, one row per step in steps.csv).
// A resumed run keeps the rows of the epochs (and steps) done before it.
#include <cstdio>

#include "run_files.hpp"

namespace {

using namespace tessera::plugin;
using namespace tessera::plugins::loggers;

/// The number before the first comma of a data row; -1 for the header.
long long first_field(const std::string& row) {
    char* end = nullptr;
    const long long v = std::strtoll(row.c_str(), &end, 10);
    return end != row.c_str() && *end == ',' ? v : -1;
}

class Csv final : public Logger {
public:
    explicit Csv(const Options& o) : file_(o.text("file")), steps_file_(o.text("steps_file")) {}

    void on_run_begin(const RunInfo& r) override {
        const fs::path dir = r.run_dir;
        ema_ = r.has_ema;
        const auto earlier = kept_lines(dir / file_, r, [&](const std::string& row) {
            const long long epoch = first_field(row);
            return epoch >= 1 && epoch < r.first_epoch;
        });
        epochs_ = open_for_writing(dir / file_);
        epochs_ << "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,img_per_s,time_s,bad_samples"
                << (ema_ ? ",ema_val_loss,ema_val_top1,ema_val_top5" : "") << '\n';
        for (auto& row : earlier) epochs_ << row << '\n';
        epochs_ << std::flush;
        if (steps_file_.empty()) return;
        // steps.csv rows carry the global step in their second column.
        const auto steps_before = kept_lines(dir / steps_file_, r, [&](const std::string& row) {
            const auto comma = row.find(',');
            return first_field(row) >= 1 && comma != std::string::npos &&
                   std::atoll(row.c_str() + comma + 1) <= r.first_step;
        });
        steps_ = open_for_writing(dir / steps_file_);
        steps_ << "epoch,global_step,step,loss,top1,lr,img_per_s\n";
        for (auto& row : steps_before) steps_ << row << '\n';
    }

    void on_step(const StepStats& s) override {
        if (steps_.is_open())
            steps_ << s.epoch << ',' << s.global_step << ',' << s.step << ',' << s.loss << ',' << s.top1 << ',' << s.lr
                   << ',' << s.img_per_s << '\n';
    }

    void on_epoch(const EpochStats& e) override {
        char row[320];
        int n = std::snprintf(row, sizeof row, "%d,%.6g,%.6f,%.6f,%.6f,%.6f,%.6f,%.1f,%.2f,%lld", e.epoch, e.lr,
                              e.train_loss, e.train_top1, e.val_loss, e.val_top1, e.val_top5, e.img_per_s, e.time_s,
                              (long long)e.bad_samples);
        if (ema_)
            std::snprintf(row + n, sizeof row - std::size_t(n), ",%.6f,%.6f,%.6f", e.ema_val_loss, e.ema_val_top1,
                          e.ema_val_top5);
        epochs_ << row << '\n' << std::flush;
        if (steps_.is_open()) steps_.flush();
    }

private:
    std::string file_, steps_file_;
    bool ema_ = false;
    std::ofstream epochs_, steps_;
};

Info info() {
    return {"",
            "csv",
            "metrics.csv with a row per epoch; steps.csv with a row per step if steps_file is set",
            {{"file", std::string("metrics.csv"), "per-epoch file in the run folder"},
             {"steps_file", std::string(""), "per-step file in the run folder (empty: none)"}}};
}

std::unique_ptr<Logger> create(const Options& o) { return std::make_unique<Csv>(o); }

}  // namespace

TESSERA_PLUGIN(Logger, info, create)
