// runner predict --checkpoint PATH IMAGE...: the most probable classes of each image, preprocessed
// as validation is (torchvision's Resize + CenterCrop, ImageNet's mean and std).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <numeric>
#include <regex>

#include "runner.hpp"
#include "tessera/core/json.hpp"
#include "tessera/data/image_folder.hpp"
#include "tessera/data/transform.hpp"
#include "tessera/train/checkpoint.hpp"

namespace tessera::runner {

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

}  // namespace

int predict(const std::vector<std::string>& raw) {
    Args args(raw, {"json"}, {"checkpoint", "arch", "labels", "topk", "image-size", "resize", "threads"});
    if (!args.value("checkpoint") || args.positional().empty())
        throw user_error("runner predict", "expected --checkpoint PATH and one or more images",
                         "e.g. runner predict --checkpoint runs/r/best.safetensors --labels LOC_synset_mapping.txt photo.jpg");
    const std::string path = *args.value("checkpoint");
    // The architecture from the checkpoint's metadata, the class count and input channels from its shapes.
    const auto shapes = checkpoint::read_shapes(path);
    const auto meta = checkpoint::read_metadata(path);
    const std::string arch = args.value("arch").value_or(meta.count("arch") ? meta.at("arch") : "");
    if (arch.empty()) throw user_error(path, "does not say which architecture it holds", "add --arch, e.g. --arch resnet50");
    if (!shapes.count("fc.weight") || !shapes.count("conv1.weight") || shapes.at("fc.weight").size() != 2 ||
        shapes.at("conv1.weight").size() != 4)
        throw user_error(path, "is not a ResNet checkpoint (it has no fc.weight or conv1.weight)");
    const int classes = int(shapes.at("fc.weight")[0]), channels = int(shapes.at("conv1.weight")[1]);
    if (channels != 3)
        throw user_error(path, "takes " + std::to_string(channels) + "-channel images; predict reads photographs (3 channels)");
    const int crop = args.integer("image-size", 224), resize = args.integer("resize", crop * 8 / 7), topk = args.integer("topk", 5);
    std::vector<std::string> labels;
    if (auto file = args.value("labels")) {
        labels = read_labels(*file);
        if (int(labels.size()) != classes)
            throw user_error(*file, "has " + std::to_string(labels.size()) + " names for a model of " + std::to_string(classes) +
                                        " classes", "give one name per class, in class order");
    }

    auto net = make_cpu_network(arch, classes, 3);
    checkpoint::load(net->params(), path);
    cpu::Context ctx(args.value("threads") ? thread_count(args) : ThreadPool::default_threads());
    ctx.training = false;
    const data::TransformConfig preprocess{.image_size = crop, .val_resize = resize, .val_crop = crop, .fast_decode = false};
    const float mean[] = {0.485f, 0.456f, 0.406f}, inv_std[] = {1 / 0.229f, 1 / 0.224f, 1 / 0.225f};
    data::ImageTransform transform;
    std::vector<std::uint8_t> bytes, pixels(std::size_t(crop) * crop * 3);
    std::string out = "[";
    for (std::size_t i = 0; i < args.positional().size(); ++i) {
        const std::string& image = args.positional()[i];
        if (!data::read_bytes(image, bytes)) throw user_error(image, "cannot read the file");
        try {
            transform.val(bytes, preprocess, pixels.data());
        } catch (const data::DecodeError& e) {
            throw user_error(image, std::string("not an image tessera can read: ") + e.what(), "give JPEG, PNG, GIF, BMP or PNM files");
        }
        ctx.arena.reset();
        const Tensor x = ctx.arena.tensor({1, crop, crop, 3});
        cpu::Backend::normalize_images(ctx, pixels.data(), mean, inv_std, x);
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
                out += std::string(j ? ", " : "") + "{\"class\": " + std::to_string(order[j]) + ", \"label\": " +
                       json::quote(labels.empty() ? std::to_string(order[j]) : labels[order[j]]) + ", \"prob\": " + prob + "}";
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
