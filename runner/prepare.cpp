// runner prepare SRC DEST: packs an ImageFolder (or ImageNet's train/ and val/) into shards of
// pre-resized JPEGs (tessera/data/shards.hpp) for the shards data plugin.
// runner prepare-val VAL_DIR LABELS: moves ImageNet's 50,000 flat validation images into class folders.
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <regex>

#include "runner.hpp"
#include "tessera/core/thread_pool.hpp"
#include "tessera/data/image.hpp"
#include "tessera/data/image_folder.hpp"
#include "tessera/data/resample.hpp"
#include "tessera/data/shards.hpp"

namespace tessera::runner {

namespace fs = std::filesystem;

namespace {

/// A progress line on a terminal (redrawn in place), or a line every tenth of the way otherwise.
class Progress {
public:
    Progress(std::string what, std::size_t total)
        : what_(std::move(what)), total_(total), tty_(isatty(fileno(stderr))) {}

    void update(std::size_t done) {
        const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
        const double rate = done / std::max(seconds, 1e-9);
        const int width = 24, filled = total_ ? int(width * done / total_) : width;
        if (!tty_ && done != total_ && done * 10 / std::max<std::size_t>(total_, 1) == last_tenth_) return;
        last_tenth_ = done * 10 / std::max<std::size_t>(total_, 1);
        std::string bar;
        for (int i = 0; i < width; ++i) bar += i < filled ? "\u2588" : "\u2591";
        std::fprintf(stderr, "%s%s %zu/%zu [%s] %.0f img/s  ETA %.0f s%s", tty_ ? "\r\033[K" : "", what_.c_str(), done,
                     total_, bar.c_str(), rate, rate > 0 ? (total_ - done) / rate : 0.0,
                     tty_ && done != total_ ? "" : "\n");
        std::fflush(stderr);
    }

private:
    std::string what_;
    std::size_t total_, last_tenth_ = ~std::size_t(0);
    bool tty_;
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

struct PackOptions {
    int max_side = 512, quality = 90;
    std::uint64_t shard_bytes = std::uint64_t(1) << 30;
    int threads = 1;
};

/// One image as it goes into a shard: its own bytes when it is a JPEG already small enough,
/// otherwise decoded, resized so that its longer side is max_side (PIL's bilinear) and re-encoded.
/// Throws DecodeError.
void pack_image(const std::vector<std::uint8_t>& bytes, const PackOptions& o, data::ImageDecoder& decoder,
                data::Image& image, data::JpegEncoder& encoder, data::Resampler& resampler,
                std::vector<std::uint8_t>& scratch, std::vector<std::uint8_t>& out) {
    const data::ImageHeader h = decoder.header(bytes);
    const int longer = std::max(h.width, h.height);
    if (h.format == data::ImageFormat::jpeg && !h.cmyk && longer <= o.max_side) {
        out = bytes;
        return;
    }
    const double scale = std::min(1.0, double(o.max_side) / longer);
    const int width = std::max(1, int(std::lround(h.width * scale))),
              height = std::max(1, int(std::lround(h.height * scale)));
    const int num = data::ImageDecoder::jpeg_scale_for(h, h.width, h.height, width, height);
    decoder.decode(bytes, h, image, num);
    scratch.resize(std::size_t(width) * height * 3);
    resampler.resize({image.pixels.data(), image.width, image.height, std::size_t(image.width) * 3},
                     {0, 0, double(image.width), double(image.height)}, {width, height, 0, 0, width, height},
                     scratch.data(), std::size_t(width) * 3);
    encoder.encode(scratch.data(), width, height, o.quality, out);
}

/// Packs `folder` into `dest`; images that cannot be read are reported and left out.
void pack(const data::ImageFolder& folder, const fs::path& dest, const PackOptions& o) {
    data::ShardWriter writer(dest, folder.classes, o.shard_bytes);
    ThreadPool pool(o.threads);
    Progress progress("prepare " + dest.filename().string(), folder.samples.size());
    constexpr std::size_t block = 512;  // images decoded in parallel, then written in order
    std::vector<std::vector<std::uint8_t>> packed(block);
    std::vector<std::string> failures(block);
    std::size_t skipped = 0;
    for (std::size_t first = 0; first < folder.samples.size(); first += block) {
        const std::size_t n = std::min(block, folder.samples.size() - first);
        pool.parallel_for(n, [&](std::size_t begin, std::size_t end) {
            data::ImageDecoder decoder;
            data::Image image;
            data::JpegEncoder encoder;
            data::Resampler resampler;
            std::vector<std::uint8_t> bytes, scratch;
            for (std::size_t i = begin; i < end; ++i) {
                failures[i].clear();
                try {
                    if (!data::read_bytes(folder.samples[first + i].path, bytes))
                        throw data::DecodeError("cannot read the file");
                    pack_image(bytes, o, decoder, image, encoder, resampler, scratch, packed[i]);
                } catch (const data::DecodeError& e) {
                    failures[i] = e.what();
                }
            }
        });
        for (std::size_t i = 0; i < n; ++i) {
            const auto& sample = folder.samples[first + i];
            if (!failures[i].empty()) {
                std::fprintf(stderr, "%swarning: %s: %s; left out\n", isatty(fileno(stderr)) ? "\r\033[K" : "",
                             sample.path.c_str(), failures[i].c_str());
                ++skipped;
                continue;
            }
            writer.add(packed[i], sample.label, fs::relative(sample.path, folder.root).string());
        }
        progress.update(first + n);
    }
    writer.finish();
    std::printf("%s: %zu images in %zu shards, %.2f GiB (%.0f KiB per image)%s\n", dest.string().c_str(),
                writer.count(), writer.shards(), writer.total_bytes() / double(1u << 30),
                writer.total_bytes() / 1024.0 / std::max<std::size_t>(1, writer.count()),
                skipped ? (", " + std::to_string(skipped) + " unreadable images left out").c_str() : "");
}

}  // namespace

int prepare(const std::vector<std::string>& raw) {
    Args args(raw, {}, {"max-side", "quality", "shard-size", "threads"});
    if (args.positional().size() != 2)
        throw user_error("runner prepare", "expected SRC and DEST folders",
                         "e.g. runner prepare /data/imagenet /data/imagenet-shards --max-side 256");
    PackOptions o;
    o.max_side = args.integer("max-side", 512, 8);
    o.quality = args.integer("quality", 90);
    if (o.quality > 100) throw user_error("runner prepare --quality", "must be between 1 and 100");
    o.shard_bytes = std::uint64_t(args.integer("shard-size", 1024)) << 20;
    o.threads = thread_count(args);
    const fs::path src = args.positional()[0], dest = args.positional()[1];
    // ImageNet's root (train/ and val/ inside): both, val with train's class numbers.
    if (fs::is_directory(src / "train")) {
        const data::ImageFolder train = data::ImageFolder::scan(src / "train", "runner prepare's SRC/train");
        pack(train, dest / "train", o);
        if (fs::is_directory(src / "val"))
            pack(data::ImageFolder::scan(src / "val", "runner prepare's SRC/val", &train.classes), dest / "val", o);
        return 0;
    }
    pack(data::ImageFolder::scan(src, "runner prepare's SRC"), dest, o);
    return 0;
}

// ---- prepare-val -------------------------------------------------------------------------------

namespace {

/// ILSVRC2012_val_00000001.JPEG → its class folder name, from one of the files ImageNet ships.
std::map<std::string, std::string> read_validation_labels(const fs::path& labels,
                                                          const std::optional<std::string>& synsets) {
    std::ifstream in(labels);
    if (!in) throw user_error(labels.string(), "cannot read the labels file");
    std::map<std::string, std::string> wnid_of;
    std::vector<std::string> lines;
    for (std::string line; std::getline(in, line);) {
        while (!line.empty() && (line.back() == '\r' || line.back() == ' ')) line.pop_back();
        if (!line.empty()) lines.push_back(line);
    }
    auto image = [](std::size_t i) {
        char name[40];
        std::snprintf(name, sizeof name, "ILSVRC2012_val_%08zu", i + 1);
        return std::string(name);
    };
    const std::regex wnid("n[0-9]{8}");
    if (!lines.empty() && lines[0].rfind("ImageId,PredictionString", 0) == 0) {
        // LOC_val_solution.csv: "ILSVRC2012_val_00008726,n02119789 255 142 454 329 …"
        for (std::size_t i = 1; i < lines.size(); ++i) {
            const auto comma = lines[i].find(',');
            const std::string id = lines[i].substr(0, comma), label = lines[i].substr(comma + 1, 9);
            if (comma == std::string::npos || !std::regex_match(label, wnid))
                throw user_error(labels.string() + ":" + std::to_string(i + 1), "expected \"ImageId,nXXXXXXXX …\"");
            wnid_of[id] = label;
        }
    } else if (!lines.empty() && std::regex_match(lines[0], wnid)) {
        // One WordNet id per line, in image order (imagenet_2012_validation_synset_labels.txt).
        for (std::size_t i = 0; i < lines.size(); ++i) {
            if (!std::regex_match(lines[i], wnid))
                throw user_error(labels.string() + ":" + std::to_string(i + 1),
                                 "expected a WordNet id such as n01440764");
            wnid_of[image(i)] = lines[i];
        }
    } else if (!lines.empty() && std::regex_match(lines[0], std::regex("[0-9]+"))) {
        // The devkit's ILSVRC2012_validation_ground_truth.txt: ILSVRC2012_IDs, 1 to 1000.
        if (!synsets)
            throw user_error(labels.string(),
                             "holds the devkit's ILSVRC2012_IDs, which need the devkit's order of classes",
                             "add --synsets FILE (the 1000 WordNet ids in ILSVRC2012_ID order, one per line), or use "
                             "LOC_val_solution.csv, which names the classes itself");
        std::ifstream s(*synsets);
        std::vector<std::string> order;
        for (std::string line; std::getline(s, line);)
            if (std::smatch m; std::regex_search(line, m, wnid)) order.push_back(m.str());
        if (order.empty()) throw user_error(*synsets, "holds no WordNet ids (nXXXXXXXX)");
        for (std::size_t i = 0; i < lines.size(); ++i) {
            const long id = std::strtol(lines[i].c_str(), nullptr, 10);
            if (id < 1 || std::size_t(id) > order.size())
                throw user_error(labels.string() + ":" + std::to_string(i + 1),
                                 "class id " + lines[i] + " is not between 1 and " + std::to_string(order.size()));
            wnid_of[image(i)] = order[std::size_t(id) - 1];
        }
    } else {
        throw user_error(labels.string(), "is not a validation labels file tessera knows",
                         "use LOC_val_solution.csv, a file of one WordNet id per image, or the devkit's "
                         "ILSVRC2012_validation_ground_truth.txt with --synsets");
    }
    return wnid_of;
}

}  // namespace

int prepare_val(const std::vector<std::string>& raw) {
    Args args(raw, {"dry-run"}, {"synsets"});
    if (args.positional().size() != 2)
        throw user_error("runner prepare-val", "expected VAL_DIR and LABELS",
                         "e.g. runner prepare-val /data/imagenet/val LOC_val_solution.csv");
    const fs::path dir = args.positional()[0];
    if (!fs::is_directory(dir))
        throw user_error(dir.string(), "no such folder", "give the folder of the 50,000 validation JPEGs");
    const auto wnid_of = read_validation_labels(args.positional()[1], args.value("synsets"));
    // Check everything before moving anything; images already in their folder count as done, so a
    // second run (or one after an interruption) finishes the job.
    std::vector<std::pair<fs::path, fs::path>> moves;
    std::size_t in_place = 0, missing = 0;
    for (const auto& [id, wnid] : wnid_of) {
        const fs::path target = dir / wnid / (id + ".JPEG");
        if (fs::exists(target))
            ++in_place;
        else if (fs::exists(dir / (id + ".JPEG")))
            moves.push_back({dir / (id + ".JPEG"), target});
        else
            ++missing;
    }
    if (moves.empty() && in_place == 0)
        throw user_error(dir.string(),
                         "holds none of the " + std::to_string(wnid_of.size()) + " images the labels name",
                         "give the folder where ILSVRC2012_val_00000001.JPEG … are");
    // Every class folder must be a folder, or be free to become one, before anything moves.
    for (const auto& [from, to] : moves) {
        std::error_code ec;
        if (fs::exists(to.parent_path(), ec) && !fs::is_directory(to.parent_path(), ec))
            throw user_error(to.parent_path().string(),
                             "is a file, where the class folder of " + from.filename().string() + " must go",
                             "move or remove it, then run prepare-val again: no image has been moved");
    }
    if (args.flag("dry-run")) {
        std::printf("would move %zu images into class folders (%zu already in place, %zu not found)\n", moves.size(),
                    in_place, missing);
        return 0;
    }
    for (const auto& [from, to] : moves) {
        fs::create_directories(to.parent_path());
        fs::rename(from, to);
    }
    std::printf("moved %zu images into class folders under %s (%zu already in place%s)\n", moves.size(),
                dir.string().c_str(), in_place,
                missing ? (", " + std::to_string(missing) + " named in the labels but not found").c_str() : "");
    return 0;
}

}  // namespace tessera::runner
