// console: a progress bar like tqdm on a terminal, plain periodic lines otherwise (logs, CI).
//   epoch 2/5  312/468 [██████████████░░░░░░]  1843 img/s  loss 0.4121  top1 85.3%  lr 0.0815  ETA 0:24
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <string>

#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

std::string clock_time(double seconds) {
    const long s = long(seconds + 0.5);
    char buf[32];
    if (s >= 3600)
        std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
    else
        std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
    return buf;
}

class Console final : public Logger {
public:
    explicit Console(const Options& o) : lines_per_epoch_(o.integer("lines_per_epoch")), tty_(isatty(fileno(stdout))) {
        if (o.text("mode") == "bar") tty_ = true;
        if (o.text("mode") == "lines") tty_ = false;
    }

    void on_run_begin(const RunInfo& r) override {
        std::printf("run %s: %s, %lld parameters, %d epochs of %lld steps, batch %d, %s (%s) -> %s\n", r.name.c_str(),
                    r.arch.c_str(), (long long)r.parameters, r.epochs, (long long)r.steps_per_epoch, r.batch_size,
                    r.device.c_str(), r.kernels.c_str(), r.run_dir.c_str());
        epochs_ = r.epochs;
        std::fflush(stdout);
    }

    void on_step(const StepStats& s) override {
        if (tty_) {
            const auto now = std::chrono::steady_clock::now();
            if (s.step != s.steps && now - last_draw_ < std::chrono::milliseconds(100)) return;
            last_draw_ = now;
            const int width = 20, filled = int(width * s.step / std::max<std::int64_t>(1, s.steps));
            std::string bar;
            for (int i = 0; i < width; ++i) bar += i < filled ? "\u2588" : "\u2591";
            std::printf("\r\033[Kepoch %d/%d %5lld/%lld [%s] %6.0f img/s  loss %.4f  top1 %5.1f%%  lr %.4g  ETA %s",
                        s.epoch, epochs_, (long long)s.step, (long long)s.steps, bar.c_str(), s.img_per_s, s.loss,
                        100 * s.top1, s.lr, clock_time(s.eta_s).c_str());
            std::fflush(stdout);
            return;
        }
        const std::int64_t every = std::max<std::int64_t>(1, s.steps / std::max<std::int64_t>(1, lines_per_epoch_));
        if (s.step % every != 0 && s.step != s.steps) return;
        std::printf("epoch %d/%d step %lld/%lld  %.0f img/s  loss %.4f  top1 %.1f%%  lr %.4g  ETA %s\n", s.epoch,
                    epochs_, (long long)s.step, (long long)s.steps, s.img_per_s, s.loss, 100 * s.top1, s.lr,
                    clock_time(s.eta_s).c_str());
        std::fflush(stdout);
    }

    void on_epoch(const EpochStats& e) override {
        if (tty_) std::printf("\n");
        std::printf(
            "epoch %d/%d  train loss %.4f top1 %.2f%%  val loss %.4f top1 %.2f%% top5 %.2f%%  %.0f img/s  %.1f s\n",
            e.epoch, e.epochs, e.train_loss, 100 * e.train_top1, e.val_loss, 100 * e.val_top1, 100 * e.val_top5,
            e.img_per_s, e.time_s);
        if (e.has_ema)
            std::printf("epoch %d/%d  moving average of the weights: val loss %.4f top1 %.2f%% top5 %.2f%%\n", e.epoch,
                        e.epochs, e.ema_val_loss, 100 * e.ema_val_top1, 100 * e.ema_val_top5);
        if (e.skipped_steps > 0)
            std::printf("epoch %d/%d  %lld steps skipped: their gradients were not finite\n", e.epoch, e.epochs,
                        (long long)e.skipped_steps);
        if (e.bad_samples > 0)
            std::printf(
                "epoch %d/%d  %lld unreadable images were skipped and replaced (the warnings above name them)\n",
                e.epoch, e.epochs, (long long)e.bad_samples);
        std::fflush(stdout);
    }

private:
    std::int64_t lines_per_epoch_;
    bool tty_;
    int epochs_ = 0;
    std::chrono::steady_clock::time_point last_draw_{};
};

Info info() {
    return {
        "",
        "console",
        "progress bar on a terminal, periodic lines otherwise",
        {{"mode", std::string("auto"), "auto, bar or lines", one_of({"auto", "bar", "lines"})},
         {"lines_per_epoch", std::int64_t(10), "progress lines per epoch when not on a terminal", between(1, 1e6)}}};
}

std::unique_ptr<Logger> create(const Options& o) { return std::make_unique<Console>(o); }

}  // namespace

TESSERA_PLUGIN(Logger, info, create)
