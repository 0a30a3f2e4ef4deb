#pragma once
// Trainer: the loop. Epochs of optimizer steps (train/step.hpp) at the scheduler's rates, the
// loggers told of each, validation at each epoch's end (train/evaluate.hpp), checkpoints committed
// to the run folder (train/run_folder.hpp), stop requests agreed by every rank.
//
// Data parallel when given a communicator of more than one rank: each rank trains on its shard of
// every epoch, metrics are summed so that each image counts once, rank 0 alone logs and saves, and
// rank 0 alone reads a checkpoint to resume from, sending what it holds to the others.
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "tessera/models/network.hpp"
#include "tessera/plugin/api.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/config.hpp"
#include "tessera/train/evaluate.hpp"
#include "tessera/train/run_folder.hpp"
#include "tessera/train/step.hpp"

namespace tessera::train {

template <Backend B>
class Trainer {
public:
    using Context = typename B::Context;

    Trainer(Context& ctx, models::Network<B>& net, plugin::DataSource& data, plugin::Optimizer& optimizer,
            const plugin::Scheduler& scheduler, std::vector<std::shared_ptr<plugin::Logger>> loggers,
            TrainConfig config)
        : ctx_(ctx), net_(net), data_(data), optimizer_(optimizer), scheduler_(scheduler), loggers_(std::move(loggers)),
          config_(std::move(config)), step_(ctx, net, optimizer, data.info(), config_), folder_(config_.run_dir) {}

    std::int64_t steps_per_epoch() const {
        return data_.num_batches(plugin::Split::train, plan(1)) / config_.accumulate;
    }

    /// Trains until the configured epochs are done, or until asked to stop (config.stop,
    /// stop_after_steps), saving a checkpoint at each epoch's end (and every checkpoint_minutes),
    /// best.safetensors when validation top-1 improves; or until the target accuracy is reached.
    /// Returns the last epoch's figures; interrupted() says whether it stopped early,
    /// reached_target() whether the target ended it.
    plugin::EpochStats fit() {
        const std::int64_t steps = steps_per_epoch(), batches = steps * config_.accumulate;
        plugin::Clock clock{0, steps * config_.epochs, steps};
        plugin::EpochStats stats;
        auto last_save = std::chrono::steady_clock::now();
        for (int epoch = progress_.epoch; epoch <= config_.epochs; ++epoch) {
            const auto start = std::chrono::steady_clock::now();
            Meter meter = epoch == progress_.epoch ? progress_.meter : Meter{};
            plugin::EpochPlan p = plan(epoch);
            p.first_batch = epoch == progress_.epoch ? progress_.batch : 0;
            data_.start_epoch(plugin::Split::train, p);
            std::int64_t batch = p.first_batch;
            for (clock.step = (epoch - 1) * steps + batch / config_.accumulate; batch < batches; ++clock.step) {
                const plugin::StepRates rates{scheduler_.lr(clock) * config_.lr_scale, scheduler_.momentum(clock)};
                meter.add(step_.run(data_, epoch, batch, rates));
                log_step(epoch, batch, p.first_batch, meter, rates.lr, start);
                stats.lr = rates.lr;
                const auto [stop, save_now] = decide(clock.step + 1, last_save);
                if ((stop || save_now) && batch < batches) {
                    save_checkpoint({epoch, batch, meter, progress_.best_top1});
                    last_save = std::chrono::steady_clock::now();
                }
                if (stop) {
                    interrupted_ = true;
                    progress_ = {epoch, batch, meter, progress_.best_top1};
                    if (batch < batches) return stats;
                }
            }
            plugin::Batch rest;
            while (data_.next(rest)) {}  // the batches too few for one more step of `accumulate`
            stats = finish_epoch(epoch, start, meter, (batch - p.first_batch) * config_.batch_size * world_size(),
                                 stats.lr, clock.step);
            if (is_root())
                for (auto& l : loggers_) l->on_epoch(stats);
            reached_target_ =
                config_.target_top1 > 0 && std::max(stats.val_top1, stats.ema_val_top1) >= config_.target_top1;
            if (epoch % config_.checkpoint_every == 0 || epoch == config_.epochs || interrupted_ || reached_target_) {
                save_checkpoint(progress_);
                last_save = std::chrono::steady_clock::now();
            }
            keep_epoch_weights(epoch);
            if (interrupted_ || reached_target_) return stats;
        }
        return stats;
    }

    /// Continues from a checkpoint written by fit(): weights, statistics, their average, optimizer
    /// state and where training stood. Every rank calls it; rank 0 alone reads `weights` (the
    /// others' run folders may be elsewhere, or empty) and sends what it holds. A checkpoint of
    /// another network, batch size or number of ranks, or a damaged one, stops every rank with a
    /// user error.
    void resume(const fs::path& weights) {
        std::exception_ptr failure;
        if (is_root()) {
            try {
                load(RunFolder::read(weights));
            } catch (...) {
                failure = std::current_exception();
            }
        }
        int failed = failure ? 1 : 0;
        if (distributed()) config_.comm->broadcast(&failed, sizeof failed, 0);
        if (failure) std::rethrow_exception(failure);
        if (failed) {
            // The launcher ends the whole job when the first rank exits with an error: give rank 0
            // the time to print the message that says why, which is the one the user needs.
            std::this_thread::sleep_for(std::chrono::seconds(2));
            throw user_error("rank " + std::to_string(config_.comm->rank()),
                             "rank 0 could not resume; its message says why");
        }
        share_progress();
        step_.set_steps_done(std::int64_t(progress_.epoch - 1) * steps_per_epoch() +
                             progress_.batch / config_.accumulate);
    }

