// synthetic: random images for benchmarks and tests. Each class has its own mean brightness, so a
// network can learn the task, and every image is a pure function of (seed, split, index).
#include <algorithm>

#include "tessera/core/rng.hpp"
#include "tessera/data/sampler.hpp"
#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;

class Synthetic final : public DataSource {
public:
    explicit Synthetic(const Options& o) {
        info_.height = info_.width = int(o.integer("image_size"));
        info_.channels = int(o.integer("channels"));
        info_.num_classes = int(o.integer("num_classes"));
        info_.train_size = o.integer("train_size");
        info_.val_size = o.integer("val_size");
        info_.mean.assign(info_.channels, 0.5);
        info_.std.assign(info_.channels, 0.25);
    }

    DatasetInfo info() const override { return info_; }

    std::int64_t num_batches(Split split, const EpochPlan& plan) const override {
        return tessera::data::EpochCursor::num_batches(split, plan,
                                                       split == Split::train ? info_.train_size : info_.val_size);
    }

    void start_epoch(Split split, const EpochPlan& plan) override {
        cursor_.start(split, plan, split == Split::train ? info_.train_size : info_.val_size);
    }

    bool next(Batch& batch) override {
        const auto indices = cursor_.next_batch();
        if (indices.empty()) return false;
        const std::size_t image = std::size_t(info_.height) * info_.width * info_.channels;
        batch.count = int(indices.size());
        batch.height = info_.height;
        batch.width = info_.width;
        batch.channels = info_.channels;
        batch.pixels.resize(indices.size() * image);
        batch.labels.resize(indices.size());
        const std::uint64_t stream = cursor_.split() == Split::train ? 1 : 2;
        for (std::size_t i = 0; i < indices.size(); ++i) {
            tessera::Rng rng = tessera::Rng::derive(cursor_.plan().seed, std::uint64_t(indices[i]), stream);
            const int label = int(rng.below(info_.num_classes));
            const int base = 32 + 192 * label / std::max(1, info_.num_classes - 1);
            std::uint8_t* out = batch.pixels.data() + i * image;
            for (std::size_t p = 0; p < image; ++p)
                out[p] = std::uint8_t(std::clamp(base + int(rng.below(64)) - 32, 0, 255));
            batch.labels[i] = label;
        }
        return true;
    }

private:
    DatasetInfo info_;
    tessera::data::EpochCursor cursor_;
};

Info info() {
    return {"",
            "synthetic",
            "random images whose brightness depends on the class (benchmarks, tests)",
            {{"image_size", std::int64_t(32), "height and width", between(1, 4096)},
             {"channels", std::int64_t(3), "1 or 3", between(1, 4)},
             {"num_classes", std::int64_t(10), "classes", between(1, 1 << 20)},
             {"train_size", std::int64_t(1024), "training images per epoch", between(1, 1e9)},
             {"val_size", std::int64_t(256), "validation images", between(0, 1e9)}}};
}

std::unique_ptr<DataSource> create(const Options& o) { return std::make_unique<Synthetic>(o); }

}  // namespace

TESSERA_PLUGIN(DataSource, info, create)
