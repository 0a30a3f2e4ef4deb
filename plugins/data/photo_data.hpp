#pragma once
// What the imagefolder and shards plugins share: torchvision's ImageNet augmentations (see
// tessera/data/transform.hpp), their options, and a DataSource over a store of encoded images
// whose batches worker threads prepare (tessera/data/loader.hpp).
//
// A Store provides:
//   const std::vector<std::string>& classes() const;
//   std::size_t size() const;
//   std::int32_t label(std::size_t) const;
//   std::string name(std::size_t) const;                                   for messages
//   std::span<const std::uint8_t> bytes(std::size_t, std::vector<std::uint8_t>& scratch) const;   throws DecodeError
#include <thread>

#include "tessera/data/image_folder.hpp"
#include "tessera/data/loader.hpp"
#include "tessera/data/transform.hpp"
#include "tessera/plugin/api.hpp"

namespace tessera::plugins::data_sources {

using namespace tessera::plugin;

/// The options of the augmentations and the loader, after the plugin's own (train, val, …).
inline std::vector<Option> photo_options() {
    return {
        {"class_names", std::string(""),
         "file of \"<folder> <name>\" lines (LOC_synset_mapping.txt) or one name per class"},
        {"image_size", std::int64_t(224), "training crops are resized to image_size x image_size", between(1, 8192)},
        {"val_resize", std::int64_t(256), "validation: the shorter side is resized to this", between(1, 8192)},
        {"val_crop", std::int64_t(224), "validation: then the central val_crop x val_crop square is taken",
         between(1, 8192)},
        {"scale", std::vector<double>{0.08, 1.0}, "RandomResizedCrop's range of area fractions", above_to(0, 1)},
        {"ratio", std::vector<double>{3.0 / 4.0, 4.0 / 3.0}, "RandomResizedCrop's range of aspect ratios", above(0)},
        {"hflip", true, "random horizontal flips"},
        {"fast_decode", true,
         "JPEG: decode at a reduced DCT scale and only the region a crop needs (false: torchvision's pixels exactly)"},
        {"mean", std::vector<double>{0.485, 0.456, 0.406}, "per-channel mean for normalisation", between(-1e6, 1e6)},
        {"std", std::vector<double>{0.229, 0.224, 0.225}, "per-channel standard deviation", above(0)},
        {"workers", std::int64_t(0), "decoding threads (0: one per core)", between(0, 4096)},
        {"inline", false,
         "decode in the training thread, with no worker threads (as PyTorch's num_workers = 0): for debugging"},
        {"prefetch", std::int64_t(3), "batches prepared ahead", between(1, 1024)},
        {"limit_train", std::int64_t(0), "use only N training images, spread over the classes (0: all)", at_least(0)},
        {"limit_val", std::int64_t(0), "use only N validation images, spread over the classes (0: all)", at_least(0)}};
}

inline data::TransformConfig transform_config(const Options& o) {
    data::TransformConfig c;
    c.image_size = int(o.integer("image_size"));
    c.val_resize = int(o.integer("val_resize"));
    c.val_crop = int(o.integer("val_crop"));
    const auto& scale = o.list("scale");
    const auto& ratio = o.list("ratio");
    if (scale.size() != 2 || !(scale[0] > 0 && scale[0] <= scale[1] && scale[1] <= 1))
        throw user_error("[data] scale", "must be [min, max] with 0 < min <= max <= 1",
                         "torchvision's default: [0.08, 1.0]");
    if (ratio.size() != 2 || !(ratio[0] > 0 && ratio[0] <= ratio[1]))
        throw user_error("[data] ratio", "must be [min, max] with 0 < min <= max",
                         "torchvision's default: [0.75, 1.3333]");
    c.scale_min = scale[0];
    c.scale_max = scale[1];
    c.ratio_min = ratio[0];
    c.ratio_max = ratio[1];
    c.hflip = o.flag("hflip");
    c.fast_decode = o.flag("fast_decode");
    if (c.image_size < 1 || c.val_crop < 1 || c.val_resize < c.val_crop)
        throw user_error("[data] image_size, val_resize, val_crop", "must be positive, with val_resize >= val_crop",
                         "ImageNet's usual sizes: image_size = 224, val_resize = 256, val_crop = 224");
    if (c.val_crop != c.image_size)
        throw user_error("[data] val_crop", "differs from image_size: the model is built for one input size",
                         "set val_crop = image_size");
    return c;
}

/// Indices spread evenly over [0, size), so a limited run still sees every class.
inline std::vector<std::size_t> keep_evenly(std::size_t size, std::int64_t limit) {
    const std::size_t n = limit > 0 ? std::min(size, std::size_t(limit)) : size;
    std::vector<std::size_t> kept(n);
    for (std::size_t i = 0; i < n; ++i) kept[i] = i * size / n;
    return kept;
}

/// The loader's source: the two stores, the chosen samples of each, the augmentations.
template <class Store>
class PhotoSource {
public:
    struct Worker {
        data::ImageTransform transform;
        std::vector<std::uint8_t> scratch;
    };

