// A network of one's own: a wide ResNet for 32x32 images, composed from tessera's blocks, trained
// from C++ with the data, optimizer, scheduler and logger plugins loaded by name.
//   make && ./own_network [epochs]
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "tessera/backend/cpu/backend.hpp"
#include "tessera/models/network.hpp"
#include "tessera/models/resnet.hpp"
#include "tessera/plugin/registry.hpp"
#include "tessera/train/trainer.hpp"

using namespace tessera;
using namespace tessera::layers;

template <int Out, int Stride>
using Block = models::BasicBlock<Out, Stride>;

// Three stages of two blocks, twice as wide as ResNet-20's (a WRN-14-2, Zagoruyko & Komodakis 2016).
using WideResNet = Seq<Named<"conv1", Conv<32, 3>>, Named<"bn1", BatchNorm<>>, ReLU,
                       Named<"layer1", models::Stage<Block, 32, 2, 1>>,
                       Named<"layer2", models::Stage<Block, 64, 2, 2>>,
                       Named<"layer3", models::Stage<Block, 128, 2, 2>>, GlobalAvgPool, Named<"fc", Linear<>>>;
static_assert(param_count<WideResNet, 3, 10> < 1'000'000, "a small network for a CPU");

int main(int argc, char** argv) {
    cpu::select_gemm_kernels(argv);
    const int epochs = argc > 1 ? std::atoi(argv[1]) : 2;
    try {
        plugin::Registry plugins;  // TESSERA_PLUGIN_PATH, then where tessera was installed
        auto data = plugins.create<plugin::DataSource>("synthetic", {{"image_size", std::int64_t(32)}, {"channels", std::int64_t(3)},
                                                                     {"num_classes", std::int64_t(10)}, {"train_size", std::int64_t(1024)},
                                                                     {"val_size", std::int64_t(256)}});
        auto sgd = plugins.create<plugin::Optimizer>("sgd", {{"momentum", 0.9}, {"weight_decay", 5e-4}, {"nesterov", true}});
        auto schedule = plugins.create<plugin::Scheduler>("onecycle", {{"max_lr", 0.1}});
        auto console = plugins.create<plugin::Logger>("console", {{"mode", std::string("lines")}});

        models::Model<WideResNet, 3, cpu::Backend> net("wide_resnet", 10);
        net.init(/*seed=*/1, {});
        cpu::Context ctx(ThreadPool::default_threads());
        const std::filesystem::path run_dir = "runs/own_network";
        std::filesystem::create_directories(run_dir);
        train::Trainer<cpu::Backend> trainer(ctx, net, *data, *sgd, *schedule, {console},
                                             {.epochs = epochs, .batch_size = 64, .seed = 1, .run_dir = run_dir});
        console->on_run_begin({"own_network", run_dir.string(), net.arch(), epochs, 64, trainer.steps_per_epoch(),
                               std::int64_t(net.params().values.size())});
        const plugin::EpochStats last = trainer.fit();
        std::printf("final: val_top1=%.4f, weights in %s\n", last.val_top1, (run_dir / "last.safetensors").c_str());
        return 0;
    } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
}
