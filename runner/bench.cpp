// runner bench: training-step throughput on synthetic data (forward, loss, backward, SGD step); with
// --data RECIPE the recipe's training loader alone (decode and augment, no model); with --allreduce,
// under mpirun, the gradient all-reduce alone.
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>

#include "runner.hpp"
#include "tessera/core/json.hpp"
#include "tessera/export/cpu_inference.hpp"
#include "tessera/plugin/registry.hpp"
#include "tessera/recipe/recipe.hpp"
#include "tessera/recipe/run_spec.hpp"
#include "tessera/train/step.hpp"
#ifdef TESSERA_WITH_NCCL
#include "tessera/parallel/nccl.hpp"
#endif

namespace tessera::runner {

namespace {
/// The process's peak resident memory (VmHWM), in bytes.
std::size_t peak_resident_bytes() {
    std::ifstream status("/proc/self/status");
    std::string line;
    while (std::getline(status, line))
        if (line.rfind("VmHWM:", 0) == 0) return std::stoull(line.substr(6)) * 1024;
    return 0;
}
}  // namespace

/// The training loader of `recipe_file` alone: batches per second with data.workers = threads.
int bench_data(const Args& args, const std::string& recipe_file) {
    const int threads = thread_count(args), batches = args.integer("batches", 20),
              warmup = args.integer("warmup", 2, 0);
    std::vector<std::string> overrides = args.values("set");
    {  // decoding threads: --threads, where the data plugin has workers
        recipe::Recipe r = recipe::load(recipe_file, overrides);
        plugin::Registry registry(recipe::plugin_path(r.effective));
        recipe::resolve(r, registry);
        if (r.data.options.values().count("workers")) overrides.push_back("data.workers=" + std::to_string(threads));
    }
    const recipe::RunSpec spec = recipe::open_run(recipe_file, overrides);
    plugin::DataSource* data = spec.data.get();
    const int batch_size = spec.train.batch_size;
    const plugin::EpochPlan plan = train::epoch_plan(1, plugin::Split::train, batch_size, spec.seed(), nullptr);
    const std::int64_t available = data->num_batches(plugin::Split::train, plan);
    if (available < warmup + batches)
        throw user_error(recipe_file,
                         "the training data holds " + std::to_string(available) + " batches of " +
                             std::to_string(batch_size) + ", fewer than --warmup + --batches",
                         "lower --batches or data.batch_size");
    data->start_epoch(plugin::Split::train, plan);
    plugin::Batch batch;
    for (int b = 0; b < warmup; ++b) data->next(batch);
    const auto t0 = std::chrono::steady_clock::now();
    std::int64_t images = 0;
    for (int b = 0; b < batches && data->next(batch); ++b) images += batch.count;
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double img_per_s = double(images) / seconds;
    if (args.flag("json"))
        std::printf(
            "{\"data\": \"%s\", \"threads\": %d, \"batch\": %d, \"batches\": %d, \"height\": %d, \"width\": %d, "
            "\"img_per_s\": %.1f, \"img_per_s_per_thread\": %.1f, \"bad_samples\": %lld}\n",
            spec.recipe.data.entry->info.name.c_str(), threads, batch_size, batches, batch.height, batch.width,
            img_per_s, img_per_s / threads, (long long)data->bad_samples());
    else
        std::printf("%s loader, batch %d of %dx%d, %d threads: %.1f img/s (%.1f per thread)\n",
                    spec.recipe.data.entry->info.name.c_str(), batch_size, batch.height, batch.width, threads,
                    img_per_s, img_per_s / threads);
    return 0;
}

/// The all-reduce of `floats` gradients (ResNet50's by default) across the ranks mpirun started,
/// in host memory (MPI) or, with --device cuda, GPU memory (NCCL; one GPU alone is allowed, and
/// measures NCCL's local copy): seconds per all-reduce, and the bandwidths NCCL's tests report
/// (algorithm: bytes / time; bus: that times 2 (n - 1) / n, what each link carries in a ring).
int bench_allreduce(const Args& args) {
    const World world;
    const std::size_t floats = std::size_t(args.integer("floats", 25'557'032));
    const int steps = args.integer("steps", 10), warmup = args.integer("warmup", 2, 0);
    const std::string device = args.value("device").value_or("cpu");
    std::unique_ptr<parallel::Communicator> gpus;
    float* gradients = nullptr;
    std::vector<float> host;
    std::function<void()> wait = [] {};
    if (device == "cuda") {
#ifdef TESSERA_WITH_NCCL
        if (std::string why; !cuda::device_available(&why))
            throw user_error("runner bench --allreduce --device cuda", "no CUDA device: " + why,
                             "use --device cpu under mpirun");
        gpus = std::make_unique<parallel::NcclCommunicator>(*world, world->local_rank());
        TESSERA_NCCL(cudaMalloc(reinterpret_cast<void**>(&gradients), floats * sizeof(float)));
        TESSERA_NCCL(cudaMemset(gradients, 0, floats * sizeof(float)));
        TESSERA_NCCL(cudaDeviceSynchronize());  // the legacy stream's fill, before NCCL's stream reads it
        wait = [] { TESSERA_NCCL(cudaDeviceSynchronize()); };
#else
        throw user_error("runner bench --allreduce --device cuda", "this build has no NCCL",
                         "install NCCL next to nvcc and rebuild");
#endif
    } else if (device != "cpu") {
        throw user_error("runner bench --allreduce --device", "\"" + device + "\" is not one of cpu, cuda");
    } else if (world->size() < 2) {
        throw user_error("runner bench --allreduce", "this is a world of one process: there is nothing to all-reduce",
                         "run it under a launcher, e.g. mpirun -np 2 runner bench --allreduce");
    } else {
        host.assign(floats, 1.f);
        gradients = host.data();
    }
    parallel::Communicator& comm = gpus ? *gpus : *world;
    for (int s = 0; s < warmup; ++s) comm.all_reduce_sum(gradients, floats, nullptr);
    wait();
    world->barrier();
    const auto t0 = std::chrono::steady_clock::now();
    for (int s = 0; s < steps; ++s) comm.all_reduce_sum(gradients, floats, nullptr);
    wait();
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
#ifdef TESSERA_WITH_NCCL
    if (gpus) cudaFree(gradients);
#endif
    const double bytes = double(floats) * sizeof(float), algbw = bytes / seconds / 1e9;
    const double busbw = algbw * 2.0 * (comm.size() - 1) / comm.size();
    if (!world->is_root()) return 0;
    if (args.flag("json"))
        std::printf(
            "{\"communicator\": \"%s\", \"ranks\": %d, \"floats\": %zu, \"seconds\": %.6f, \"algbw_gb_s\": %.3f, "
            "\"busbw_gb_s\": %.3f}\n",
            comm.name().c_str(), comm.size(), floats, seconds, algbw, busbw);
    else
        std::printf(
            "all-reduce of %zu floats (%.1f MB) over %d ranks (%s): %.2f ms, algorithm bandwidth %.2f GB/s, bus "
            "bandwidth %.2f GB/s\n",
            floats, bytes / 1e6, comm.size(), comm.name().c_str(), seconds * 1e3, algbw, busbw);
    return 0;
}

int bench(const std::vector<std::string>& raw) {
    Args args(raw, {"json", "allreduce", "inference", "layers"},
              {"arch", "batch", "image-size", "device", "precision", "threads", "steps", "warmup", "num-classes",
               "data", "batches", "floats"},
              {"set"});
    if (args.value("data")) return bench_data(args, *args.value("data"));
    if (args.flag("allreduce")) return bench_allreduce(args);
    const std::string arch = args.value("arch").value_or("resnet50");
    const int batch = args.integer("batch", 32), image = args.integer("image-size", 224),
              steps = args.integer("steps", 5);
    const int warmup = args.integer("warmup", 1, 0), classes = args.integer("num-classes", 1000),
              threads = thread_count(args);
    const std::string device = args.value("device").value_or("cpu"),
                      precision = args.value("precision").value_or("fp32");

    plugin::Registry registry;
    auto find = [&](const char* kind, const char* name) {
        const auto* e = registry.find(kind, name);
        if (!e)
            throw user_error("runner bench", std::string("needs the ") + name + " plugin, which was not found",
                             "set TESSERA_PLUGIN_PATH to the folder of tessera's plugins");
        return e;
    };
    const std::int64_t images = std::int64_t(batch) * (steps + warmup);
    auto data = registry.create<plugin::DataSource>(*find("data", "synthetic"),
                                                    plugin::Options({{"image_size", std::int64_t(image)},
                                                                     {"channels", std::int64_t(3)},
                                                                     {"num_classes", std::int64_t(classes)},
                                                                     {"train_size", images},
                                                                     {"val_size", std::int64_t(0)}}));
    auto sgd = registry.create<plugin::Optimizer>(
        *find("optimizer", "sgd"),
        plugin::Options({{"momentum", 0.9}, {"weight_decay", 1e-4}, {"nesterov", false}, {"no_decay_bn_bias", false}}));
    auto constant = registry.create<plugin::Scheduler>(*find("scheduler", "constant"), plugin::Options({{"lr", 0.01}}));

    return on_device(device, "--device " + device, [&]<class B>() {
        auto ctx = make_context<B>(threads, precision, "--precision " + precision);
        auto net = make_network<B>(arch, classes, 3);
        net->init(0, {});
        train::StepConfig config;
        config.batch_size = batch;
        if (precision == "fp16")
            config.loss_scale = {train::LossScaler::dynamic_start, true};  // as training in fp16 does
        train::Step<B> step(*ctx, *net, *sgd, data->info(), config);
        data->start_epoch(plugin::Split::train, train::epoch_plan(1, plugin::Split::train, batch, 0, nullptr));
        // --inference: the forward pass alone in eval mode, as `runner predict`, `eval` and a server run
        // it (compiled on the CPU); with --layers, the network's own layers instead, for comparison.
        const bool inference = args.flag("inference"), layers = args.flag("layers");
        if (layers && !inference)
            throw user_error("--layers", "times the layers' inference forward", "add --inference");
        const train::Normalization normalization(data->info());
        if (inference) ctx->training = false;
        std::optional<deploy::InferenceForward<B>> forward;
        if (inference && !layers) forward.emplace(*net, ctx->activations);

        double timed = 0;
        std::size_t peak = 0;  // on a GPU: the most device memory in use after any step
        plugin::Batch images;
        for (int s = 0; s < warmup + steps; ++s) {
            data->next(images);
            const auto t0 = std::chrono::steady_clock::now();
            if (inference) {
                ctx->arena.reset();
                const Tensor x = normalization.input<B>(*ctx, images);
                if (forward)
                    (*forward)(*ctx, x);
                else
                    net->forward(*ctx, x);
            } else {
                step.run(images, {0.01, std::nullopt});
            }
            if constexpr (B::has_device_memory) {
                ctx->synchronize();
                peak = std::max(peak, ctx->device_bytes_in_use());
            }
            if (s >= warmup) timed += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        }
        const double img_per_s = double(batch) * steps / timed;
        const std::string kernels = forward ? forward->kernels(*ctx) : B::kernels(*ctx);  // after a forward ran
        if constexpr (!B::has_device_memory) peak = peak_resident_bytes();
        // What tessera allocated, counted as PyTorch's max_memory_allocated() counts: activations
        // and scratch (the arena), gradients in flight, the weights with their gradients and
        // statistics, the optimizer's state and, on the GPU, cuDNN's workspace.
        const auto& store = net->params();
        std::size_t allocated = ctx->arena.capacity_bytes() + ctx->grads.capacity_bytes() +
                                sizeof(float) * (2 * store.values.size() + store.buffers.size());
        for (const auto& [name, values] : sgd->state()) allocated += sizeof(float) * values.size();
        if constexpr (B::has_device_memory) allocated += ctx->workspace_bytes();
        if (forward) allocated += forward->bytes();
        if (args.flag("json")) {
            std::printf(
                "{\"arch\": \"%s\", \"device\": \"%s\", \"precision\": \"%s\", \"batch\": %d, \"image_size\": %d, "
                "\"threads\": %d, \"steps\": %d, \"step_s\": %.6f, \"%s\": %.3f, \"peak_mem_bytes\": %zu, "
                "\"allocated_bytes\": %zu, \"arena_bytes\": %zu, \"kernels\": %s}\n",
                arch.c_str(), B::name, precision.c_str(), batch, image, threads, steps, timed / steps,
                inference ? "infer_img_per_s" : "train_img_per_s", img_per_s, peak, allocated,
                ctx->arena.capacity_bytes(), json::quote(kernels).c_str());
        } else {
            std::printf(
                "%s%s, batch %d, %dx%d, %s %s (%s), %d threads: %.3f s/step, %.2f img/s, peak memory %.2f GiB (%.2f "
                "GiB allocated)\n",
                arch.c_str(), inference ? " inference" : "", batch, image, image, B::name, precision.c_str(),
                kernels.c_str(), threads, timed / steps, img_per_s, peak / double(1u << 30),
                allocated / double(1u << 30));
        }
        return 0;
    });
}

}  // namespace tessera::runner
