// idx: MNIST-format datasets (MNIST, Fashion-MNIST, KMNIST): the four IDX files of a folder, gzipped
// or not, held in memory. Training batches are shuffled per epoch and optionally augmented with a
// padded random crop and a horizontal flip; validation uses the test files in order.
#include <zlib.h>

#include <array>
#include <filesystem>
#include <numeric>
#include <vector>

#include "tessera/data/augment.hpp"
#include "tessera/data/idx.hpp"
#include "tessera/data/sampler.hpp"
#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;
namespace fs = std::filesystem;

constexpr std::size_t max_file_bytes = std::size_t(4) << 30;

// Reads a whole file, transparently gunzipping (zlib reads plain files as they are).
std::vector<std::uint8_t> read_file(const fs::path& path) {
    gzFile f = gzopen(path.c_str(), "rb");
    if (!f) throw tessera::user_error(path.string(), "cannot open", "check the data path in the recipe");
    std::vector<std::uint8_t> bytes;
    std::array<std::uint8_t, 1 << 16> chunk;
    int got;
    while ((got = gzread(f, chunk.data(), chunk.size())) > 0) {
        bytes.insert(bytes.end(), chunk.begin(), chunk.begin() + got);
        if (bytes.size() > max_file_bytes) {  // a gzip bomb, or not an MNIST-sized dataset
            gzclose(f);
            throw tessera::user_error(path.string(),
                                      "holds more than 4 GiB of data: not an MNIST-format file this plugin reads");
        }
    }
    int err = 0;
    const char* message = gzerror(f, &err);
    const std::string reason =
        (got < 0 || (err != Z_OK && err != Z_STREAM_END)) ? std::string(message ? message : "read error") : "";
    gzclose(f);
    if (!reason.empty())
        throw tessera::user_error(path.string(), "cannot read: " + reason, "the file is damaged; download it again");
    return bytes;
}

using tessera::data::Idx;

Idx read_idx(const fs::path& path, std::size_t expected_dims) {
    return tessera::data::parse_idx(read_file(path), expected_dims, path.string());
}

fs::path find_file(const fs::path& dir, const std::string& stem) {
    for (const char* suffix : {"", ".gz"})
        if (fs::exists(dir / (stem + suffix))) return dir / (stem + suffix);
    throw tessera::user_error(
        (dir / stem).string() + "[.gz]", "missing",
        "data.path must be a folder with the four MNIST-format files (train-images-idx3-ubyte, "
        "train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte, gzipped or not); "
        "for Fashion-MNIST on Debian: apt install dataset-fashion-mnist");
}

struct Split_ {
    Idx images, labels;
    std::int64_t size = 0;
};

Split_ load_split(const fs::path& dir, const std::string& prefix, std::int64_t limit) {
    Split_ s{read_idx(find_file(dir, prefix + "-images-idx3-ubyte"), 3),
             read_idx(find_file(dir, prefix + "-labels-idx1-ubyte"), 1)};
    if (s.images.dims[0] != s.labels.dims[0])
        throw tessera::user_error(dir.string(), prefix +
                                                    " images and labels disagree: " + std::to_string(s.images.dims[0]) +
                                                    " images, " + std::to_string(s.labels.dims[0]) + " labels");
    s.size = s.images.dims[0];
    if (limit > 0) s.size = std::min<std::int64_t>(s.size, limit);
    return s;
}

