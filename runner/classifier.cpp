// A checkpoint as a classifier of images: its card, its preprocessing, its network on a device.
// A checkpoint that tessera trained says its input size, validation resize, mean, std and class
// names; one without them (weights exported from torchvision) gets ImageNet's. Grey models get
// PIL's conversion to grey.
#include "classifier.hpp"

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <regex>
#include <sstream>

#include "runner.hpp"
#include "tessera/config.hpp"
#include "tessera/core/json.hpp"
#include "tessera/export/cpu_inference.hpp"
#include "tessera/train/checkpoint.hpp"

namespace tessera::runner {

namespace fs = std::filesystem;

namespace {

/// Class names, in class order: one per line, or ImageNet's "n01440764 tench, Tinca tinca" lines
/// (LOC_synset_mapping.txt, sorted by WordNet id as the classes are), shown as "tench".
std::vector<std::string> read_labels(const std::string& file) {
    std::ifstream in(file);
    if (!in) throw user_error(file, "cannot read the labels file (--labels)");
    std::vector<std::string> names;
    const std::regex synset("^n[0-9]{8}\\s+([^,]*).*$");
    for (std::string line; std::getline(in, line);) {
        while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
        if (line.empty()) continue;
        std::smatch m;
        names.push_back(std::regex_match(line, m, synset) ? m[1].str() : line);
    }
    return names;
}

/// `--labels imagenet`: the class names installed with tessera (torchvision's, in class order).
std::string bundled_imagenet_labels() {
    std::vector<fs::path> places;
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) places.push_back(exe.parent_path() / ".." / TESSERA_DATA_RELATIVE_DIR);
    places.emplace_back(TESSERA_DATA_INSTALL_DIR);
#ifdef TESSERA_SOURCE_DATA_DIR
    places.emplace_back(TESSERA_SOURCE_DATA_DIR);
#endif
    for (auto& dir : places)
        if (fs::exists(dir / "imagenet_classes.txt")) return (dir / "imagenet_classes.txt").string();
    throw user_error("--labels imagenet", "imagenet_classes.txt is not installed next to this runner",
                     "reinstall tessera, or give --labels FILE");
}

/// Numbers of a metadata entry ("0.485,0.456,0.406"); `fallback` when absent.
std::vector<float> metadata_numbers(const std::map<std::string, std::string>& meta, const std::string& key,
                                    std::vector<float> fallback) {
    auto it = meta.find(key);
    if (it == meta.end() || it->second.empty()) return fallback;
    std::vector<float> v;
    std::stringstream in(it->second);
    for (std::string x; std::getline(in, x, ',');) v.push_back(std::stof(x));
    return v;
}

/// PIL's conversion to "L": L = (19595 R + 38470 G + 7471 B + 2^15) >> 16, over `count` pixels.
void to_grayscale(const std::uint8_t* rgb, std::size_t count, std::uint8_t* gray) {
    for (std::size_t i = 0; i < count; ++i)
        gray[i] = std::uint8_t((rgb[3 * i] * 19595 + rgb[3 * i + 1] * 38470 + rgb[3 * i + 2] * 7471 + 0x8000) >> 16);
}

std::string json_numbers(const std::vector<float>& v) {
    std::string out = "[";
    for (std::size_t i = 0; i < v.size(); ++i) {
        char number[32];
        std::snprintf(number, sizeof number, "%s%.6g", i ? ", " : "", double(v[i]));
        out += number;
    }
    return out + "]";
}

/// The network of B in evaluation mode, with its context.
template <class B>
class DeviceClassifier final : public Classifier {
public:
    DeviceClassifier(const ModelCard& card, int threads, const std::string& precision)
        : card_(card), ctx_(make_context<B>(threads, precision, "--precision")),
          net_(make_network<B>(card.arch, card.classes, card.channels)) {
        checkpoint::load(net_->params(), card.checkpoint);
        net_->upload();
        forward_.emplace(*net_, ctx_->activations);
        ctx_->training = false;
        for (float s : card.std) inv_std_.push_back(1 / s);
    }

    std::vector<double> probabilities(const std::uint8_t* pixels, int count) override {
        ctx_->arena.reset();
        const Tensor x = ctx_->arena.tensor({count, card_.crop, card_.crop, card_.channels}, ctx_->activations);
        B::normalize_images(*ctx_, pixels, card_.mean.data(), inv_std_.data(), x);
        const Tensor logits = (*forward_)(*ctx_, x);
        std::vector<float> host(logits.size());
        B::copy_to_host(*ctx_, logits, host.data());
        std::vector<double> p(host.begin(), host.end());
        for (int i = 0; i < count; ++i) {  // softmax of each row, in double
            double* row = p.data() + std::size_t(i) * card_.classes;
            const double top = *std::max_element(row, row + card_.classes);
            double sum = 0;
            for (int c = 0; c < card_.classes; ++c) sum += row[c] = std::exp(row[c] - top);
            for (int c = 0; c < card_.classes; ++c) row[c] /= sum;
        }
        return p;
    }

    std::string device() override { return forward_->kernels(*ctx_); }

private:
    const ModelCard& card_;
    std::unique_ptr<typename B::Context> ctx_;
    std::unique_ptr<models::Network<B>> net_;
    std::optional<deploy::InferenceForward<B>> forward_;  // made once the weights are loaded
    std::vector<float> inv_std_;
};

}  // namespace

std::string ModelCard::json() const {
    std::string names = "[";
    for (int c = 0; c < classes; ++c) names += (c ? ", " : "") + json::quote(label(c));
    return "{\"arch\": " + json::quote(arch) +
           ", \"checkpoint\": " + json::quote(fs::path(checkpoint).filename().string()) +
           ", \"classes\": " + std::to_string(classes) + ", \"input\": {\"height\": " + std::to_string(crop) +
           ", \"width\": " + std::to_string(crop) + ", \"channels\": " + std::to_string(channels) +
           ", \"resize\": " + std::to_string(resize) + "}, \"mean\": " + json_numbers(mean) +
           ", \"std\": " + json_numbers(std) + ", \"labels\": " + names + "]}";
}

