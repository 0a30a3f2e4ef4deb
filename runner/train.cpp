// runner train RECIPE: check everything, then train, validate each epoch and save the weights.
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

#include "runner.hpp"
#include "tessera/recipe/run_spec.hpp"
#include "tessera/train/loop.hpp"

namespace tessera::runner {

namespace fs = std::filesystem;

namespace {

std::atomic<bool> stop_requested{false};
volatile std::sig_atomic_t stop_signal = 0;

extern "C" void request_stop(int signal) {
    stop_signal = signal;
    stop_requested = true;
}

/// How a training run ended.
struct Outcome {
    plugin::EpochStats last;
    train::Progress stopped_at;
    bool interrupted = false, finished_before = false, reached_target = false;
};

/// The checkpoint to continue from: --resume PATH, else the run folder's, unless --fresh. Rank 0
/// decides; the others' run folders are never looked at, as they may be another machine's.
std::optional<fs::path> checkpoint_to_resume(const Args& args, const fs::path& run_dir, parallel::Communicator& world) {
    if (args.flag("fresh") && args.value("resume"))
        throw user_error("runner train", "--fresh and --resume contradict each other", "give one of them");
    std::optional<fs::path> from;
    if (world.is_root() && !args.flag("fresh")) {
        if (auto path = args.value("resume")) {
            if (!fs::exists(*path))
                throw user_error(*path, "no such checkpoint (--resume)", "give a run's last.safetensors");
            from = train::RunFolder::resolve(*path);
        } else {
            from = train::RunFolder(run_dir).latest();
        }
    }
    int resume = from.has_value();
    world.broadcast(&resume, sizeof resume, 0);
    if (resume && !from) from = fs::path();  // rank 0 reads it
    return from;
}

/// CPU threads per process: --threads, the recipe's, TESSERA_NUM_THREADS, else the machine's cores
/// shared among the processes on it.
int threads_per_process(const Args& args, const recipe::RunSpec& spec, const parallel::Communicator& world) {
    if (args.value("threads")) return thread_count(args);
    if (spec.threads() > 0) return spec.threads();
    if (std::getenv("TESSERA_NUM_THREADS") || world.local_size() == 1) return ThreadPool::default_threads();
    return std::max(1, int(std::thread::hardware_concurrency()) / world.local_size());
}

/// Rank 0 alone writes the run folder: created, and the effective recipe saved, once every check
/// has passed.
void create_run_folder(const recipe::RunSpec& spec) {
    const fs::path& dir = spec.train.run_dir;
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec)
        throw user_error(dir.string(), "cannot create the run folder: " + ec.message(),
                         "set run.out_dir to a writable folder");
    std::ofstream(dir / "recipe.toml") << recipe::to_toml(spec.recipe.effective) << "\n";
}

template <class B>
Outcome train_on(const recipe::RunSpec& spec, const Args& args, parallel::Communicator& world, int threads) {
    const bool root = world.is_root();
    auto ctx = make_context<B>(threads, spec.precision(), spec.where("model", "precision"), world.local_rank());
    std::unique_ptr<parallel::Communicator> gpus;  // several GPUs: one per process, gradients through NCCL
    if (B::has_device_memory && world.size() > 1) gpus = gpu_world(world);
    parallel::Communicator& comm = gpus ? *gpus : world;
    auto net = make_network<B>(spec.arch(), spec.num_classes, spec.info.channels);
    net->init(spec.seed(), {spec.zero_init_residual()});
    auto optimizer = spec.optimizer();
    auto scheduler = spec.scheduler();
    auto loggers = spec.loggers();
    train::TrainConfig config = spec.train;
    config.comm = &comm;
    config.lr_scale = spec.lr_scale(world.size());
    config.stop = &stop_requested;
    if (args.value("stop-after-steps")) config.stop_after_steps = args.integer("stop-after-steps", 0);
    train::Trainer<B> trainer(*ctx, *net, *spec.data, *optimizer, *scheduler, loggers, config);
    if (trainer.steps_per_epoch() < 1)
        throw user_error(spec.recipe.file.string(),
                         "the training data has fewer images than one batch (" + std::to_string(config.batch_size) +
                             (world.size() > 1 ? " per process" : "") + ")",
                         "lower data.batch_size");
    if (root && comm.size() > 1)
        std::printf(
            "data parallel: %d processes (%s), batch %d each, global batch %d, %d threads each, gradients all-reduced "
            "%s%s\n",
            comm.size(), comm.name().c_str(), config.batch_size, config.batch_size * comm.size(), threads,
            comm.concurrent() || comm.device_memory() ? "during backward" : "after backward",
            config.lr_scale != 1 ? (", rates scaled x" + shortest_decimal(config.lr_scale) + " (linear)").c_str() : "");
    Outcome outcome;
    if (const auto from = checkpoint_to_resume(args, config.run_dir, world)) {
        trainer.resume(*from);
        if (root) train::RunFolder(config.run_dir).refresh_names();
        if (root)
            std::printf("resuming from %s: epoch %d, step %lld of %lld\n",
                        train::RunFolder::display_name(*from).string().c_str(), trainer.progress().epoch,
                        (long long)(trainer.progress().batch / config.accumulate),
                        (long long)trainer.steps_per_epoch());
        if (trainer.progress().epoch > config.epochs) {
            if (root)
                std::printf(
                    "the run has done all of its %d epochs; raise train.epochs to train on (the schedule then "
                    "changes), or start over with --fresh\n",
                    config.epochs);
            outcome.finished_before = true;
            return outcome;
        }
    }
    // Everything is checked: the recipe, its plugins, the data, the model, the checkpoint.
    if (root) create_run_folder(spec);
    plugin::RunInfo about;
    about.name = spec.recipe.run.text("name");
    about.run_dir = config.run_dir.string();
    about.arch = net->arch();
    about.epochs = config.epochs;
    about.batch_size = config.batch_size;
    about.steps_per_epoch = trainer.steps_per_epoch();
    about.parameters = std::int64_t(net->params().values.size());
    about.first_epoch = trainer.progress().epoch;
    about.first_step =
        std::int64_t(about.first_epoch - 1) * about.steps_per_epoch + trainer.progress().batch / config.accumulate;
    about.recipe = recipe::to_toml(spec.recipe.effective);
    about.has_ema = config.ema_decay > 0;
    about.device = B::name;
    about.kernels = B::kernels(*ctx);
    if (spec.precision() != "fp32")
        about.kernels += ", " + spec.precision() + (spec.precision() == "tf32" ? "" : " mixed precision");
    if (root)
        for (auto& l : loggers) l->on_run_begin(about);
    std::signal(SIGINT, request_stop);
    std::signal(SIGTERM, request_stop);
    outcome.last = trainer.fit();
    std::signal(SIGINT, SIG_DFL);
    std::signal(SIGTERM, SIG_DFL);
    if (root)
        for (auto& l : loggers) l->on_run_end();
    outcome.interrupted = trainer.interrupted();
    outcome.reached_target = trainer.reached_target();
    outcome.stopped_at = trainer.progress();
    return outcome;
}

/// The command that continues this run: its recipe and every --set, since the overrides are part of
/// what the run is and a resume without them would be refused or train another run.
std::string resume_command(const Args& args) {
    auto quoted = [](const std::string& word) {
        if (!word.empty() && word.find_first_not_of("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                                                    "_-+=.,/:@%") == std::string::npos)
            return word;
        std::string out = "'";
        for (char c : word) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
        return out + "'";
    };
    std::string command = quoted(args.positional()[0]);
    for (const std::string& value : args.values("set")) command += " --set " + quoted(value);
    return command;
}

}  // namespace

int train(const std::vector<std::string>& raw) {
    Args args(raw, {"fresh"}, {"threads", "resume", "stop-after-steps"}, {"set"});
    if (args.positional().size() != 1)
        throw user_error("runner train", "expected one recipe file", "e.g. runner recipes/quickstart.toml");
    const auto start = std::chrono::steady_clock::now();
    const World world;
    const bool root = world->is_root();
    const recipe::RunSpec spec = recipe::open_run(args.positional()[0], args.values("set"));
    const int threads = threads_per_process(args, spec, *world);
    Outcome end;
    on_device(spec.device(), spec.where("train", "device"), [&]<class B>() {
        end = train_on<B>(spec, args, *world, threads);
        return 0;
    });
    if (!root || end.finished_before) return 0;
    if (end.reached_target)
        std::printf("reached the target top-1 %.4f at epoch %d: training stops here\n", spec.train.target_top1,
                    end.last.epoch);
    if (end.interrupted) {
        std::printf("%s at epoch %d, step %lld: saved %s; resume with: runner %s\n",
                    stop_signal ? (stop_signal == SIGINT ? "interrupted (SIGINT)" : "interrupted (SIGTERM)")
                                : "stopped as asked",
                    end.stopped_at.epoch, (long long)(end.stopped_at.batch / spec.train.accumulate),
                    (spec.train.run_dir / "last.safetensors").string().c_str(), resume_command(args).c_str());
        return stop_signal ? 128 + int(stop_signal) : 0;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    std::printf("final: epoch=%d val_top1=%.4f val_top5=%.4f val_loss=%.4f%s time_s=%.1f\n", end.last.epoch,
                end.last.val_top1, end.last.val_top5, end.last.val_loss,
                end.last.has_ema ? (" ema_val_top1=" + std::to_string(end.last.ema_val_top1)).c_str() : "", seconds);
    return 0;
}

}  // namespace tessera::runner