    const Progress& progress() const { return progress_; }
    bool interrupted() const { return interrupted_; }
    bool reached_target() const { return reached_target_; }
    double loss_scale() { return step_.scaler().scale(); }
    Step<B>& step() { return step_; }

    /// Loss, top-1 and top-5 on the validation split of the model rank 0 holds (and would save).
    Evaluation validate() {
        step_.share_root_statistics();
        return evaluate<B>(ctx_, net_, data_, config_.batch_size, config_.comm);
    }

private:
    bool distributed() const { return step_.distributed(); }
    bool is_root() const { return step_.is_root(); }
    int world_size() const { return config_.comm ? config_.comm->size() : 1; }
    RunShape shape() const { return {net_.arch(), config_.batch_size, world_size(), config_.accumulate}; }
    plugin::EpochPlan plan(int epoch) const {
        return epoch_plan(epoch, plugin::Split::train, config_.batch_size, config_.seed, config_.comm);
    }

    // Rank 0's copy of the checkpoint into the network, its average, the optimizer and the loop.
    void load(const SavedCheckpoint& saved) {
        saved.check_continues(shape());
        WeightAverage<B>* average = step_.average();
        if (average && !saved.average.empty()) {  // else the average starts from the weights
            checkpoint::load(net_.params(), saved.average);
            net_.upload();
            average->capture();
        }
        checkpoint::load(net_.params(), saved.weights);
        net_.upload();
        if (average && saved.average.empty()) average->capture();
        optimizer_.load_state(saved.state.tensors);
        progress_ = saved.progress;
        if (step_.scaler().dynamic() && saved.state.metadata.count("loss_scale"))
            step_.scaler().restore(saved.number("loss_scale"), std::int64_t(saved.number("loss_scale_good_steps")));
    }

    // What rank 0 loaded, on every rank: weights, statistics, average, the optimizer's state, the
    // position, the loss scale. The epoch's figures so far stay rank 0's alone, as they are summed.
    void share_progress() {
        if (!distributed()) return;
        step_.broadcast_from_root();
        LossScaler& scaler = step_.scaler();
        double numbers[5] = {double(progress_.epoch), double(progress_.batch), progress_.best_top1, scaler.scale(),
                             double(scaler.good_steps())};
        config_.comm->broadcast(numbers, sizeof numbers, 0);
        if (!is_root()) {
            progress_ = {int(numbers[0]), std::int64_t(numbers[1]), Meter{}, numbers[2]};
            if (scaler.dynamic()) scaler.restore(numbers[3], std::int64_t(numbers[4]));
        }
        plugin::OptimizerState state = is_root() ? optimizer_.state() : plugin::OptimizerState{};
        parallel::broadcast(*config_.comm, state, 0);
        if (!is_root() && !state.empty()) optimizer_.load_state(state);
    }

    // Validation of the weights (and of their average), the epoch's figures, best.safetensors.
    plugin::EpochStats finish_epoch(int epoch, std::chrono::steady_clock::time_point start, Meter meter,
                                    std::int64_t trained_here, double lr, std::int64_t global_step) {
        reduce(meter, config_.comm);
        const double seconds = seconds_since(start);
        const std::int64_t bad_train = data_.bad_samples();
        const Evaluation val = validate();
        plugin::EpochStats stats{epoch,
                                 config_.epochs,
                                 lr,
                                 meter.loss(),
                                 meter.top1_rate(),
                                 val.loss,
                                 val.top1,
                                 val.top5,
                                 double(trained_here) / seconds,
                                 0,
                                 bad_train + data_.bad_samples()};
        if (WeightAverage<B>* average = step_.average()) {
            const auto swapped = average->swapped_in();
            const Evaluation of_average = validate();
            stats.has_ema = true;
            stats.ema_val_loss = of_average.loss, stats.ema_val_top1 = of_average.top1,
            stats.ema_val_top5 = of_average.top5;
        }
        stats.time_s = seconds_since(start);
        stats.global_step = global_step;
        stats.skipped_steps = step_.take_skipped();
        const bool best = val.top1 > progress_.best_top1;
        progress_ = {epoch + 1, 0, Meter{}, std::max(progress_.best_top1, val.top1)};
        if (is_root() && best)
            guarded_save("best.safetensors",
                         [&] { folder_.save_file("best.safetensors", weights_writer(metadata(progress_))); });
        return stats;
    }

