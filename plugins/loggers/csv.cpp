// csv: one row per epoch in <run>/metrics.csv (and, if asked, one row per step in steps.csv).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

class Csv final : public Logger {
public:
    explicit Csv(const Options& o) : file_(o.text("file")), steps_file_(o.text("steps_file")) {}

    void on_run_begin(const RunInfo& r) override {
        const std::filesystem::path dir = r.run_dir;
        epochs_.open(dir / file_, std::ios::trunc);
        if (!epochs_) throw tessera::user_error((dir / file_).string(), "cannot write", "check that the run folder is writable");
        epochs_ << "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,img_per_s,time_s,bad_samples\n" << std::flush;
        if (!steps_file_.empty()) {
            steps_.open(dir / steps_file_, std::ios::trunc);
            steps_ << "epoch,step,loss,top1,lr,img_per_s\n";
        }
    }

    void on_step(const StepStats& s) override {
        if (steps_.is_open()) steps_ << s.epoch << ',' << s.step << ',' << s.loss << ',' << s.top1 << ',' << s.lr << ',' << s.img_per_s << '\n';
    }

    void on_epoch(const EpochStats& e) override {
        char row[256];
        std::snprintf(row, sizeof row, "%d,%.6g,%.6f,%.6f,%.6f,%.6f,%.6f,%.1f,%.2f,%lld\n", e.epoch, e.lr, e.train_loss,
                      e.train_top1, e.val_loss, e.val_top1, e.val_top5, e.img_per_s, e.time_s, (long long)e.bad_samples);
        epochs_ << row << std::flush;
        if (steps_.is_open()) steps_.flush();
    }

private:
    std::string file_, steps_file_;
    std::ofstream epochs_, steps_;
};

Info info() {
    return {"", "csv", "metrics.csv with a row per epoch; steps.csv with a row per step if steps_file is set",
            {{"file", std::string("metrics.csv"), "per-epoch file in the run folder"},
             {"steps_file", std::string(""), "per-step file in the run folder (empty: none)"}}};
}

std::unique_ptr<Logger> create(const Options& o) { return std::make_unique<Csv>(o); }

}  // namespace

TESSERA_PLUGIN(Logger, info, create)
