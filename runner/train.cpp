// runner train RECIPE: validate everything, then train, validate each epoch and save the weights.
// A run whose folder holds a checkpoint continues from it (--fresh starts over, --resume PATH takes
// another); SIGINT and SIGTERM finish the current step, save, and say how to resume.
// Under mpirun or srun, each process is one rank of a data-parallel run (see the README).
#include <csignal>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "recipe_run.hpp"
#include "runner.hpp"
#include "tessera/recipe/recipe.hpp"
#include "tessera/train/trainer.hpp"

namespace tessera::runner {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> stop_requested{false};
volatile std::sig_atomic_t stop_signal = 0;

extern "C" void request_stop(int signal) {
    stop_signal = signal;
    stop_requested = true;
}

/// The checkpoint to continue from: --resume PATH, else the run folder's, unless --fresh.
std::optional<fs::path> checkpoint_to_resume(const Args& args, const fs::path& run_dir) {
    if (args.flag("fresh")) {
        if (args.value("resume")) throw user_error("runner train", "--fresh and --resume contradict each other", "give one of them");
        return std::nullopt;
    }
    if (auto path = args.value("resume")) {
        if (!fs::exists(*path)) throw user_error(*path, "no such checkpoint (--resume)", "give a run's last.safetensors");
        return fs::path(*path);
    }
    if (fs::exists(run_dir / "last.safetensors")) return run_dir / "last.safetensors";
    return std::nullopt;
}

/// CPU threads per process: --threads, the recipe's, TESSERA_NUM_THREADS, else the machine's cores
/// shared among the processes on it.
int threads_per_process(const Args& args, const recipe::Recipe& r, const dist::Communicator& world) {
    if (args.value("threads")) return thread_count(args);
    if (r.train.integer("threads") > 0) return int(r.train.integer("threads"));
    if (std::getenv("TESSERA_NUM_THREADS") || world.local_size() == 1) return ThreadPool::default_threads();
    return std::max(1, int(std::thread::hardware_concurrency()) / world.local_size());
}

/// The factor linear scaling applies to the schedule's rates: global batch / base batch.
double lr_scale(const recipe::Recipe& r, int world_size) {
    const std::string& rule = r.train.text("scale_lr");
    if (rule == "none") return 1;
    if (rule != "linear")
        throw user_error(r.file.string() + " [train] scale_lr", "\"" + rule + "\" is not one of none, linear");
    if (r.train.integer("base_batch") < 1) throw user_error(r.file.string() + " [train] base_batch", "must be at least 1");
    return double(r.batch_size) * world_size / double(r.train.integer("base_batch"));
}

}  // namespace

RecipeRun open_recipe(const std::string& file, const std::vector<std::string>& sets) {
    RecipeRun run;
    run.recipe = recipe::load(file, sets);
    run.registry = std::make_unique<plugin::Registry>(recipe::plugin_path(run.recipe.effective));
    recipe::resolve(run.recipe, *run.registry);
    const recipe::Recipe& r = run.recipe;
    run.data = run.registry->create<plugin::DataSource>(*r.data.entry, r.data.options);
    run.info = run.data->info();
    run.num_classes = r.model.integer("num_classes") ? int(r.model.integer("num_classes")) : run.info.num_classes;
    if (run.num_classes < run.info.num_classes)
        throw user_error(r.file.string(), "model.num_classes = " + std::to_string(run.num_classes) + " but the data has " +
                                              std::to_string(run.info.num_classes) + " classes",
                         "set num_classes = 0 to take the data's");
    return run;
}

