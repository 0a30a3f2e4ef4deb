// imagefolder: folders of class folders of images (ImageNet's train/ and val/), decoded and
// augmented by worker threads as torchvision's ImageNet recipe does; see tessera/data/transform.hpp.
#include <thread>

#include "tessera/data/image_folder.hpp"
#include "tessera/data/loader.hpp"
#include "tessera/data/transform.hpp"
#include "tessera/plugin/api.hpp"

namespace {

using namespace tessera::plugin;
namespace data = tessera::data;

/// Samples spread evenly over the sorted list, so a limited run still sees every class.
void keep_evenly(std::vector<data::ImageFolder::Sample>& samples, std::int64_t limit) {
    if (limit <= 0 || limit >= std::int64_t(samples.size())) return;
    std::vector<data::ImageFolder::Sample> kept;
    for (std::int64_t i = 0; i < limit; ++i) kept.push_back(samples[std::size_t(i * std::int64_t(samples.size()) / limit)]);
    samples = std::move(kept);
}

data::TransformConfig transform_config(const Options& o) {
    data::TransformConfig c;
    c.image_size = int(o.integer("image_size"));
    c.val_resize = int(o.integer("val_resize"));
    c.val_crop = int(o.integer("val_crop"));
    const auto& scale = o.list("scale");
    const auto& ratio = o.list("ratio");
    if (scale.size() != 2 || !(scale[0] > 0 && scale[0] <= scale[1] && scale[1] <= 1))
        throw tessera::user_error("[data] scale", "must be [min, max] with 0 < min <= max <= 1", "torchvision's default: [0.08, 1.0]");
    if (ratio.size() != 2 || !(ratio[0] > 0 && ratio[0] <= ratio[1]))
        throw tessera::user_error("[data] ratio", "must be [min, max] with 0 < min <= max", "torchvision's default: [0.75, 1.3333]");
    c.scale_min = scale[0];
    c.scale_max = scale[1];
    c.ratio_min = ratio[0];
    c.ratio_max = ratio[1];
    c.hflip = o.flag("hflip");
    c.fast_decode = o.flag("fast_decode");
    if (c.image_size < 1 || c.val_crop < 1 || c.val_resize < c.val_crop)
        throw tessera::user_error("[data] image_size, val_resize, val_crop",
                                  "must be positive, with val_resize >= val_crop",
                                  "ImageNet's usual sizes: image_size = 224, val_resize = 256, val_crop = 224");
    return c;
}

/// What the loader's workers read: files of an ImageFolder.
class FolderSource {
public:
    struct Worker {
        data::ImageTransform transform;
        std::vector<std::uint8_t> bytes;
    };

    FolderSource(data::ImageFolder train, data::ImageFolder val, data::TransformConfig config)
        : train_(std::move(train)), val_(std::move(val)), config_(config) {}

    data::Size2 output(Split s) const { return config_.output(s == Split::train); }
    std::int32_t label(Split s, std::int64_t i) const { return folder(s).samples[std::size_t(i)].label; }
    std::string name(Split s, std::int64_t i) const { return folder(s).samples[std::size_t(i)].path; }

    void load(Worker& w, Split s, std::int64_t i, tessera::Rng& rng, std::uint8_t* out) const {
        if (!data::read_bytes(name(s, i), w.bytes)) throw data::DecodeError("cannot read the file");
        if (s == Split::train) w.transform.train(w.bytes, config_, rng, out);
        else w.transform.val(w.bytes, config_, out);
    }

