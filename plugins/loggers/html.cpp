// html: <run>/report.html, one self-contained page that any browser shows with no network and no
// script: loss and accuracy per epoch (train, val, the EMA's val), the learning-rate schedule and the
// throughput per step, the LR-finder curve when `runner lr-find` left one in the run folder, a table
// of the epochs, and the effective recipe. Rewritten (whole, then renamed) after every epoch, so it
// can be watched during a run. Its figures are kept in the page itself, as JSON, so that a resumed
// run's report goes on from the epochs done before.
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <sstream>

#include "run_files.hpp"
#include "tessera/report/svg_chart.hpp"
#include "tessera/core/json.hpp"

namespace {

using namespace tessera::plugin;
using namespace tessera::plugins::loggers;
using namespace tessera::report;

const char* const data_open = "<script type=\"application/json\" id=\"tessera-report\">";

struct StepPoint {
    double global_step, lr, img_per_s, loss;
};

// An epoch as stored in the page, in this order.
std::vector<double> row_of(const EpochStats& e) {
    return {double(e.epoch),
            e.lr,
            e.train_loss,
            e.train_top1,
            e.val_loss,
            e.val_top1,
            e.val_top5,
            e.img_per_s,
            e.time_s,
            e.has_ema ? e.ema_val_loss : NAN,
            e.has_ema ? e.ema_val_top1 : NAN,
            e.has_ema ? e.ema_val_top5 : NAN,
            double(e.global_step)};
}

EpochStats epoch_of(const std::vector<double>& r) {
    EpochStats e;
    e.epoch = int(r[0]), e.lr = r[1], e.train_loss = r[2], e.train_top1 = r[3], e.val_loss = r[4], e.val_top1 = r[5];
    e.val_top5 = r[6], e.img_per_s = r[7], e.time_s = r[8], e.has_ema = std::isfinite(r[10]);
    e.ema_val_loss = r[9], e.ema_val_top1 = r[10], e.ema_val_top5 = r[11], e.global_step = std::int64_t(r[12]);
    return e;
}

std::string json_number(double v) {
    if (!std::isfinite(v)) return "null";
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.7g", v);
    return buf;
}

std::string json_rows(const std::vector<std::vector<double>>& rows) {
    std::string s = "[";
    for (std::size_t i = 0; i < rows.size(); ++i) {
        s += i ? ",[" : "[";
        for (std::size_t j = 0; j < rows[i].size(); ++j) {
            if (j) s += ',';
            s += json_number(rows[i][j]);
        }
        s += "]";
    }
    return s + "]";
}

std::vector<std::vector<double>> rows_from(const tessera::json::Value& v) {
    std::vector<std::vector<double>> rows;
    for (auto& row : v.array()) {
        rows.emplace_back();
        for (auto& x : row.array()) rows.back().push_back(x.is_number() ? x.number() : NAN);
    }
    return rows;
}

class Html final : public Logger {
public:
    explicit Html(const Options& o) : file_(o.text("file")), every_steps_(o.integer("every_steps")) {}

    void on_run_begin(const RunInfo& r) override {
        run_ = r;
        if (every_steps_ == 0) every_steps_ = std::max<std::int64_t>(1, r.steps_per_epoch / 25);
        if (r.first_epoch > 1 || r.first_step > 0) restore();
        write();
    }

    void on_step(const StepStats& s) override {
        if (s.global_step % every_steps_ == 0 || s.step == s.steps)
            steps_.push_back({double(s.global_step), s.lr, s.img_per_s, s.loss});
    }

    void on_epoch(const EpochStats& e) override {
        epochs_.push_back(e);
        write();
    }

    void on_run_end() override { write(); }

private:
    fs::path path() const { return fs::path(run_.run_dir) / file_; }