int train(const std::vector<std::string>& raw) {
    Args args(raw, {"fresh"}, {"threads", "resume", "stop-after-steps"}, {"set"});
    if (args.positional().size() != 1)
        throw user_error("runner train", "expected one recipe file", "e.g. runner recipes/quickstart.toml");
    const auto start = std::chrono::steady_clock::now();
    const World world;
    const bool root = world->is_root();

    // Everything is checked before any work: the recipe, its plugins, the data, the model.
    RecipeRun run = open_recipe(args.positional()[0], args.values("set"));
    const recipe::Recipe& r = run.recipe;
    plugin::Registry& registry = *run.registry;
    plugin::DataSource& data = *run.data;
    const plugin::DatasetInfo& info = run.info;
    const int num_classes = run.num_classes;
    const int threads = threads_per_process(args, r, *world);
    const double scale = lr_scale(r, world->size());
    if (r.train.integer("bucket_mb") < 1) throw user_error(r.file.string() + " [train] bucket_mb", "must be at least 1");
    if (root && world->size() > 1)
        std::printf("data parallel: %d processes (%s), batch %d each, global batch %d, %d threads each, gradients all-reduced "
                    "%s%s\n", world->size(), world->name().c_str(), r.batch_size, r.batch_size * world->size(), threads,
                    world->concurrent() ? "during backward" : "after backward",
                    scale != 1 ? (", rates scaled x" + std::to_string(scale) + " (linear)").c_str() : "");
    const std::string device = r.train.text("device");
    plugin::EpochStats last;
    bool interrupted = false, finished_before = false;
    train::Progress stopped_at;
    on_device(device, r.file.string() + " [train] device", [&]<class B>() {
        // Several GPUs: one per process, the process's local rank; gradients through NCCL.
        auto ctx = make_context<B>(threads, r.model.text("precision"), r.file.string() + " [model] precision", world->local_rank());
        std::unique_ptr<dist::Communicator> gpus;
        if (B::has_device_memory && world->size() > 1) gpus = gpu_world(*world);
        auto net = make_network<B>(r.model.text("arch"), num_classes, info.channels);
        net->init(std::uint64_t(r.run.integer("seed")), {r.model.flag("zero_init_residual")});
        auto optimizer = registry.create<plugin::Optimizer>(*r.optimizer.entry, r.optimizer.options);
        auto scheduler = registry.create<plugin::Scheduler>(*r.scheduler.entry, r.scheduler.options);
        std::vector<std::shared_ptr<plugin::Logger>> loggers;
        for (auto& l : r.loggers) loggers.push_back(registry.create<plugin::Logger>(*l.entry, l.options));

        // Rank 0 alone writes: the run folder, the logs, the weights.
        const fs::path run_dir = fs::path(r.run.text("out_dir")) / r.run.text("name");
        if (root) {
            std::error_code ec;
            fs::create_directories(run_dir, ec);
            if (ec) throw user_error(run_dir.string(), "cannot create the run folder: " + ec.message(), "set run.out_dir to a writable folder");
            std::ofstream(run_dir / "recipe.toml") << r.effective << "\n";
        }

        train::TrainConfig config;
        config.epochs = int(r.train.integer("epochs"));
        config.batch_size = r.batch_size;
        config.label_smoothing = float(r.train.number("label_smoothing"));
        config.seed = std::uint64_t(r.run.integer("seed"));
        config.checkpoint_every = int(std::max<std::int64_t>(1, r.checkpoint.integer("every_epochs")));
        config.run_dir = run_dir;
        config.comm = gpus ? gpus.get() : world.get();
        config.sync_batchnorm = r.train.flag("sync_batchnorm");
        config.bucket_bytes = std::size_t(r.train.integer("bucket_mb")) << 20;
        config.lr_scale = scale;
        config.checkpoint_minutes = r.checkpoint.number("every_minutes");
        config.stop = &stop_requested;
        if (auto n = args.value("stop-after-steps")) config.stop_after_steps = args.integer("stop-after-steps", 0);
        config.accumulate = int(r.train.integer("accumulate"));
        config.grad_clip = r.train.number("grad_clip");
        config.ema_decay = r.train.number("ema");
        config.mix = {r.train.number("mixup_alpha"), r.train.number("cutmix_alpha"), r.train.number("mix_prob"),
                      r.train.number("mix_switch_prob")};
        config.target_top1 = r.train.number("target_top1");
        if (r.checkpoint.integer("keep") < 0) throw user_error(r.file.string() + " [checkpoint] keep", "must not be negative");
        config.keep_epochs = int(r.checkpoint.integer("keep"));
        const std::string& on_failure = r.checkpoint.text("on_failure");
        if (on_failure != "stop" && on_failure != "continue")
            throw user_error(r.file.string() + " [checkpoint] on_failure", "\"" + on_failure + "\" is not one of stop, continue");
        config.stop_on_save_failure = on_failure == "stop";
        if (r.train.integer("max_bad_steps") < 0) throw user_error(r.file.string() + " [train] max_bad_steps", "must not be negative");
        config.max_bad_steps = int(r.train.integer("max_bad_steps"));
        config.loss_scale = loss_scale_of(r);
        train::Trainer<B> trainer(*ctx, *net, data, *optimizer, *scheduler, loggers, config);
        if (trainer.steps_per_epoch() < 1)
            throw user_error(r.file.string(), "the training data has fewer images than one batch (" + std::to_string(r.batch_size) +
                                                  (world->size() > 1 ? " per process" : "") + ")",
                             "lower data.batch_size");

        if (const auto from = checkpoint_to_resume(args, run_dir)) {
            trainer.resume(*from);
            if (root)
                std::printf("resuming from %s: epoch %d, step %lld of %lld\n", from->string().c_str(), trainer.progress().epoch,
                            (long long)(trainer.progress().batch / config.accumulate), (long long)trainer.steps_per_epoch());
            if (trainer.progress().epoch > config.epochs) {
                if (root)
                    std::printf("the run has done all of its %d epochs; raise train.epochs to train on (the schedule then "
                                "changes), or start over with --fresh\n", config.epochs);
                finished_before = true;
                return 0;
            }
        }
        plugin::RunInfo about;
        about.name = r.run.text("name");
        about.run_dir = run_dir.string();
        about.arch = net->arch();
        about.epochs = config.epochs;
        about.batch_size = config.batch_size;
        about.steps_per_epoch = trainer.steps_per_epoch();
        about.parameters = std::int64_t(net->params().values.size());
        about.first_epoch = trainer.progress().epoch;
        about.first_step = std::int64_t(about.first_epoch - 1) * about.steps_per_epoch + trainer.progress().batch / config.accumulate;
        about.recipe = (std::ostringstream() << r.effective).str();
        about.has_ema = config.ema_decay > 0;
        if (root)
            for (auto& l : loggers) l->on_run_begin(about);
        std::signal(SIGINT, request_stop);
        std::signal(SIGTERM, request_stop);
        last = trainer.fit();
        std::signal(SIGINT, SIG_DFL);
        std::signal(SIGTERM, SIG_DFL);
        if (root)
            for (auto& l : loggers) l->on_run_end();
        if (trainer.reached_target() && root)
            std::printf("reached the target top-1 %.4f at epoch %d: training stops here\n", config.target_top1, last.epoch);
        if (trainer.interrupted()) {
            stopped_at = trainer.progress();
            interrupted = true;
        }
        return 0;
    });
    if (finished_before) return 0;
    if (interrupted) {
        const std::string how = "runner " + args.positional()[0];
        if (root)
            std::printf("%s at epoch %d, step %lld: saved %s; resume with: %s\n",
                        stop_signal ? (stop_signal == SIGINT ? "interrupted (SIGINT)" : "interrupted (SIGTERM)") : "stopped as asked",
                        stopped_at.epoch, (long long)(stopped_at.batch / r.train.integer("accumulate")),
                        (fs::path(r.run.text("out_dir")) / r.run.text("name") / "last.safetensors").string().c_str(), how.c_str());
        return stop_signal ? 128 + int(stop_signal) : 0;
    }

    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (root)
        std::printf("final: epoch=%d val_top1=%.4f val_top5=%.4f val_loss=%.4f%s time_s=%.1f\n", last.epoch, last.val_top1,
                    last.val_top5, last.val_loss,
                    last.has_ema ? (" ema_val_top1=" + std::to_string(last.ema_val_top1)).c_str() : "", seconds);
    return 0;
}

}  // namespace tessera::runner
