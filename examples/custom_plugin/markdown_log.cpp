// markdown_log: a logger that keeps a Markdown table of the epochs in the run folder, ready to paste
// into a report or a pull request.
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

class MarkdownLog final : public Logger {
public:
    explicit MarkdownLog(const Options& o) : file_(o.text("file")), title_(o.text("title")) {}

    void on_run_begin(const RunInfo& r) override {
        const std::filesystem::path path = std::filesystem::path(r.run_dir) / file_;
        out_.open(path, std::ios::trunc);
        if (!out_) throw tessera::user_error(path.string(), "cannot write", "check that the run folder is writable");
        out_ << "# " << (title_.empty() ? r.name : title_) << "\n\n"
             << r.arch << ", " << r.parameters << " parameters, batch " << r.batch_size << ", " << r.epochs
             << " epochs\n\n"
             << "| epoch | lr | train loss | train top-1 | val loss | val top-1 | val top-5 | img/s |\n"
             << "|---|---|---|---|---|---|---|---|\n"
             << std::flush;
    }

    void on_epoch(const EpochStats& e) override {
        char row[256];
        std::snprintf(row, sizeof row, "| %d | %.4g | %.4f | %.2f%% | %.4f | %.2f%% | %.2f%% | %.0f |\n", e.epoch, e.lr,
                      e.train_loss, 100 * e.train_top1, e.val_loss, 100 * e.val_top1, 100 * e.val_top5, e.img_per_s);
        out_ << row << std::flush;
    }

private:
    std::string file_, title_;
    std::ofstream out_;
};

Info info() {
    return {"",
            "markdown",
            "a Markdown table of the epochs in the run folder",
            {{"file", std::string("epochs.md"), "file name inside the run folder"},
             {"title", std::string(""), "heading of the table (default: the run's name)"}}};
}

std::unique_ptr<Logger> create(const Options& o) { return std::make_unique<MarkdownLog>(o); }

}  // namespace

TESSERA_PLUGIN(Logger, info, create)
