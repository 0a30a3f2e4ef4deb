// runner predict --checkpoint PATH IMAGE...: the most probable classes of each image, preprocessed
// as validation is (torchvision's Resize + CenterCrop, then normalisation). A checkpoint that tessera
// trained says its input size, validation resize, mean, std and class names; one without them
// (weights exported from torchvision) gets ImageNet's. Grey models get PIL's conversion to grey.
#include <algorithm>
#include <cmath>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <numeric>
#include <regex>
#include <sstream>

#include "runner.hpp"
#include "tessera/config.hpp"
#include "tessera/core/json.hpp"
#include "tessera/data/image_folder.hpp"
#include "tessera/data/transform.hpp"
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

}  // namespace

int predict(const std::vector<std::string>& raw) {
    Args args(raw, {"json"}, {"checkpoint", "arch", "labels", "topk", "image-size", "resize", "threads"});
    if (!args.value("checkpoint") || args.positional().empty())
        throw user_error(
            "runner predict", "expected --checkpoint PATH and one or more images",
            "e.g. runner predict --checkpoint runs/r/best.safetensors --labels LOC_synset_mapping.txt photo.jpg");
    const std::string path = *args.value("checkpoint");
    // The architecture from the checkpoint's metadata, the class count and input channels from its shapes.
    const auto shapes = checkpoint::read_shapes(path);
    const auto meta = checkpoint::read_metadata(path);
    const std::string arch = args.value("arch").value_or(meta.count("arch") ? meta.at("arch") : "");
    if (arch.empty())
        throw user_error(path, "does not say which architecture it holds", "add --arch, e.g. --arch resnet50");
    if (!shapes.count("fc.weight") || !shapes.count("conv1.weight") || shapes.at("fc.weight").size() != 2 ||
        shapes.at("conv1.weight").size() != 4)
        throw user_error(path, "is not a ResNet checkpoint (it has no fc.weight or conv1.weight)");
    const int classes = int(shapes.at("fc.weight")[0]), channels = int(shapes.at("conv1.weight")[1]);
    if (channels != 1 && channels != 3)
        throw user_error(path, "takes " + std::to_string(channels) +
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
    const int crop = args.integer("image-size", recorded("input_height", 224));
    const int resize = args.integer("resize", recorded("val_resize", 0, 0) > 0 ? recorded("val_resize", 0, 0)
                                              : meta.count("input_height")     ? crop
                                                                               : crop * 8 / 7);
    const int topk = args.integer("topk", 5);
    const std::vector<float> mean = metadata_numbers(meta, "mean", {0.485f, 0.456f, 0.406f}),
                             std = metadata_numbers(meta, "std", {0.229f, 0.224f, 0.225f});
    if (int(mean.size()) != channels || int(std.size()) != channels)
        throw user_error(path, "its metadata's mean and std do not have one value per input channel");
    std::vector<float> inv_std;
    for (float s : std) inv_std.push_back(1 / s);
    std::vector<std::string> labels;
    if (auto file = args.value("labels")) {
        labels = read_labels(*file == "imagenet" ? bundled_imagenet_labels() : *file);
        if (int(labels.size()) != classes)
            throw user_error(*file,
                             "has " + std::to_string(labels.size()) + " names for a model of " +
                                 std::to_string(classes) + " classes",
                             "give one name per class, in class order");
    } else if (meta.count("class_names")) {
        const json::Value names = json::parse(meta.at("class_names"), path + " (class_names)");
        for (auto& name : names.array()) labels.push_back(name.is_string() ? name.string() : "?");
        if (int(labels.size()) != classes) labels.clear();
    }

    auto net = make_cpu_network(arch, classes, channels);
    checkpoint::load(net->params(), path);
    cpu::Context ctx(args.value("threads") ? thread_count(args) : ThreadPool::default_threads());
    ctx.training = false;
    if (resize < crop) throw user_error("runner predict --resize", "must be at least the crop (--image-size)");
    const data::TransformConfig preprocess{
        .image_size = crop, .val_resize = resize, .val_crop = crop, .fast_decode = false};
    data::ImageTransform transform;
    std::vector<std::uint8_t> bytes, pixels(std::size_t(crop) * crop * 3), gray(std::size_t(crop) * crop);
    std::string out = "[";
    for (std::size_t i = 0; i < args.positional().size(); ++i) {
        const std::string& image = args.positional()[i];
        if (!data::read_bytes(image, bytes)) throw user_error(image, "cannot read the file");
        try {
            transform.val(bytes, preprocess, pixels.data());
        } catch (const data::DecodeError& e) {
            throw user_error(image, std::string("not an image tessera can read: ") + e.what(),
                             "give JPEG, PNG, GIF, BMP or PNM files");
        }
        ctx.arena.reset();
        const Tensor x = ctx.arena.tensor({1, crop, crop, channels});
        if (channels == 1) to_grayscale(pixels.data(), gray.size(), gray.data());
        cpu::Backend::normalize_images(ctx, channels == 1 ? gray.data() : pixels.data(), mean.data(), inv_std.data(),
                                       x);
        const Tensor logits = net->forward(ctx, x);
        std::vector<double> p(logits.data, logits.data + classes);
        const double top = *std::max_element(p.begin(), p.end());
        for (double& v : p) v = std::exp(v - top);
        const double sum = std::accumulate(p.begin(), p.end(), 0.0);
        std::vector<int> order(static_cast<std::size_t>(classes));
        std::iota(order.begin(), order.end(), 0);
        const int k = std::min(topk, classes);
        std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int a, int b) { return p[a] > p[b]; });
        if (args.flag("json")) {
            out += std::string(i ? ", " : "") + "{\"image\": " + json::quote(image) + ", \"top\": [";
            for (int j = 0; j < k; ++j) {
                char prob[32];
                std::snprintf(prob, sizeof prob, "%.6f", p[order[j]] / sum);
                out += std::string(j ? ", " : "") + "{\"class\": " + std::to_string(order[j]) +
                       ", \"label\": " + json::quote(labels.empty() ? std::to_string(order[j]) : labels[order[j]]) +
                       ", \"prob\": " + prob + "}";
            }
            out += "]}";
            continue;
        }
        std::printf("%s\n", image.c_str());
        for (int j = 0; j < k; ++j)
            std::printf("  %5.1f%%  %s (class %d)\n", 100 * p[order[j]] / sum,
                        labels.empty() ? std::to_string(order[j]).c_str() : labels[order[j]].c_str(), order[j]);
    }
    if (args.flag("json")) std::printf("%s]\n", out.c_str());
    return 0;
}

}  // namespace tessera::runner