class IdxData final : public DataSource {
public:
    explicit IdxData(const Options& o) : padding_(int(o.integer("random_crop_padding"))), flip_(o.flag("hflip")) {
        const fs::path dir = o.text("path");
        if (dir.empty())
            throw tessera::user_error("[data]", "the idx plugin needs path = \"folder\"",
                                      "e.g. path = \"/usr/share/datasets/fashion-mnist\"");
        if (!fs::is_directory(dir))
            throw tessera::user_error(dir.string(), "no such folder",
                                      "data.path must be a folder of MNIST-format files; for Fashion-MNIST on Debian: "
                                      "apt install dataset-fashion-mnist (files in /usr/share/datasets/fashion-mnist)");
        train_ = load_split(dir, "train", o.integer("limit_train"));
        val_ = load_split(dir, "t10k", o.integer("limit_val"));
        info_.height = int(train_.images.dims[1]);
        info_.width = int(train_.images.dims[2]);
        info_.channels = 1;
        if (val_.images.dims[1] != train_.images.dims[1] || val_.images.dims[2] != train_.images.dims[2])
            throw tessera::user_error(dir.string(), "training and test images differ in size");
        std::uint8_t max_label = 0;
        for (auto* s : {&train_, &val_})
            for (std::int64_t i = 0; i < s->size; ++i) max_label = std::max(max_label, s->labels.data[i]);
        info_.num_classes = int(max_label) + 1;
        info_.train_size = train_.size;
        info_.val_size = val_.size;
        // Normalise with the training set's own statistics.
        const std::size_t pixels = std::size_t(train_.size) * info_.height * info_.width;
        double sum = 0, sum_sq = 0;
        for (std::size_t i = 0; i < pixels; ++i) {
            const double v = train_.images.data[i] / 255.0;
            sum += v;
            sum_sq += v * v;
        }
        const double mean = sum / double(pixels);
        info_.mean = {mean};
        info_.std = {std::sqrt(std::max(1e-12, sum_sq / double(pixels) - mean * mean))};
        if (o.text("labels") == "fashion")
            info_.class_names = {"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                 "Sandal",      "Shirt",   "Sneaker",  "Bag",   "Ankle boot"};
    }

    DatasetInfo info() const override { return info_; }

    std::int64_t num_batches(Split split, const EpochPlan& plan) const override {
        return tessera::data::EpochCursor::num_batches(split, plan, split == Split::train ? train_.size : val_.size);
    }

    void start_epoch(Split split, const EpochPlan& plan) override {
        cursor_.start(split, plan, split == Split::train ? train_.size : val_.size);
        seed_ = plan.seed;
        stream_ = std::uint64_t(plan.epoch) << 16 | std::uint64_t(plan.rank);
    }

    bool next(Batch& batch) override {
        const std::int64_t first = cursor_.position();
        const auto indices = cursor_.next_batch();
        if (indices.empty()) return false;
        const bool training = cursor_.split() == Split::train;
        const Split_& s = training ? train_ : val_;
        const int h = info_.height, w = info_.width;
        const std::size_t image = std::size_t(h) * w;
        batch.count = int(indices.size());
        batch.height = h;
        batch.width = w;
        batch.channels = 1;
        batch.pixels.resize(indices.size() * image);
        batch.labels.resize(indices.size());
        const bool augment = training && (padding_ > 0 || flip_);
        for (std::size_t i = 0; i < indices.size(); ++i) {
            const std::uint8_t* src = s.images.data.data() + indices[i] * image;
            // Each sample's crop depends on its place in the epoch alone, so a resumed epoch crops alike.
            tessera::Rng rng = tessera::Rng::derive(seed_ ^ 0xA06, stream_, std::uint64_t(first) + i);
            if (augment)
                tessera::data::random_crop_flip(src, batch.pixels.data() + i * image, h, w, 1, padding_, flip_, rng);
            else
                std::copy(src, src + image, batch.pixels.data() + i * image);
            batch.labels[i] = s.labels.data[indices[i]];
        }
        return true;
    }

private:
    int padding_;
    bool flip_;
    Split_ train_, val_;
    DatasetInfo info_;
    tessera::data::EpochCursor cursor_;
    std::uint64_t seed_ = 0, stream_ = 0;  // the augmentation's, per epoch and rank
};

Info info() {
    return {"",
            "idx",
            "MNIST-format IDX files (MNIST, Fashion-MNIST), gzipped or not",
            {{"path", std::string(""), "folder with train-/t10k- images and labels"},
             {"random_crop_padding", std::int64_t(0), "pad by this many pixels and crop back at random (0: off)",
              between(0, 64)},
             {"hflip", false, "random horizontal flips"},
             {"limit_train", std::int64_t(0), "use only the first N training images (0: all)", at_least(0)},
             {"limit_val", std::int64_t(0), "use only the first N test images (0: all)", at_least(0)},
             {"labels", std::string(""), "class names to show: \"fashion\" or none", one_of({"", "fashion"})}}};
}

std::unique_ptr<DataSource> create(const Options& o) { return std::make_unique<IdxData>(o); }

}  // namespace

TESSERA_PLUGIN(DataSource, info, create)
