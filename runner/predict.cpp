// runner predict --checkpoint PATH IMAGE...: the most probable classes of each image, preprocessed
// as validation is (classifier.hpp: the same card, preprocessing and JSON as `runner serve`).
#include <cstdio>

#include "classifier.hpp"
#include "runner.hpp"
#include "tessera/data/image_folder.hpp"

namespace tessera::runner {

int predict(const std::vector<std::string>& raw) {
    Args args(raw, {"json"},
              {"checkpoint", "arch", "labels", "topk", "image-size", "resize", "threads", "device", "precision"});
    if (!args.value("checkpoint") || args.positional().empty())
        throw user_error(
            "runner predict", "expected --checkpoint PATH and one or more images",
            "e.g. runner predict --checkpoint runs/r/best.safetensors --labels LOC_synset_mapping.txt photo.jpg");
    const ModelCard card = read_model_card(args);
    const int topk = args.integer("topk", 5);
    const auto classifier = Classifier::open(card, args.value("device").value_or("cpu"),
                                             args.value("threads") ? thread_count(args) : ThreadPool::default_threads(),
                                             args.value("precision").value_or("fp32"));
    Preprocessor preprocess(card);
    std::vector<std::uint8_t> bytes, pixels(card.input_bytes());
    std::string out = "[";
    for (std::size_t i = 0; i < args.positional().size(); ++i) {
        const std::string& image = args.positional()[i];
        if (!data::read_bytes(image, bytes)) throw user_error(image, "cannot read the file");
        try {
            preprocess(bytes, pixels.data());
        } catch (const data::DecodeError& e) {
            throw user_error(image, std::string("not an image tessera can read: ") + e.what(),
                             "give JPEG, PNG, GIF, BMP or PNM files");
        }
        const std::vector<double> p = classifier->probabilities(pixels.data(), 1);
        if (args.flag("json")) {
            out += (i ? ", " : "") + prediction_json(card, image, p, topk);
            continue;
        }
        std::printf("%s\n", image.c_str());
        for (int c : top_classes(p, topk))
            std::printf("  %5.1f%%  %s (class %d)\n", 100 * p[std::size_t(c)], card.label(c).c_str(), c);
    }
    if (args.flag("json")) std::printf("%s]\n", out.c_str());
    return 0;
}

}  // namespace tessera::runner