    // Rank 0's running figures; images per second for all ranks (each trains as many), counted from
    // where this process began the epoch.
    void log_step(int epoch, std::int64_t batch, std::int64_t first_batch, const Meter& meter, double lr,
                  std::chrono::steady_clock::time_point start) {
        if (!is_root()) return;
        const std::int64_t steps = steps_per_epoch(), step = batch / config_.accumulate;
        const double elapsed = seconds_since(start), done_here = double(batch - first_batch) / config_.accumulate;
        const plugin::StepStats s{epoch,
                                  step,
                                  steps,
                                  meter.loss(),
                                  meter.top1_rate(),
                                  lr,
                                  double(batch - first_batch) * config_.batch_size * world_size() / elapsed,
                                  elapsed,
                                  elapsed / done_here * double(steps - step),
                                  std::int64_t(epoch - 1) * steps + step};
        for (auto& l : loggers_) l->on_step(s);
    }

    // Whether to stop now, and whether a timed checkpoint is due: rank 0's clock and every rank's
    // stop request decide for all ranks together.
    std::pair<bool, bool> decide(std::int64_t steps_done, std::chrono::steady_clock::time_point last_save) const {
        const bool asked = (config_.stop && config_.stop->load()) ||
                           (config_.stop_after_steps && steps_done >= config_.stop_after_steps);
        double votes[2] = {asked ? 1.0 : 0.0, is_root() && config_.checkpoint_minutes > 0 &&
                                                      seconds_since(last_save) >= 60 * config_.checkpoint_minutes
                                                  ? 1.0
                                                  : 0.0};
        if (distributed()) config_.comm->all_reduce_sum(votes, 2);
        return {votes[0] > 0, votes[1] > 0};
    }

    // A checkpoint set, committed whole by the run folder. Rank 0 writes; every rank takes part in
    // summing the epoch's figures.
    void save_checkpoint(const Progress& at) {
        Meter meter = at.meter;
        reduce(meter, config_.comm);
        if (!is_root()) return;
        const auto weights = metadata(at);
        const checkpoint::TrainingState state = training_state(
            weights, optimizer_.state(), {at.epoch, at.batch, meter, at.best_top1}, shape(), step_.scaler());
        WeightAverage<B>* average = step_.average();
        guarded_save("the checkpoint", [&] {
            folder_.save_checkpoint(
                state, weights_writer(weights),
                [&](const fs::path& path, checkpoint::FileSet* files) {
                    const auto swapped = average->swapped_in();
                    weights_writer(weights)(path, files);
                },
                average != nullptr);
        });
    }

    // Writes the network's weights and statistics, from the backend's memory, with `meta`.
    auto weights_writer(std::map<std::string, std::string> meta) {
        return [this, meta = std::move(meta)](const fs::path& path, checkpoint::FileSet* files) {
            net_.download();
            checkpoint::save(net_.params(), path, meta, files);
        };
    }

    // A save that fails (disk full, a folder that cannot be written) leaves the previous files as
    // they were; the run stops, or goes on with a warning, as [checkpoint] on_failure says.
    template <class Save>
    void guarded_save(const char* what, Save save) {
        try {
            save();
        } catch (const Error& e) {
            if (config_.stop_on_save_failure)
                throw user_error(e.where(), e.message() + ", saving " + what + ": the previous files are as they were",
                                 "free some space or make the run folder writable, then resume");
            std::fprintf(stderr,
                         "warning: could not save %s: %s\n  the previous files are as they were; training goes on "
                         "(checkpoint.on_failure = \"continue\")\n",
                         what, e.what());
        }
    }

    // epoch_<N>.safetensors for the last keep_epochs epochs; older ones are removed.
    void keep_epoch_weights(int epoch) {
        if (config_.keep_epochs < 1 || !is_root()) return;
        auto file = [&](int e) { return "epoch_" + std::to_string(e) + ".safetensors"; };
        guarded_save("the epoch's weights",
                     [&] { folder_.save_file(file(epoch), weights_writer(metadata(progress_))); });
        folder_.remove_file(file(epoch - config_.keep_epochs));
    }

    // What the weights say of themselves: the model, and where training stood.
    std::map<std::string, std::string> metadata(const Progress& at) const {
        auto m = model_metadata(net_.arch(), data_.info());
        m["epoch"] = std::to_string(at.epoch);
        m["batch"] = std::to_string(at.batch);
        m["step"] = std::to_string(std::int64_t(at.epoch - 1) * steps_per_epoch() + at.batch / config_.accumulate);
        return m;
    }

    static double seconds_since(std::chrono::steady_clock::time_point t) {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
    }

    Context& ctx_;
    models::Network<B>& net_;
    plugin::DataSource& data_;
    plugin::Optimizer& optimizer_;
    const plugin::Scheduler& scheduler_;
    std::vector<std::shared_ptr<plugin::Logger>> loggers_;
    TrainConfig config_;
    Step<B> step_;
    RunFolder folder_;
    Progress progress_;
    bool interrupted_ = false, reached_target_ = false;
};

}  // namespace tessera::train
