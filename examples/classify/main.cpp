// Classify images with a trained ResNet-20 (a checkpoint from runner on 32x32 images):
//   make && ./classify runs/NAME/last.safetensors NUM_CLASSES image.jpg...
// Each image is preprocessed as validation is (Resize(36) + CenterCrop(32), ImageNet's mean and std).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "tessera/backend/cpu/select_cpu_kernels.hpp"
#include "tessera/backend/cpu/backend.hpp"
#include "tessera/data/image_folder.hpp"
#include "tessera/data/transform.hpp"
#include "tessera/models/network.hpp"
#include "tessera/models/resnet.hpp"
#include "tessera/train/checkpoint.hpp"

using namespace tessera;

int main(int argc, char** argv) {
    cpu::select_cpu_kernels(argv);
    if (argc < 4) return std::fprintf(stderr, "usage: classify CHECKPOINT NUM_CLASSES IMAGE...\n"), 2;
    try {
        models::Model<models::ResNet20, 3, cpu::Backend> net("resnet20", std::atoi(argv[2]));
        checkpoint::load(net.params(), argv[1]);
        cpu::Context ctx(1);
        ctx.training = false;

        const data::TransformConfig preprocess{.image_size = 32, .val_resize = 36, .val_crop = 32};
        const float mean[] = {0.485f, 0.456f, 0.406f}, inv_std[] = {1 / 0.229f, 1 / 0.224f, 1 / 0.225f};
        data::ImageTransform transform;
        std::vector<std::uint8_t> bytes, pixels(32 * 32 * 3);
        for (int i = 3; i < argc; ++i) {
            if (!data::read_bytes(argv[i], bytes)) throw user_error(argv[i], "cannot read the file");
            transform.val(bytes, preprocess, pixels.data());
            ctx.arena.reset();
            const Tensor x = ctx.arena.tensor({1, 32, 32, 3});
            cpu::Backend::normalize_images(ctx, pixels.data(), mean, inv_std, x);
            const Tensor logits = net.forward(ctx, x);

            // Softmax, then the three most probable classes.
            std::vector<double> p(logits.data, logits.data + logits.size());
            const double top = *std::max_element(p.begin(), p.end());
            for (double& v : p) v = std::exp(v - top);
            const double sum = std::accumulate(p.begin(), p.end(), 0.0);
            std::vector<int> order(p.size());
            std::iota(order.begin(), order.end(), 0);
            std::partial_sort(order.begin(), order.begin() + std::min<std::size_t>(3, order.size()), order.end(),
                              [&](int a, int b) { return p[a] > p[b]; });
            std::printf("%s:", argv[i]);
            for (std::size_t k = 0; k < std::min<std::size_t>(3, order.size()); ++k)
                std::printf("  class %d %.3f", order[k], p[order[k]] / sum);
            std::printf("\n");
        }
        return 0;
    } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    } catch (const data::DecodeError& e) {
        std::fprintf(stderr, "error: not an image I can read: %s\n", e.what());
        return 2;
    }
}
