// tensorboard: event files that TensorBoard reads (tensorboard --logdir runs), in <run>/tensorboard/.
// Scalars, against the optimizer step:
//   train/loss, train/top1, lr, throughput/img_per_s      every every_steps steps (running means of the epoch)
//   epoch/train_loss, epoch/train_top1, val/loss, val/top1, val/top5, ema/val_top1 …   each epoch
//
// The file format is TFRecord: per record, the length (u64), its masked CRC-32C, the bytes, their
// masked CRC-32C; each record one tensorflow.Event protocol buffer, encoded here by hand (four
// fields) so that tessera needs no protobuf. A resumed run starts a new file with a SessionLog START
// at the step it resumes from, which makes TensorBoard drop the steps after it from earlier files.
#include <unistd.h>

#include <array>
#include <chrono>
#include <cstring>

#include "run_files.hpp"

namespace {

using namespace tessera::plugin;
using namespace tessera::plugins::loggers;

// ---- CRC-32C (Castagnoli), as TFRecord checks its records ------------------------------------------

std::uint32_t crc32c(const std::string& bytes) {
    static const auto table = [] {
        std::array<std::uint32_t, 256> t{};
        for (std::uint32_t i = 0; i < 256; ++i) {
            std::uint32_t c = i;
            for (int k = 0; k < 8; ++k) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
            t[i] = c;
        }
        return t;
    }();
    std::uint32_t crc = 0xFFFFFFFFu;
    for (unsigned char b : bytes) crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8);
    return crc ^ 0xFFFFFFFFu;
}

std::uint32_t masked_crc(const std::string& bytes) {
    const std::uint32_t crc = crc32c(bytes);
    return ((crc >> 15) | (crc << 17)) + 0xA282EAD8u;
}

// ---- protocol buffer encoding: the few wire types an Event needs --------------------------------

void varint(std::string& out, std::uint64_t v) {
    for (; v >= 0x80; v >>= 7) out += char((v & 0x7F) | 0x80);
    out += char(v);
}

template <class T>
void fixed(std::string& out, T v) {  // little-endian, as x86 and ARM store it
    char bytes[sizeof v];
    std::memcpy(bytes, &v, sizeof v);
    out.append(bytes, sizeof v);
}

void field_bytes(std::string& out, int field, const std::string& bytes) {
    varint(out, std::uint64_t(field) << 3 | 2);
    varint(out, bytes.size());
    out += bytes;
}

/// tensorflow.Event with wall_time (1), step (2) and one of file_version (3), summary (5), session_log (6).
std::string event(std::int64_t step, int payload_field, const std::string& payload) {
    std::string e;
    varint(e, 1 << 3 | 1);
    fixed(e, std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count());
    varint(e, 2 << 3 | 0);
    varint(e, std::uint64_t(step));
    field_bytes(e, payload_field, payload);
    return e;
}

/// Summary.Value: tag (1) and simple_value (2).
std::string scalar(const std::string& tag, double value) {
    std::string v;
    field_bytes(v, 1, tag);
    varint(v, 2 << 3 | 5);
    fixed(v, float(value));
    std::string wrapped;
    field_bytes(wrapped, 1, v);  // Summary.value (1)
    return wrapped;
}

class Tensorboard final : public Logger {
public:
    explicit Tensorboard(const Options& o) : folder_(o.text("folder")), every_steps_(o.integer("every_steps")) {}

    void on_run_begin(const RunInfo& r) override {
        const fs::path dir = fs::path(r.run_dir) / folder_;
        std::error_code ec;
        fs::create_directories(dir, ec);
        char host[256] = "localhost";
        gethostname(host, sizeof host - 1);
        const auto seconds =
            std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch())
                .count();
        // The same name TensorFlow's writer uses; the pid keeps two processes of one second apart.
        out_ = open_for_writing(
            dir / ("events.out.tfevents." + std::to_string(seconds) + "." + host + "." + std::to_string(getpid())));
        write(event(r.first_step, 3, "brain.Event:2"));
        if (r.first_step > 0) {
            std::string session_log;
            varint(session_log, 1 << 3 | 0);
            varint(session_log, 1);                          // SessionLog.START
            write(event(r.first_step + 1, 6, session_log));  // TensorBoard drops the steps from this one on
        }
    }

    void on_step(const StepStats& s) override {
        if (every_steps_ == 0 || (s.global_step % every_steps_ != 0 && s.step != s.steps)) return;
        write(event(s.global_step, 5,
                    scalar("train/loss", s.loss) + scalar("train/top1", s.top1) + scalar("lr", s.lr) +
                        scalar("throughput/img_per_s", s.img_per_s)));
        out_.flush();
    }

    void on_epoch(const EpochStats& e) override {
        std::string summary = scalar("epoch/train_loss", e.train_loss) + scalar("epoch/train_top1", e.train_top1) +
                              scalar("val/loss", e.val_loss) + scalar("val/top1", e.val_top1) +
                              scalar("val/top5", e.val_top5) + scalar("epoch/img_per_s", e.img_per_s) +
                              scalar("epoch/time_s", e.time_s);
        if (e.has_ema)
            summary += scalar("ema/val_loss", e.ema_val_loss) + scalar("ema/val_top1", e.ema_val_top1) +
                       scalar("ema/val_top5", e.ema_val_top5);
        write(event(e.global_step, 5, summary));
        out_.flush();
    }

    void on_run_end() override { out_.flush(); }

private:
    // One TFRecord: length, its masked CRC, the event, its masked CRC.
    void write(const std::string& record) {
        std::string framed;
        fixed(framed, std::uint64_t(record.size()));
        fixed(framed, masked_crc(framed));
        framed += record;
        fixed(framed, masked_crc(record));
        out_.write(framed.data(), std::streamsize(framed.size()));
    }

    std::string folder_;
    std::int64_t every_steps_;
    std::ofstream out_;
};

Info info() {
    return {"",
            "tensorboard",
            "TensorBoard event files: losses, accuracies, learning rate, throughput",
            {{"folder", std::string("tensorboard"),
              "folder in the run folder (tensorboard --logdir points at it or above)"},
             {"every_steps", std::int64_t(10), "write step scalars every so many optimizer steps (0: epochs only)",
              at_least(0)}}};
}

std::unique_ptr<Logger> create(const Options& o) { return std::make_unique<Tensorboard>(o); }

}  // namespace

TESSERA_PLUGIN(Logger, info, create)
