// imagefolder: folders of class folders of images (ImageNet's train/ and val/), decoded and
// augmented by worker threads as torchvision's ImageNet recipe does.
#include "photo_data.hpp"

namespace {

using namespace tessera::plugin;
using tessera::data::ImageFolder;

/// Files of an ImageFolder, read whole for each sample.
class FolderStore {
public:
    explicit FolderStore(ImageFolder folder) : folder_(std::move(folder)) {}
    const std::vector<std::string>& classes() const { return folder_.classes; }
    std::size_t size() const { return folder_.samples.size(); }
    std::int32_t label(std::size_t i) const { return folder_.samples[i].label; }
    std::string name(std::size_t i) const { return folder_.samples[i].path; }
    std::span<const std::uint8_t> bytes(std::size_t i, std::vector<std::uint8_t>& scratch) const {
        if (!tessera::data::read_bytes(name(i), scratch)) throw tessera::data::DecodeError("cannot read the file");
        return scratch;
    }

private:
    ImageFolder folder_;
};

std::unique_ptr<DataSource> create(const Options& o) {
    const char* example = "train = \"/data/imagenet/train\", val = \"/data/imagenet/val\"";
    ImageFolder train =
        ImageFolder::scan(tessera::plugins::data_sources::required_folder(o, "train", example), "data.train");
    // Validation folders take the training folder's class numbers.
    ImageFolder val = ImageFolder::scan(tessera::plugins::data_sources::required_folder(o, "val", example), "data.val",
                                        &train.classes);
    return std::make_unique<tessera::plugins::data_sources::PhotoData<FolderStore>>(FolderStore(std::move(train)),
                                                                                    FolderStore(std::move(val)), o);
}

Info info() {
    Info i{"",
           "imagefolder",
           "class folders of JPEG/PNG images (ImageNet), torchvision's augmentations, worker threads",
           {{"train", std::string(""), "training folder: one folder of images per class"},
            {"val", std::string(""), "validation folder, with the same class folders"}}};
    for (auto& option : tessera::plugins::data_sources::photo_options()) i.options.push_back(option);
    return i;
}

}  // namespace

TESSERA_PLUGIN(DataSource, info, create)