    // The figures an earlier process of this run left in the page, up to where this one resumes.
    void restore() {
        std::ifstream in(path());
        const std::string page((std::istreambuf_iterator<char>(in)), {});
        const auto begin = page.find(data_open);
        const auto end = page.find("</script>", begin);
        if (begin == std::string::npos || end == std::string::npos) return;
        try {
            const auto data = tessera::json::parse(
                page.substr(begin + std::strlen(data_open), end - begin - std::strlen(data_open)), path().string());
            for (auto& row : rows_from(data.object().at("epochs")))
                if (row.size() == 13 && row[0] < run_.first_epoch) epochs_.push_back(epoch_of(row));
            for (auto& row : rows_from(data.object().at("steps")))
                if (row.size() == 4 && row[0] <= double(run_.first_step))
                    steps_.push_back({row[0], row[1], row[2], row[3]});
        } catch (const std::exception&) {
            // A page of another version, or damaged: the report starts again from here.
        }
    }

    std::string charts() const {
        Series train_loss{"train", "#1f77b4", {}, {}}, val_loss{"val", "#d62728", {}, {}},
            ema_loss{"val (EMA)", "#9467bd", {}, {}};
        Series train_top1{"train top-1", "#1f77b4", {}, {}}, val_top1{"val top-1", "#d62728", {}, {}},
            val_top5{"val top-5", "#ff7f0e", {}, {}}, ema_top1{"val top-1 (EMA)", "#9467bd", {}, {}};
        for (auto& e : epochs_) {
            const double x = e.epoch;
            train_loss.x.push_back(x), train_loss.y.push_back(e.train_loss);
            val_loss.x.push_back(x), val_loss.y.push_back(e.val_loss);
            train_top1.x.push_back(x), train_top1.y.push_back(100 * e.train_top1);
            val_top1.x.push_back(x), val_top1.y.push_back(100 * e.val_top1);
            val_top5.x.push_back(x), val_top5.y.push_back(100 * e.val_top5);
            if (e.has_ema) {
                ema_loss.x.push_back(x), ema_loss.y.push_back(e.ema_val_loss);
                ema_top1.x.push_back(x), ema_top1.y.push_back(100 * e.ema_val_top1);
            }
        }
        Series lr{"learning rate", "#2ca02c", {}, {}}, speed{"images / s", "#8c564b", {}, {}};
        for (auto& s : steps_) {
            lr.x.push_back(s.global_step), lr.y.push_back(s.lr);
            speed.x.push_back(s.global_step), speed.y.push_back(s.img_per_s);
        }
        std::vector<Series> losses{train_loss, val_loss}, accuracy{train_top1, val_top1, val_top5};
        if (!ema_loss.x.empty()) losses.push_back(ema_loss), accuracy.push_back(ema_top1);
        return line_chart("Loss", "epoch", losses) + line_chart("Accuracy (%)", "epoch", accuracy) +
               line_chart("Learning rate", "optimizer step", {lr}) +
               line_chart("Throughput (images / s)", "optimizer step", {speed});
    }

    std::string epoch_table() const {
        std::ostringstream t;
        t << "<table><tr><th>epoch</th><th>lr</th><th>train loss</th><th>train top-1</th><th>val loss</th><th>val "
             "top-1</th>"
             "<th>val top-5</th><th>EMA val top-1</th><th>img/s</th><th>time (s)</th></tr>\n";
        char row[512];
        for (auto& e : epochs_) {
            std::snprintf(
                row, sizeof row,
                "<tr><td>%d</td><td>%.4g</td><td>%.4f</td><td>%.2f%%</td><td>%.4f</td><td>%.2f%%</td><td>%.2f%%</td>"
                "<td>%s</td><td>%.0f</td><td>%.1f</td></tr>\n",
                e.epoch, e.lr, e.train_loss, 100 * e.train_top1, e.val_loss, 100 * e.val_top1, 100 * e.val_top5,
                e.has_ema ? (json_number(100 * e.ema_val_top1) + "%").c_str() : "", e.img_per_s, e.time_s);
            t << row;
        }
        t << "</table>\n";
        return t.str();
    }