    PhotoSource(Store train, Store val, const Options& o)
        : train_(std::move(train)), val_(std::move(val)),
          config_(transform_config(o)), kept_{keep_evenly(train_.size(), o.integer("limit_train")),
                                              keep_evenly(val_.size(), o.integer("limit_val"))} {}

    data::Size2 output(Split s) const { return config_.output(s == Split::train); }
    std::int32_t label(Split s, std::int64_t i) const { return store(s).label(kept(s, i)); }
    std::string name(Split s, std::int64_t i) const { return store(s).name(kept(s, i)); }
    std::int64_t size(Split s) const { return std::int64_t(kept_[s == Split::val].size()); }

    void load(Worker& w, Split s, std::int64_t i, Rng& rng, std::uint8_t* out) const {
        const std::span<const std::uint8_t> bytes = store(s).bytes(kept(s, i), w.scratch);
        if (s == Split::train)
            w.transform.train(bytes, config_, rng, out);
        else
            w.transform.val(bytes, config_, out);
    }

    const Store& store(Split s) const { return s == Split::train ? train_ : val_; }

private:
    std::size_t kept(Split s, std::int64_t i) const { return kept_[s == Split::val][std::size_t(i)]; }

    Store train_, val_;
    data::TransformConfig config_;
    std::vector<std::size_t> kept_[2];
};

inline int worker_count(std::int64_t requested) {
    return requested > 0 ? int(requested) : std::max(1, int(std::thread::hardware_concurrency()));
}

template <class Store>
class PhotoData final : public DataSource {
public:
    PhotoData(Store train, Store val, const Options& o)
        : source_(std::move(train), std::move(val), o),
          loader_(source_, o.flag("inline") ? 0 : worker_count(o.integer("workers")),
                  int(std::max<std::int64_t>(1, o.integer("prefetch")))) {
        const data::Size2 size = source_.output(Split::train);
        const auto& classes = source_.store(Split::train).classes();
        info_.height = size.height;
        info_.width = size.width;
        info_.channels = 3;
        info_.num_classes = int(classes.size());
        info_.train_size = source_.size(Split::train);
        info_.val_size = source_.size(Split::val);
        info_.val_resize = int(o.integer("val_resize"));
        info_.mean = o.list("mean");
        info_.std = o.list("std");
        if (info_.mean.size() != 3 || info_.std.size() != 3)
            throw user_error("[data] mean, std", "need three values each (R, G, B)",
                             "ImageNet's: [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]");
        info_.class_names =
            o.text("class_names").empty() ? classes : data::read_class_names(o.text("class_names"), classes);
    }

    DatasetInfo info() const override { return info_; }
    std::int64_t num_batches(Split split, const EpochPlan& plan) const override {
        return data::EpochCursor::num_batches(split, plan, source_.size(split));
    }
    void start_epoch(Split split, const EpochPlan& plan) override { loader_.start(split, plan, source_.size(split)); }
    bool next(Batch& batch) override { return loader_.next(batch); }
    std::int64_t bad_samples() const override { return loader_.bad_samples(); }

private:
    PhotoSource<Store> source_;
    data::Loader<PhotoSource<Store>> loader_;
    DatasetInfo info_;
};

/// The recipe's path for `key` ("train" or "val"), which the plugin cannot do without.
inline std::string required_folder(const Options& o, const std::string& key, const std::string& example) {
    if (o.text(key).empty())
        throw user_error("[data] " + key, "this data plugin needs " + key + " = \"folder\"", "e.g. " + example);
    return o.text(key);
}

}  // namespace tessera::plugins::data_sources
