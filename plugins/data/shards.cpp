// shards: the folders runner prepare packs from an ImageFolder (tessera/data/shards.hpp), read
// through memory maps, with imagefolder's augmentations and worker threads.
#include "photo_data.hpp"
#include "tessera/data/shards.hpp"

namespace {

using namespace tessera::plugin;
using tessera::data::ShardReader;

class ShardStore {
public:
    explicit ShardStore(std::unique_ptr<ShardReader> reader) : reader_(std::move(reader)) {}
    const std::vector<std::string>& classes() const { return reader_->classes(); }
    std::size_t size() const { return reader_->size(); }
    std::int32_t label(std::size_t i) const { return reader_->entry(i).label; }
    std::string name(std::size_t i) const {
        const auto& e = reader_->entry(i);
        return (reader_->dir() / tessera::data::shard_file_name(e.shard)).string() + "@" + std::to_string(e.offset) +
               " (" + e.path + ")";
    }
    std::span<const std::uint8_t> bytes(std::size_t i, std::vector<std::uint8_t>&) const { return reader_->bytes(i); }

private:
    std::unique_ptr<ShardReader> reader_;
};

std::unique_ptr<DataSource> create(const Options& o) {
    const char* example = "train = \"/data/imagenet-shards/train\", val = \"/data/imagenet-shards/val\"";
    auto train = std::make_unique<ShardReader>(tessera::plugins::data_sources::required_folder(o, "train", example),
                                               "data.train");
    auto val =
        std::make_unique<ShardReader>(tessera::plugins::data_sources::required_folder(o, "val", example), "data.val");
    if (val->classes() != train->classes())
        throw tessera::user_error(val->dir().string(), "has other classes than " + train->dir().string(),
                                  "pack both from folders with the same class folders");
    return std::make_unique<tessera::plugins::data_sources::PhotoData<ShardStore>>(ShardStore(std::move(train)),
                                                                                   ShardStore(std::move(val)), o);
}

Info info() {
    Info i{"",
           "shards",
           "shard files packed by runner prepare, memory-mapped; imagefolder's augmentations",
           {{"train", std::string(""), "training shards folder (runner prepare TRAIN_FOLDER DEST)"},
            {"val", std::string(""), "validation shards folder"}}};
    for (auto& option : tessera::plugins::data_sources::photo_options()) i.options.push_back(option);
    return i;
}

}  // namespace

TESSERA_PLUGIN(DataSource, info, create)
