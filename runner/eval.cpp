// runner eval RECIPE --checkpoint PATH: loss, top-1 and top-5 of a checkpoint on the recipe's
// validation data (each image once, across the ranks when started by mpirun). An int8 model that
// runner quantize wrote (.onnx) is evaluated through tessera's fake-quant forward on the CPU
// (graph_runner.hpp): tessera has no int8 kernels of its own.
#include <cstdio>

#include "runner.hpp"
#include "tessera/core/json.hpp"
#include "deploy.hpp"
#include "tessera/recipe/run_spec.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/evaluate.hpp"

namespace tessera::runner {

int eval(const std::vector<std::string>& raw) {
    Args args(raw, {"json"}, {"checkpoint", "threads"}, {"set"});
    if (args.positional().size() != 1 || !args.value("checkpoint"))
        throw user_error("runner eval", "expected a recipe and --checkpoint PATH",
                         "e.g. runner eval recipes/quickstart.toml --checkpoint runs/quickstart/last.safetensors");
    const World world;
    const recipe::RunSpec spec = recipe::open_run(args.positional()[0], args.values("set"));
    const plugin::DatasetInfo& info = spec.info;
    const int threads = args.value("threads") ? thread_count(args) : ThreadPool::default_threads();
    train::Evaluation result;
    const std::string path = *args.value("checkpoint");
    const bool int8 = path.ends_with(".onnx");
    if (int8) {
        const auto model = open_int8_model(path, spec.arch(), spec.num_classes, info.channels);
        auto ctx = make_context<cpu::Backend>(threads, "fp32", spec.where("model", "precision"));
        // Every value stays in the arena until the batch ends: batches of at most 64 images.
        result = train::evaluate_with<cpu::Backend>(
            *ctx, [&](cpu::Context& c, const Tensor& x) { return model->forward(c, x); }, *spec.data,
            std::min(spec.train.batch_size, 64), world.get());
    } else
        on_device(spec.device(), spec.where("train", "device"), [&]<class B>() {
            auto ctx =
                make_context<B>(threads, spec.precision(), spec.where("model", "precision"), world->local_rank());
            auto net = make_network<B>(spec.arch(), spec.num_classes, info.channels);
            const auto meta = checkpoint::read_metadata(path);
            if (meta.count("arch") && meta.at("arch") != net->arch())
                throw user_error(
                    path, "holds a " + meta.at("arch") + ", but the recipe builds a " + net->arch(),
                    "evaluate it with the recipe that trained it, or set model.arch = \"" + meta.at("arch") + "\"");
            const auto shapes = checkpoint::read_shapes(path);
            if (shapes.count("fc.weight") && !shapes.at("fc.weight").empty() &&
                shapes.at("fc.weight")[0] != spec.num_classes)
                throw user_error(
                    path,
                    "holds a model of " + std::to_string(shapes.at("fc.weight")[0]) +
                        " classes, but the recipe's has " + std::to_string(spec.num_classes),
                    "set model.num_classes = 0 to take the data's, or evaluate it on the data it was trained on");
            checkpoint::load(net->params(), path);
            net->upload();
            result = train::evaluate<B>(*ctx, *net, *spec.data, spec.train.batch_size, world.get());
            return 0;
        });
    if (!world->is_root()) return 0;
    if (args.flag("json"))
        std::printf(
            "{\"checkpoint\": %s, \"images\": %lld, \"loss\": %.6f, \"top1\": %.6f, \"top5\": %.6f, \"forward\": %s}\n",
            json::quote(path).c_str(), (long long)info.val_size, result.loss, result.top1, result.top5,
            int8 ? "\"int8 fake-quant\"" : "\"network\"");
    else
        std::printf("eval%s: %lld images, loss %.4f, top-1 %.2f%%, top-5 %.2f%%\n",
                    int8 ? " (int8 QDQ, through tessera's fake-quant forward on the CPU)" : "",
                    (long long)info.val_size, result.loss, 100 * result.top1, 100 * result.top5);
    return 0;
}

}  // namespace tessera::runner