ModelCard read_model_card(const Args& args) {
    ModelCard card;
    card.checkpoint = *args.value("checkpoint");
    const std::string& path = card.checkpoint;
    // The architecture from the checkpoint's metadata, the class count and input channels from its shapes.
    const auto shapes = checkpoint::read_shapes(path);
    const auto meta = checkpoint::read_metadata(path);
    card.arch = args.value("arch").value_or(meta.count("arch") ? meta.at("arch") : "");
    if (card.arch.empty())
        throw user_error(path, "does not say which architecture it holds", "add --arch, e.g. --arch resnet50");
    if (!shapes.count("fc.weight") || !shapes.count("conv1.weight") || shapes.at("fc.weight").size() != 2 ||
        shapes.at("conv1.weight").size() != 4)
        throw user_error(path, "is not a ResNet checkpoint (it has no fc.weight or conv1.weight)");
    card.classes = int(shapes.at("fc.weight")[0]);
    card.channels = int(shapes.at("conv1.weight")[1]);
    if (card.channels != 1 && card.channels != 3)
        throw user_error(path, "takes " + std::to_string(card.channels) +
                                   "-channel images; predict reads photographs as RGB (3) or grey (1)");
    // What training recorded in the checkpoint, else ImageNet's preprocessing (torchvision's weights).
    auto recorded = [&](const char* key, int fallback, int least = 1) {
        if (!meta.count(key)) return fallback;
        const std::string& text = meta.at(key);
        int value = 0;
        const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), value);
        if (error != std::errc() || end != text.data() + text.size() || value < least || value > 8192)
            throw user_error(path,
                             std::string("its metadata's ") + key + " is \"" + text + "\", not an image size in [" +
                                 std::to_string(least) + ", 8192]",
                             "give the size with --image-size (and --resize), or use a checkpoint tessera wrote");
        return value;
    };
    card.crop = args.integer("image-size", recorded("input_height", 224));
    card.resize = args.integer("resize", recorded("val_resize", 0, 0) > 0 ? recorded("val_resize", 0, 0)
                                         : meta.count("input_height")     ? card.crop
                                                                          : card.crop * 8 / 7);
    if (card.resize < card.crop) throw user_error("--resize", "must be at least the crop (--image-size)");
    card.mean = metadata_numbers(meta, "mean", {0.485f, 0.456f, 0.406f});
    card.std = metadata_numbers(meta, "std", {0.229f, 0.224f, 0.225f});
    if (int(card.mean.size()) != card.channels || int(card.std.size()) != card.channels)
        throw user_error(path, "its metadata's mean and std do not have one value per input channel");
    if (auto file = args.value("labels")) {
        card.labels = read_labels(*file == "imagenet" ? bundled_imagenet_labels() : *file);
        if (int(card.labels.size()) != card.classes)
            throw user_error(*file,
                             "has " + std::to_string(card.labels.size()) + " names for a model of " +
                                 std::to_string(card.classes) + " classes",
                             "give one name per class, in class order");
    } else if (meta.count("class_names")) {
        const json::Value names = json::parse(meta.at("class_names"), path + " (class_names)");
        for (auto& name : names.array()) card.labels.push_back(name.is_string() ? name.string() : "?");
        if (int(card.labels.size()) != card.classes) card.labels.clear();
    }
    return card;
}

Preprocessor::Preprocessor(const ModelCard& card)
    : card_(card), config_{.image_size = card.crop,
                           .val_resize = card.resize,
                           .val_crop = card.crop,
                           .fast_decode = false},
      rgb_(std::size_t(card.crop) * card.crop * 3) {}

void Preprocessor::operator()(std::span<const std::uint8_t> bytes, std::uint8_t* out) {
    if (card_.channels == 3) return transform_.val(bytes, config_, out);
    transform_.val(bytes, config_, rgb_.data());
    to_grayscale(rgb_.data(), rgb_.size() / 3, out);
}

std::unique_ptr<Classifier> Classifier::open(const ModelCard& card, const std::string& device, int threads,
                                             const std::string& precision) {
    std::unique_ptr<Classifier> classifier;
    on_device(device, "--device", [&]<class B>() {
        classifier = std::make_unique<DeviceClassifier<B>>(card, threads, precision);
        return 0;
    });
    return classifier;
}

std::vector<int> top_classes(std::span<const double> probs, int k) {
    std::vector<int> order(probs.size());
    std::iota(order.begin(), order.end(), 0);
    k = std::min(k, int(probs.size()));
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) {
        return probs[std::size_t(a)] > probs[std::size_t(b)] ||
               (probs[std::size_t(a)] == probs[std::size_t(b)] && a < b);
    });
    order.resize(std::size_t(k));
    return order;
}

std::string prediction_json(const ModelCard& card, const std::string& name, std::span<const double> probs, int topk) {
    const std::vector<int> order = top_classes(probs, topk);
    std::string out = "{\"image\": " + json::quote(name) + ", \"top\": [";
    for (std::size_t j = 0; j < order.size(); ++j) {
        char prob[32];
        std::snprintf(prob, sizeof prob, "%.8f", probs[std::size_t(order[j])]);
        out += std::string(j ? ", " : "") + "{\"class\": " + std::to_string(order[j]) +
               ", \"label\": " + json::quote(card.label(order[j])) + ", \"prob\": " + prob + "}";
    }
    return out + "]}";
}

}  // namespace tessera::runner