    std::string summary() const {
        std::ostringstream s;
        s << "<p>" << escape_xml(run_.arch) << ", " << run_.parameters << " parameters, batch " << run_.batch_size
          << ", " << epochs_.size() << " of " << run_.epochs << " epochs done";
        if (!epochs_.empty()) {
            const auto best = std::max_element(epochs_.begin(), epochs_.end(),
                                               [](auto& a, auto& b) { return a.val_top1 < b.val_top1; });
            char buf[160];
            std::snprintf(buf, sizeof buf, "; best val top-1 %.2f%% (epoch %d); last val top-1 %.2f%%, top-5 %.2f%%",
                          100 * best->val_top1, best->epoch, 100 * epochs_.back().val_top1,
                          100 * epochs_.back().val_top5);
            s << buf;
        }
        const std::time_t now = std::time(nullptr);
        char when[64];
        std::strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", std::gmtime(&now));
        s << ".</p><p class=\"small\">Written " << when << ".</p>\n";
        return s.str();
    }

    std::string lr_finder() const {
        std::ifstream in(fs::path(run_.run_dir) / "lr_find.svg");
        if (!in) return "";
        const std::string svg((std::istreambuf_iterator<char>(in)), {});
        return "<h2>Learning-rate finder</h2>\n<figure><figcaption>runner lr-find: smoothed loss against the learning "
               "rate</figcaption>\n" +
               svg + "</figure>\n";
    }

    void write() const {
        std::vector<std::vector<double>> epoch_rows, step_rows;
        for (auto& e : epochs_) epoch_rows.push_back(row_of(e));
        for (auto& s : steps_) step_rows.push_back({s.global_step, s.lr, s.img_per_s, s.loss});
        std::ostringstream page;
        page << "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>" << escape_xml(run_.name)
             << " · tessera</title>\n<style>\n"
                "body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:1200px}\n"
                "figure{display:inline-block;margin:8px;vertical-align:top}figcaption{font-weight:600;margin-bottom:"
                "4px}\n"
                "svg text{font-size:11px;fill:#333}.grid{stroke:#e4e4e4}.frame{fill:none;stroke:#999}\n"
                "table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:3px "
                "8px;text-align:right}\n"
                "pre{background:#f6f6f6;padding:12px;font-size:12px;overflow:auto}.small,.empty{color:#777;font-size:"
                "12px}\n"
                "</style></head><body>\n<h1>"
             << escape_xml(run_.name) << "</h1>\n"
             << summary() << "<div class=\"charts\">\n"
             << charts() << "</div>\n"
             << lr_finder() << "<h2>Epochs</h2>\n"
             << epoch_table() << "<h2>Recipe</h2>\n<pre>" << escape_xml(run_.recipe) << "</pre>\n"
             << data_open << "{\"epochs\":" << json_rows(epoch_rows) << ",\"steps\":" << json_rows(step_rows)
             << "}</script>\n"
             << "</body></html>\n";
        const fs::path temporary = path().string() + ".tmp";
        {
            std::ofstream out = open_for_writing(temporary);
            out << page.str();
            if (!out.flush())
                throw tessera::user_error(temporary.string(), "cannot write the report", "is the disk full?");
        }
        fs::rename(temporary, path());
    }

    std::string file_;
    std::int64_t every_steps_;
    RunInfo run_;
    std::vector<EpochStats> epochs_;
    std::vector<StepPoint> steps_;
};

Info info() {
    return {"",
            "html",
            "report.html: a self-contained page with plots of the run, its epochs and its recipe",
            {{"file", std::string("report.html"), "file in the run folder"},
             {"every_steps", std::int64_t(0),
              "record the learning rate and throughput every so many steps (0: 25 points per epoch)", at_least(0)}}};
}

std::unique_ptr<Logger> create(const Options& o) { return std::make_unique<Html>(o); }

}  // namespace

TESSERA_PLUGIN(Logger, info, create)
