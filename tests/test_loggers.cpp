// The file loggers, read back as their readers would: events.jsonl line by line, the TensorBoard
// event files record by record with their CRCs checked, report.html in a headless browser. The run
// is interrupted and resumed on the way, so that each file must keep what came before.
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "helpers.hpp"
#include "tessera/core/json.hpp"

#include <stb_image.h>

namespace tessera::test {
namespace {

const char* recipe = R"([run]
name = "logs"
out_dir = "runs"
[model]
arch = "resnet20"
[data]
plugin = "synthetic"
image_size = 8
train_size = 160
val_size = 64
batch_size = 16
[scheduler]
plugin = "onecycle"
max_lr = 0.1
[train]
epochs = 3
ema = 0.9
[[logger]]
plugin = "csv"
[[logger]]
plugin = "jsonl"
every_steps = 1
[[logger]]
plugin = "tensorboard"
every_steps = 1
[[logger]]
plugin = "html"
every_steps = 1
)";

/// One run of 3 epochs of 10 steps in three processes: the first stops after 12 steps, the second
/// goes on to step 17, and the third resumes from the first's checkpoint (a copy of it), at step 12,
/// behind the last step logged. Each file must keep what came before step 12 and drop what the
/// second process logged after it. Its folder.
const fs::path& run_folder() {
    static TempDir dir;
    static const bool done = [] {
        std::ofstream(dir / "r.toml") << recipe;
        const RunResult first = run_runner("r.toml --threads 2 --stop-after-steps 12", dir.path());
        EXPECT_EQ(first.exit_code, 0) << first.output;
        fs::create_directories(dir / "at12");
        for (const char* file : {"last.safetensors", "last.state.safetensors", "last.ema.safetensors"})
            fs::copy_file(dir / "runs" / "logs" / file, dir / "at12" / file);
        const RunResult second = run_runner("r.toml --threads 2 --stop-after-steps 17", dir.path());
        EXPECT_EQ(second.exit_code, 0) << second.output;
        const RunResult third = run_runner("r.toml --threads 2 --resume at12/last.safetensors", dir.path());
        EXPECT_EQ(third.exit_code, 0) << third.output;
        return true;
    }();
    static const fs::path folder = dir / "runs" / "logs";
    return done ? folder : folder;
}

/// val_top1 of each epoch, from metrics.csv.
std::vector<double> csv_val_top1() {
    std::ifstream csv(run_folder() / "metrics.csv");
    std::string line;
    std::getline(csv, line);
    std::vector<double> top1;
    while (std::getline(csv, line)) {
        std::stringstream row(line);
        std::vector<std::string> f;
        for (std::string x; std::getline(row, x, ',');) f.push_back(x);
        top1.push_back(std::stod(f.at(5)));
    }
    return top1;
}

TEST(Loggers, CsvKeepsTheEpochsBeforeAResume) {
    std::ifstream csv(run_folder() / "metrics.csv");
    std::string header;
    std::getline(csv, header);
    EXPECT_EQ(header,
              "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,img_per_s,time_s,bad_samples,ema_val_loss,ema_"
              "val_top1,ema_val_top5");
    std::vector<int> epochs;
    for (std::string row; std::getline(csv, row);) epochs.push_back(std::stoi(row));
    EXPECT_EQ(epochs, (std::vector<int>{1, 2, 3}));
}

TEST(Loggers, JsonlHasEveryStepOnceInOrder) {
    std::ifstream in(run_folder() / "events.jsonl");
    std::vector<double> step_events, epoch_top1;
    int run_begins = 0, run_ends = 0;
    for (std::string line; std::getline(in, line);) {
        const auto event = json::parse(line, "events.jsonl");  // throws on a malformed line
        const auto& o = event.object();
        const std::string& kind = o.at("event").string();
        if (kind == "run_begin") ++run_begins;
        if (kind == "run_end") ++run_ends;
        if (kind == "step") step_events.push_back(o.at("global_step").number());
        if (kind == "epoch") {
            epoch_top1.push_back(o.at("val_top1").number());
            EXPECT_TRUE(o.at("ema_val_top1").is_number());
        }
    }
    // Each process began, and the third dropped what the second wrote after step 12, its end among it.
    EXPECT_EQ(run_begins, 3);
    EXPECT_EQ(run_ends, 2);
    std::vector<double> want(30);
    for (int i = 0; i < 30; ++i) want[std::size_t(i)] = i + 1;
    EXPECT_EQ(step_events, want);
    const auto csv = csv_val_top1();
    ASSERT_EQ(epoch_top1.size(), csv.size());
    for (std::size_t i = 0; i < csv.size(); ++i) EXPECT_NEAR(epoch_top1[i], csv[i], 1e-6);
}

// ---- TensorBoard: an independent reader ----------------------------------------------------------

std::uint32_t crc32c_bitwise(const char* p, std::size_t n) {  // the textbook loop, no table
    std::uint32_t crc = ~0u;
    for (std::size_t i = 0; i < n; ++i) {
        crc ^= std::uint8_t(p[i]);
        for (int k = 0; k < 8; ++k) crc = (crc >> 1) ^ (0x82F63B78u & (0u - (crc & 1)));
    }
    return ~crc;
}
std::uint32_t unmask(std::uint32_t masked) {
    const std::uint32_t rot = masked - 0xA282EAD8u;
    return (rot >> 17) | (rot << 15);
}

struct Reader {  // protocol buffer wire format
    const std::string& s;
    std::size_t pos = 0, end;
    std::uint64_t varint() {
        std::uint64_t v = 0;
        for (int shift = 0;; shift += 7) {
            const auto b = std::uint8_t(s.at(pos++));
            v |= std::uint64_t(b & 0x7F) << shift;
            if (!(b & 0x80)) return v;
        }
    }
};

struct Event {
    std::int64_t step = -1;
    bool session_start = false, has_version = false;
    std::map<std::string, float> scalars;
};

Event decode(const std::string& bytes) {
    Event e;
    Reader r{bytes, 0, bytes.size()};
    while (r.pos < r.end) {
        const auto key = r.varint();
        const int field = int(key >> 3), wire = int(key & 7);
        if (wire == 1) {
            r.pos += 8;
            continue;
        }  // wall_time
        if (wire == 0) {
            e.step = std::int64_t(r.varint());
            continue;
        }
        const std::size_t length = r.varint();
        const std::string payload = bytes.substr(r.pos, length);
        r.pos += length;
        if (field == 3) e.has_version = payload == "brain.Event:2";
        if (field == 6) e.session_start = payload == std::string("\x08\x01", 2);
        if (field != 5) continue;
        Reader values{payload, 0, payload.size()};
        while (values.pos < values.end) {
            values.varint();  // Summary.value
            const std::size_t n = values.varint();
            const std::string v = payload.substr(values.pos, n);
            values.pos += n;
            Reader fields{v, 0, v.size()};
            std::string tag;
            float value = NAN;
            while (fields.pos < fields.end) {
                const auto k = fields.varint();
                if ((k >> 3) == 1) {
                    const std::size_t len = fields.varint();
                    tag = v.substr(fields.pos, len);
                    fields.pos += len;
                } else {
                    std::memcpy(&value, v.data() + fields.pos, 4);
                    fields.pos += 4;
                }
            }
            e.scalars[tag] = value;
        }
    }
    return e;
}

/// Every record of `file`, with both CRCs checked.
std::vector<Event> read_events(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    const std::string data((std::istreambuf_iterator<char>(in)), {});
    std::vector<Event> events;
    for (std::size_t pos = 0; pos < data.size();) {
        EXPECT_LE(pos + 12, data.size()) << "a record's header is cut short";
        std::uint64_t length;
        std::uint32_t length_crc, data_crc;
        std::memcpy(&length, data.data() + pos, 8);
        std::memcpy(&length_crc, data.data() + pos + 8, 4);
        EXPECT_EQ(unmask(length_crc), crc32c_bitwise(data.data() + pos, 8))
            << "length CRC of the record at byte " << pos;
        EXPECT_LE(pos + 16 + length, data.size());
        const std::string record = data.substr(pos + 12, length);
        std::memcpy(&data_crc, data.data() + pos + 12 + length, 4);
        EXPECT_EQ(unmask(data_crc), crc32c_bitwise(record.data(), record.size()))
            << "data CRC of the record at byte " << pos;
        events.push_back(decode(record));
        pos += 16 + length;
    }
    return events;
}

TEST(Loggers, TensorboardRecordsPassTheirCrcsAndHoldTheScalars) {
    ASSERT_EQ(crc32c_bitwise("123456789", 9), 0xE3069283u);  // the CRC-32C check value
    std::vector<fs::path> files;
    for (auto& f : fs::directory_iterator(run_folder() / "tensorboard")) files.push_back(f.path());
    std::sort(files.begin(), files.end());  // by creation second, then pid
    ASSERT_EQ(files.size(), 3u);
    // TensorBoard's reading: a SessionLog START at step s drops what earlier files logged from s on;
    // every point is kept as logged, so a step that survived the purge and was logged again shows twice.
    std::map<std::string, std::vector<std::pair<std::int64_t, float>>> series;
    int starts = 0;
    for (auto& file : files) {
        const auto events = read_events(file);
        ASSERT_FALSE(events.empty());
        EXPECT_TRUE(events.front().has_version) << file;
        for (auto& e : events) {
            if (e.session_start) {
                ++starts;
                for (auto& [tag, points] : series)
                    std::erase_if(points, [&](const auto& point) { return point.first >= e.step; });
            }
            for (auto& [tag, value] : e.scalars) series[tag].emplace_back(e.step, value);
        }
    }
    EXPECT_EQ(starts, 2);  // the second and third processes
    for (const char* tag : {"lr", "train/loss"}) {
        ASSERT_EQ(series[tag].size(), 30u) << tag << ": the steps the third process took again were not dropped";
        for (std::size_t i = 0; i < 30; ++i) EXPECT_EQ(series[tag][i].first, std::int64_t(i + 1)) << tag;
    }
    ASSERT_EQ(series["val/top1"].size(), 3u);
    ASSERT_EQ(series["ema/val_top1"].size(), 3u);
    const auto csv = csv_val_top1();
    for (std::size_t epoch = 0; epoch < 3; ++epoch) {
        EXPECT_EQ(series["val/top1"][epoch].first, std::int64_t(10 * (epoch + 1)));
        EXPECT_NEAR(series["val/top1"][epoch].second, csv.at(epoch), 1e-6);
    }
}

// ---- the HTML report -------------------------------------------------------------------------------

std::string read_text(const fs::path& file) {
    std::ifstream in(file);
    return std::string((std::istreambuf_iterator<char>(in)), {});
}

TEST(Loggers, HtmlReportHoldsEveryEpochAndNeedsNoNetwork) {
    const std::string page = read_text(run_folder() / "report.html");
    EXPECT_NE(page.find("<h1>logs</h1>"), std::string::npos);
    EXPECT_NE(page.find("3 of 3 epochs done"), std::string::npos);
    for (const char* chart : {"Loss", "Accuracy (%)", "Learning rate", "Throughput (images / s)"})
        EXPECT_NE(page.find(std::string("<figcaption>") + chart + "</figcaption>\n<svg"), std::string::npos) << chart;
    EXPECT_NE(page.find("plugin = &quot;html&quot;"), std::string::npos);  // the effective recipe
    for (const char* fetches : {"<script src", "<link", "<img", "url("})
        EXPECT_EQ(page.find(fetches), std::string::npos) << "the page fetches something: " << fetches;
    // The figures after the resume still include the first process's epochs and steps.
    const auto data_at = page.find("id=\"tessera-report\">");
    ASSERT_NE(data_at, std::string::npos);
    const auto begin = page.find('>', data_at) + 1;
    const auto data = json::parse(page.substr(begin, page.find("</script>", begin) - begin), "report.html");
    EXPECT_EQ(data.object().at("epochs").array().size(), 3u);
    EXPECT_EQ(data.object().at("steps").array().size(), 30u);
}

std::string chromium() {
    for (const char* name : {"chromium", "chromium-browser", "google-chrome"}) {
        const RunResult found = run_shell(std::string("command -v ") + name);
        if (found.exit_code == 0 && !found.output.empty()) return found.output.substr(0, found.output.find('\n'));
    }
    return "";
}

TEST(Loggers, HtmlReportRendersItsPlotsInChromium) {
    const std::string browser = chromium();
    if (browser.empty()) GTEST_SKIP() << "no Chromium here (apt install chromium); scripts/test installs it";
    TempDir shots;
    const fs::path png = shots / "report.png";
    run_shell("'" + browser +
              "' --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1280,1400 --screenshot='" +
              png.string() + "' 'file://" + fs::absolute(run_folder() / "report.html").string() + "' 2>&1");
    int w = 0, h = 0, channels = 0;
    unsigned char* pixels = stbi_load(png.c_str(), &w, &h, &channels, 3);
    ASSERT_NE(pixels, nullptr) << "Chromium wrote no screenshot";
    // Each series is drawn in its own colour: count the pixels of each.
    std::map<std::string, int> seen;
    const std::map<std::string, std::array<int, 3>> colours = {{"train", {0x1f, 0x77, 0xb4}},
                                                               {"val", {0xd6, 0x27, 0x28}},
                                                               {"lr", {0x2c, 0xa0, 0x2c}},
                                                               {"throughput", {0x8c, 0x56, 0x4b}},
                                                               {"ema", {0x94, 0x67, 0xbd}}};
    for (int i = 0; i < w * h; ++i)
        for (auto& [name, c] : colours)
            if (std::abs(pixels[3 * i] - c[0]) < 12 && std::abs(pixels[3 * i + 1] - c[1]) < 12 &&
                std::abs(pixels[3 * i + 2] - c[2]) < 12)
                ++seen[name];
    stbi_image_free(pixels);
    for (auto& [name, c] : colours) EXPECT_GT(seen[name], 150) << "the " << name << " series is not drawn";
}

}  // namespace
}  // namespace tessera::test
