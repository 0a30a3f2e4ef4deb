#pragma once
// What `runner predict` and `runner serve` share: a checkpoint opened as a classifier of images.
// The same model card (architecture, classes, preprocessing, names), the same preprocessing
// (torchvision's Resize + CenterCrop, then normalisation) and the same JSON per image, so that the
// server answers to the digit what the command line prints.
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tessera/data/image.hpp"
#include "tessera/data/transform.hpp"

namespace tessera::runner {

class Args;

/// What a checkpoint is, as a classifier: read from its shapes and metadata, with the command
/// line's overrides (--arch, --image-size, --resize, --labels).
struct ModelCard {
    std::string checkpoint, arch;
    int classes = 0, channels = 3;
    int crop = 224, resize = 256;  // validation's Resize(resize) + CenterCrop(crop)
    std::vector<float> mean, std;
    std::vector<std::string> labels;  // empty: classes are shown by number

    std::string label(int c) const { return labels.empty() ? std::to_string(c) : labels[std::size_t(c)]; }
    std::size_t input_bytes() const { return std::size_t(crop) * crop * std::size_t(channels); }
    /// {"arch": …, "classes": …, "labels": […], "input": {…}, "mean": […], "std": […]}
    std::string json() const;
};

/// The checkpoint named by --checkpoint, with the overrides; user errors name what is wrong.
ModelCard read_model_card(const Args& args);

/// Bytes of an image file to the network's input pixels (uint8, H x W x channels), as validation
/// preprocesses them. One per thread: it holds a decoder and its buffers.
class Preprocessor {
public:
    explicit Preprocessor(const ModelCard& card);
    /// The header alone: format and size (throws data::DecodeError).
    data::ImageHeader header(std::span<const std::uint8_t> bytes) { return decoder_.header(bytes); }
    /// Fills out[0, card.input_bytes()); throws data::DecodeError.
    void operator()(std::span<const std::uint8_t> bytes, std::uint8_t* out);

private:
    const ModelCard& card_;
    data::TransformConfig config_;
    data::ImageDecoder decoder_;
    data::ImageTransform transform_;
    std::vector<std::uint8_t> rgb_;
};

/// The network of a model card on a device, in evaluation mode: batches of preprocessed images in,
/// class probabilities out (softmax in double of the float logits).
class Classifier {
public:
    virtual ~Classifier() = default;
    /// `count` images of card.input_bytes() each, back to back; count x classes probabilities.
    virtual std::vector<double> probabilities(const std::uint8_t* pixels, int count) = 0;
    /// The kernels that run ("onednn avx2, openblas Zen, compiled fp32 inference"), or the card's name.
    virtual std::string device() = 0;

    /// `device` is "cpu" or "cuda", `precision` "fp32" or "bf16" (or the CUDA backend's others); user
    /// errors for what this build or CPU lacks.
    static std::unique_ptr<Classifier> open(const ModelCard& card, const std::string& device, int threads,
                                            const std::string& precision = "fp32");
};

/// The `k` most probable classes, most probable first (ties: the lower class first).
std::vector<int> top_classes(std::span<const double> probs, int k);

/// One image's answer, as `runner predict --json` prints it: {"image": name, "top": [{"class": c,
/// "label": …, "prob": p}, …]}, the `topk` most probable, most probable first.
std::string prediction_json(const ModelCard& card, const std::string& name, std::span<const double> probs, int topk);

}  // namespace tessera::runner
