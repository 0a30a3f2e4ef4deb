// A network of one's own: a wide ResNet for 32x32 images, composed from tessera's blocks, trained
// from C++. Everything else comes from recipe.toml, through the RunSpec runner train uses: the data,
// optimizer, scheduler and logger plugins, and every training value, checked before any work.
//   make && ./own_network [epochs]
#include <cstdio>
#include <cstdlib>
#include <filesystem>

#include "tessera/backend/cpu/select_cpu_kernels.hpp"
#include "tessera/backend/cpu/backend.hpp"
#include "tessera/models/network.hpp"
#include "tessera/models/resnet.hpp"
#include "tessera/recipe/run_spec.hpp"
#include "tessera/train/loop.hpp"

using namespace tessera;
using namespace tessera::layers;

template <int Out, int Stride>
using Block = models::BasicBlock<Out, Stride>;

// Three stages of two blocks, twice as wide as ResNet-20's (a WRN-14-2, Zagoruyko & Komodakis 2016).
using WideResNet = Seq<Named<"conv1", Conv<32, 3>>, Named<"bn1", BatchNorm<>>, ReLU,
                       Named<"layer1", models::Stage<Block, 32, 2, 1>>, Named<"layer2", models::Stage<Block, 64, 2, 2>>,
                       Named<"layer3", models::Stage<Block, 128, 2, 2>>, GlobalAvgPool, Named<"fc", Linear<>>>;
static_assert(param_count<WideResNet, 3, 10> < 1'000'000, "a small network for a CPU");

int main(int argc, char** argv) {
    cpu::select_cpu_kernels(argv);
    const int epochs = argc > 1 ? std::atoi(argv[1]) : 2;
    try {
        const recipe::RunSpec spec = recipe::open_run("recipe.toml", {"train.epochs=" + std::to_string(epochs)});
        models::Model<WideResNet, 3, cpu::Backend> net(spec.arch(), spec.num_classes);
        net.init(spec.seed(), {});
        cpu::Context ctx(ThreadPool::default_threads());
        auto optimizer = spec.optimizer();
        auto scheduler = spec.scheduler();
        auto loggers = spec.loggers();
        train::Trainer<cpu::Backend> trainer(ctx, net, *spec.data, *optimizer, *scheduler, loggers, spec.train);
        std::filesystem::create_directories(spec.train.run_dir);
        for (auto& logger : loggers)
            logger->on_run_begin({spec.recipe.run.text("name"), spec.train.run_dir.string(), net.arch(),
                                  spec.train.epochs, spec.train.batch_size, trainer.steps_per_epoch(),
                                  std::int64_t(net.params().values.size())});
        const plugin::EpochStats last = trainer.fit();
        std::printf("final: val_top1=%.4f, weights in %s\n", last.val_top1,
                    (spec.train.run_dir / "last.safetensors").c_str());
        return 0;
    } catch (const Error& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 2;
    }
}