    const data::ImageFolder& folder(Split s) const { return s == Split::train ? train_ : val_; }

private:
    data::ImageFolder train_, val_;
    data::TransformConfig config_;
};

int worker_count(std::int64_t requested) {
    if (requested > 0) return int(requested);
    return std::max(1, int(std::thread::hardware_concurrency()));
}

class ImageFolderData final : public DataSource {
public:
    explicit ImageFolderData(const Options& o)
        : source_(make_source(o)),
          loader_(source_, worker_count(o.integer("workers")), int(std::max<std::int64_t>(1, o.integer("prefetch")))) {
        const auto& train = source_.folder(Split::train);
        const data::Size2 size = source_.output(Split::train);
        info_.height = size.height;
        info_.width = size.width;
        info_.channels = 3;
        info_.num_classes = int(train.classes.size());
        info_.train_size = std::int64_t(train.samples.size());
        info_.val_size = std::int64_t(source_.folder(Split::val).samples.size());
        info_.mean = o.list("mean");
        info_.std = o.list("std");
        if (info_.mean.size() != 3 || info_.std.size() != 3)
            throw tessera::user_error("[data] mean, std", "need three values each (R, G, B)", "ImageNet's: [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]");
        if (source_.output(Split::val).width != size.width)
            throw tessera::user_error("[data] val_crop", "differs from image_size: the model is built for one input size",
                                      "set val_crop = image_size");
        info_.class_names = o.text("class_names").empty() ? train.classes : data::read_class_names(o.text("class_names"), train.classes);
    }

    DatasetInfo info() const override { return info_; }

    std::int64_t num_batches(Split split, const EpochPlan& plan) const override {
        return data::EpochCursor::num_batches(split, plan, size(split));
    }
    void start_epoch(Split split, const EpochPlan& plan) override { loader_.start(split, plan, size(split)); }
    bool next(Batch& batch) override { return loader_.next(batch); }
    std::int64_t bad_samples() const override { return loader_.bad_samples(); }

private:
    std::int64_t size(Split s) const { return s == Split::train ? info_.train_size : info_.val_size; }

    static data::ImageFolder scan(const Options& o, const std::string& key, std::int64_t limit,
                                  const std::vector<std::string>* classes = nullptr) {
        if (o.text(key).empty())
            throw tessera::user_error("[data] " + key, "the imagefolder plugin needs " + key + " = \"folder\"",
                                      "e.g. train = \"/data/imagenet/train\", val = \"/data/imagenet/val\"");
        data::ImageFolder f = data::ImageFolder::scan(o.text(key), key, classes);
        keep_evenly(f.samples, limit);
        return f;
    }

    // Validation folders take the training folder's class numbers.
    static FolderSource make_source(const Options& o) {
        data::ImageFolder train = scan(o, "train", o.integer("limit_train"));
        data::ImageFolder val = scan(o, "val", o.integer("limit_val"), &train.classes);
        return FolderSource(std::move(train), std::move(val), transform_config(o));
    }

    FolderSource source_;
    data::Loader<FolderSource> loader_;
    DatasetInfo info_;
};

Info info() {
    return {"", "imagefolder", "class folders of JPEG/PNG images (ImageNet), torchvision's augmentations, worker threads",
            {{"train", std::string(""), "training folder: one folder of images per class"},
             {"val", std::string(""), "validation folder, with the same class folders"},
             {"class_names", std::string(""), "file of \"<folder> <name>\" lines (LOC_synset_mapping.txt) or one name per class"},
             {"image_size", std::int64_t(224), "training crops are resized to image_size x image_size"},
             {"val_resize", std::int64_t(256), "validation: the shorter side is resized to this"},
             {"val_crop", std::int64_t(224), "validation: then the central val_crop x val_crop square is taken"},
             {"scale", std::vector<double>{0.08, 1.0}, "RandomResizedCrop's range of area fractions"},
             {"ratio", std::vector<double>{3.0 / 4.0, 4.0 / 3.0}, "RandomResizedCrop's range of aspect ratios"},
             {"hflip", true, "random horizontal flips"},
             {"fast_decode", true, "JPEG: decode at a reduced DCT scale and only the region a crop needs (false: torchvision's pixels exactly)"},
             {"mean", std::vector<double>{0.485, 0.456, 0.406}, "per-channel mean for normalisation"},
             {"std", std::vector<double>{0.229, 0.224, 0.225}, "per-channel standard deviation"},
             {"workers", std::int64_t(0), "decoding threads (0: one per core)"},
             {"prefetch", std::int64_t(3), "batches prepared ahead"},
             {"limit_train", std::int64_t(0), "use only N training images, spread over the classes (0: all)"},
             {"limit_val", std::int64_t(0), "use only N validation images, spread over the classes (0: all)"}}};
}

std::unique_ptr<DataSource> create(const Options& o) { return std::make_unique<ImageFolderData>(o); }

}  // namespace

TESSERA_PLUGIN(DataSource, info, create)
