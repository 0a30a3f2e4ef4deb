#pragma once
// Trainer: the training loop. Next batch, forward, loss, backward, step, log; validate every epoch;
// save the weights. Everything it uses arrives from outside: the network, the plugins, the context.
// Data parallel when given a communicator of more than one rank: each rank trains on its shard of
// every epoch, gradients are averaged over the ranks in buckets overlapped with backward, metrics
// are summed so that each image counts once, and rank 0 alone logs and saves.
//
// One optimizer step: `accumulate` batches, each mixed (mixup / cutmix, if asked), forward, loss,
// backward, their gradients adding up (the last batch's backward all-reduces them); then clipping of
// the gradients' norm, the optimizer's step and the update of the weights' moving average.
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/strings.hpp"
#include "tessera/core/json.hpp"
#include "tessera/dist/gradient_reducer.hpp"
#ifdef TESSERA_WITH_NCCL
#include "tessera/dist/nccl.hpp"
#endif
#include "tessera/models/network.hpp"
#include "tessera/plugin/api.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/ema.hpp"
#include "tessera/train/loss_scale.hpp"
#include "tessera/train/metrics.hpp"
#include "tessera/train/mix.hpp"

namespace tessera::train {

struct TrainConfig {
    int epochs = 1;
    int batch_size = 128;
    float label_smoothing = 0;
    std::uint64_t seed = 0;
    int checkpoint_every = 1;  // epochs
    std::filesystem::path run_dir;
    dist::Communicator* comm = nullptr;  // null or a world of one: this process alone
    bool sync_batchnorm = false;         // BatchNorm statistics over every rank's batch
    std::size_t bucket_bytes = std::size_t(25) << 20;  // gradients all-reduced together, as DDP's default
    double lr_scale = 1;                 // multiplies the scheduler's rates (linear scaling with the global batch)
    double checkpoint_minutes = 0;       // also save every so many minutes within an epoch (0: at epoch ends only)
    const std::atomic<bool>* stop = nullptr;  // set (by a signal handler) to stop after the current step and save
    std::int64_t stop_after_steps = 0;   // stop as if interrupted once this many steps are done (0: never)
    int accumulate = 1;                  // batches whose gradients add up to one optimizer step
    double grad_clip = 0;                // clip the gradients' global L2 norm to this, as clip_grad_norm_ (0: never)
    double ema_decay = 0;                // keep a moving average of the weights with this decay per step (0: none)
    MixConfig mix;                       // mixup and cutmix
    double target_top1 = 0;              // stop once validation top-1 (of the weights or their average) reaches it (0: never)
    int keep_epochs = 0;                 // also keep the weights of the last so many epochs, as epoch_<N>.safetensors
    bool stop_on_save_failure = true;    // a checkpoint that cannot be written stops the run (false: warn, go on)
    int max_bad_steps = 10;              // stop after so many steps in a row with gradients not finite (0: never)
    LossScaleConfig loss_scale;          // fp16: the loss's gradient is scaled up for backward, the weights' down after
    // Called with each step's gradients (averaged over the ranks) before they are checked and used:
    // for fault injection in tests, and for debugging. On a GPU they are device memory.
    std::function<void(std::int64_t step, float* grads, std::size_t count)> on_gradients;
};

/// Where training stands: the next step is batch `batch` of epoch `epoch` (from 1), with `meter` the
/// figures of the epoch's steps so far.
struct Progress {
    int epoch = 1;
    std::int64_t batch = 0;  // batches of the epoch done: optimizer steps times config.accumulate
    Meter meter;
    double best_top1 = -1;
};

struct Evaluation {
    double loss = 0, top1 = 0, top5 = 0;
};

/// The trainable parameters as the optimizer plugins see them: the working copy, on its device.
template <class B>
plugin::Parameters optimizer_view(models::Network<B>& net, typename B::Context& ctx) {
    const auto memory = net.working();
    plugin::Parameters p{memory.values, memory.grads, net.params().values.size(), {}, B::name, B::stream(ctx)};
    for (auto& e : net.params().params) p.tensors.push_back({e.name, layers::role_name(e.role), e.offset, e.size});
    return p;
}

template <class B>
class Trainer {
public:
    using Context = typename B::Context;

    Trainer(Context& ctx, models::Network<B>& net, plugin::DataSource& data, plugin::Optimizer& optimizer,
            const plugin::Scheduler& scheduler, std::vector<std::shared_ptr<plugin::Logger>> loggers, TrainConfig config)
        : ctx_(ctx), net_(net), data_(data), optimizer_(optimizer), scheduler_(scheduler), loggers_(std::move(loggers)),
          config_(std::move(config)), info_(data.info()) {
        for (std::size_t c = 0; c < info_.mean.size(); ++c) {
            mean_.push_back(float(info_.mean[c]));
            inv_std_.push_back(float(1.0 / info_.std[c]));
        }
        if (config_.accumulate < 1) throw user_error("[train] accumulate", "must be at least 1");
        if (config_.grad_clip < 0) throw user_error("[train] grad_clip", "must not be negative", "0 turns clipping off");
        if (config_.ema_decay < 0 || config_.ema_decay >= 1)
            throw user_error("[train] ema", "the decay must be in [0, 1)", "0 turns the average off; 0.9998 is usual for ImageNet");
        check(config_.mix, "[train]");
        scaler_ = LossScaler(config_.loss_scale);
        if (config_.ema_decay > 0) ema_ = std::make_unique<WeightAverage<B>>(ctx_, net_, config_.ema_decay);
        if (distributed()) {
            reducer_ = make_reducer();
            ctx_.gradient_hook = reducer_.get();
            if (config_.sync_batchnorm) ctx_.batchnorm_group = config_.comm;
            // Every rank starts from rank 0's weights and statistics.
            auto host = net_.params().host();
            config_.comm->broadcast(host.values, net_.params().values.size() * sizeof(float), 0);
            config_.comm->broadcast(host.buffers, net_.params().buffers.size() * sizeof(float), 0);
            net_.upload();
            if (ema_) ema_->capture();
        }
    }

    ~Trainer() {
        ctx_.gradient_hook = nullptr;
        ctx_.batchnorm_group = nullptr;
    }

    std::int64_t steps_per_epoch() const {
        return data_.num_batches(plugin::Split::train, plan(1, plugin::Split::train)) / config_.accumulate;
    }

    /// Trains until the configured epochs are done, or until asked to stop (config.stop,
    /// stop_after_steps), saving last.safetensors and its training state at each epoch's end (and
    /// every checkpoint_minutes), best.safetensors when validation top-1 improves; or until the
    /// target accuracy is reached. Returns the last epoch's figures; interrupted() says whether it
    /// stopped early, reached_target() whether the target ended it.
    plugin::EpochStats fit() {
        const std::int64_t steps = steps_per_epoch(), batches = steps * config_.accumulate;
        plugin::Clock clock{0, steps * config_.epochs, steps};
        const plugin::Parameters params = optimizer_view(net_, ctx_);
        plugin::EpochStats stats;
        auto last_save = std::chrono::steady_clock::now();
        for (int epoch = progress_.epoch; epoch <= config_.epochs; ++epoch) {
            const auto start = std::chrono::steady_clock::now();
            Meter meter = epoch == progress_.epoch ? progress_.meter : Meter{};
            plugin::EpochPlan p = plan(epoch, plugin::Split::train);
            p.first_batch = epoch == progress_.epoch ? progress_.batch : 0;
            data_.start_epoch(plugin::Split::train, p);
            std::int64_t batch = p.first_batch;
            clock.step = (epoch - 1) * steps + batch / config_.accumulate;
            while (batch < batches) {
                const plugin::StepRates rates{scheduler_.lr(clock) * config_.lr_scale, scheduler_.momentum(clock)};
                meter.add(optimizer_step(epoch, batch, rates, params));
                ++clock.step;
                log_step(epoch, batch, p.first_batch, meter, rates.lr, start);
                stats.lr = rates.lr;
                const auto [stop, save_now] = decide(clock.step, last_save);
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
            while (data_.next(batch_)) {}  // the batches too few for one more step of `accumulate`
            stats = finish_epoch(epoch, start, meter, (batch - p.first_batch) * config_.batch_size * world_size(), stats.lr, clock.step);
            if (is_root())
                for (auto& l : loggers_) l->on_epoch(stats);
            reached_target_ = config_.target_top1 > 0 && std::max(stats.val_top1, stats.ema_val_top1) >= config_.target_top1;
            if (epoch % config_.checkpoint_every == 0 || epoch == config_.epochs || interrupted_ || reached_target_) {
                save_checkpoint(progress_);
                last_save = std::chrono::steady_clock::now();
            }
            keep_epoch_weights(epoch);
            if (interrupted_ || reached_target_) return stats;
        }
        return stats;
    }

    /// Continues from a checkpoint written by fit(): weights, statistics, optimizer state and where
    /// training stood. Throws a user error for a checkpoint of another network or a damaged one.
    void resume(const std::filesystem::path& weights) {
        const auto state_path = state_file(weights);
        if (!std::filesystem::exists(state_path))
            throw user_error(weights.string(), "has no training state beside it (" + state_path.filename().string() + ")",
                             "resume from a run's last.safetensors, or start over with --fresh");
        const auto meta = checkpoint::read_metadata(weights);
        const checkpoint::TrainingState state = checkpoint::load_state(state_path);
        for (const char* key : {"epoch", "batch", "step"})
            if (!meta.count(key) || !state.metadata.count(key) || meta.at(key) != state.metadata.at(key))
                throw user_error(state_path.string(), "does not belong to " + weights.filename().string() +
                                                          " (their epoch, batch or step differ): a save was interrupted",
                                 "start over with --fresh, or resume from a copy that is whole");
        if (meta.count("arch") && meta.at("arch") != net_.arch())
            throw user_error(weights.string(), "holds a " + meta.at("arch") + ", but the recipe builds a " + net_.arch(),
                             "resume with the recipe that made it, or start over with --fresh");
        // The average saved beside the weights; where there is none of the same step (the run had
        // no average before), the average starts from the weights.
        bool average_loaded = false;
        if (ema_ && std::filesystem::exists(ema_file(weights))) {
            const auto saved = checkpoint::read_metadata(ema_file(weights));
            if (saved.count("step") && saved.at("step") == meta.at("step")) {
                checkpoint::load(net_.params(), ema_file(weights));
                net_.upload();
                ema_->capture();
                average_loaded = true;
            }
        }
        checkpoint::load(net_.params(), weights);
        net_.upload();
        if (ema_ && !average_loaded) ema_->capture();
        optimizer_.load_state(state.tensors);
        const auto number = [&](const char* key) { return std::stod(state.metadata.at(key)); };
        progress_ = {int(number("epoch")), std::int64_t(number("batch")), Meter{}, number("best_top1")};
        if (scaler_.dynamic() && state.metadata.count("loss_scale"))
            scaler_.restore(number("loss_scale"), std::int64_t(number("loss_scale_good_steps")));
        steps_done_ = std::int64_t(progress_.epoch - 1) * steps_per_epoch() + progress_.batch / config_.accumulate;
        if (progress_.batch % config_.accumulate != 0)
            throw user_error(weights.string(), "was saved after batch " + std::to_string(progress_.batch) +
                                                   " of its epoch, which is no whole step of train.accumulate = " +
                                                   std::to_string(config_.accumulate),
                             "resume with the accumulate the run was started with");
        if (is_root())
            progress_.meter = {number("loss_sum"), std::int64_t(number("top1")), std::int64_t(number("top5")),
                               std::int64_t(number("count"))};
    }

    static std::filesystem::path state_file(const std::filesystem::path& weights) {
        return weights.parent_path() / (weights.stem().string() + ".state.safetensors");
    }
    /// The weights' moving average saved with `weights`: a checkpoint that eval and predict take too.
    static std::filesystem::path ema_file(const std::filesystem::path& weights) {
        return weights.parent_path() / (weights.stem().string() + ".ema.safetensors");
    }

    const Progress& progress() const { return progress_; }
    bool interrupted() const { return interrupted_; }
    bool reached_target() const { return reached_target_; }
    double loss_scale() const { return scaler_.scale(); }

    /// One optimizer step on `accumulate` batches from the data source, from batch `batch` of `epoch`
    /// on (advanced past them).
    Meter optimizer_step(int epoch, std::int64_t& batch, const plugin::StepRates& rates, const plugin::Parameters& params) {
        net_.zero_grad(ctx_);
        keep_statistics();
        Meter step;
        for (int k = 0; k < config_.accumulate; ++k, ++batch) {
            if (!data_.next(batch_)) throw internal_error("trainer", "the data source gave fewer batches than num_batches() said");
            Rng mixing = Rng::derive(config_.seed ^ 0x6D6978ull, std::uint64_t(epoch), std::uint64_t(batch));
            step.add(accumulate_gradients(config_.mix, mixing, k + 1 == config_.accumulate));
        }
        apply_gradients(rates, params);
        return step;
    }

    /// One optimizer step on the batch already in batch() alone, unmixed (the learning-rate finder).
    Meter train_step(const plugin::StepRates& rates, const plugin::Parameters& params) {
        net_.zero_grad(ctx_);
        Rng unused;
        keep_statistics();
        const Meter step = accumulate_gradients(MixConfig{}, unused, true);
        apply_gradients(rates, params);
        return step;
    }

    /// Loss (without label smoothing), top-1 and top-5 on the validation split, in eval mode.
    Evaluation evaluate() {
        Meter meter;
        data_.start_epoch(plugin::Split::val, plan(0, plugin::Split::val));
        ctx_.training = false;
        while (data_.next(batch_)) {
            ctx_.arena.reset();
            const Tensor logits = net_.forward(ctx_, input(batch_));
            const auto loss = B::softmax_cross_entropy(ctx_, logits, batch_.labels.data(), 0.f, nullptr);
            meter.add(loss.loss, loss.top1, loss.top5, batch_.count);
        }
        ctx_.training = true;
        reduce(meter);
        return {meter.loss(), meter.top1_rate(), meter.top5_rate()};
    }

    plugin::Batch& batch() { return batch_; }

private:
    bool distributed() const { return config_.comm && config_.comm->size() > 1; }

    // Forward and backward on batch_, adding its share of the step's gradient: the loss is the mean
    // over the step's images, mixed batches weigh their two labels. `last`: the step's last batch,
    // whose backward all-reduces the summed gradients.
    Meter accumulate_gradients(const MixConfig& mix, Rng& mixing_rng, bool last) {
        ctx_.arena.reset();
        ctx_.grads.reset();
        ctx_.training = true;
        const Mixing mixing = mix_batch(batch_, mix, mixing_rng);
        const Tensor logits = net_.forward(ctx_, input(batch_));
        const Tensor dlogits = ctx_.arena.tensor(logits.shape);
        // Each batch's share of the step's loss, times the loss scale (fp16).
        const float share = float(scaler_.scale() / config_.accumulate), lam = mixing.lam;
        auto loss = B::softmax_cross_entropy(ctx_, logits, batch_.labels.data(), config_.label_smoothing, dlogits.data);
        if (mixing.active) {
            const Tensor dpartner = ctx_.arena.tensor(logits.shape);
            const auto partner = B::softmax_cross_entropy(ctx_, logits, mixing.partner.data(), config_.label_smoothing, dpartner.data);
            B::axpby(ctx_, share * (1 - lam), dpartner.data, share * lam, dlogits.data, dlogits.size());
            loss = {lam * loss.loss + (1 - lam) * partner.loss, lam >= 0.5f ? loss.top1 : partner.top1, lam >= 0.5f ? loss.top5 : partner.top5};
        } else if (share != 1.f) {
            B::scale(ctx_, dlogits.data, dlogits.size(), share);
        }
        ctx_.gradient_hook = last ? reducer_.get() : nullptr;  // DDP's no_sync() for the batches before
        if (last && reducer_) reducer_->begin_step();
        net_.backward(ctx_, dlogits);
        Meter m;
        m.add(loss.loss, loss.top1, loss.top5, batch_.count);
        return m;
    }

    // The summed gradients, averaged over the ranks, unscaled, clipped: the optimizer's step, then the
    // average's. Gradients that are not finite (fp16 overflow, a diverging loss, a bad batch) skip the
    // step: the weights stay, BatchNorm's statistics go back to what they were before it, a dynamic
    // loss scale halves; too many such steps in a row stop the run, whose last checkpoint is from
    // before them. Every rank sees the same gradients, so every rank decides the same.
    void apply_gradients(const plugin::StepRates& rates, const plugin::Parameters& params) {
        if (reducer_) reducer_->finish();
        float* grads = net_.working().grads;
        if (scaler_.active()) B::scale(ctx_, grads, params.count, float(1 / scaler_.scale()));
        if (config_.on_gradients) config_.on_gradients(steps_done_, grads, params.count);
        ++steps_done_;
        const double norm = std::sqrt(B::sum_squares(ctx_, grads, params.count));
        scaler_.update(std::isfinite(norm));
        if (!std::isfinite(norm)) return skip_step();
        bad_steps_in_row_ = 0;
        if (config_.grad_clip > 0 && norm > config_.grad_clip)
            B::scale(ctx_, grads, params.count, float(config_.grad_clip / (norm + 1e-6)));
        optimizer_.step(params, rates);
        if (ema_) ema_->update();
    }

    void skip_step() {
        const auto w = net_.working();
        B::axpby(ctx_, 1, saved_statistics_, 0, w.buffers, net_.params().buffers.size());
        ++skipped_in_epoch_;
        // Under dynamic loss scaling an overflow is routine, and lowers the scale; only once the scale
        // has fallen below 1 is the loss itself not finite, and the step a bad one.
        if (scaler_.dynamic() && scaler_.scale() >= 1) {
            if (is_root())
                std::fprintf(stderr, "note: step %lld skipped: its gradients overflowed fp16; the loss scale is now %g\n",
                             (long long)steps_done_, scaler_.scale());
            return;
        }
        ++bad_steps_in_row_;
        if (is_root())
            std::fprintf(stderr, "warning: step %lld skipped: its gradients are not finite (the loss diverged, or a batch was bad)\n",
                         (long long)steps_done_);
        if (config_.max_bad_steps > 0 && bad_steps_in_row_ >= config_.max_bad_steps)
            throw user_error("training", "the gradients were not finite for " + std::to_string(bad_steps_in_row_) +
                                             " steps in a row (up to step " + std::to_string(steps_done_) +
                                             "): stopped; the last checkpoint is from before them",
                             "lower the learning rate (runner lr-find) or set train.grad_clip, then resume from last.safetensors");
    }

    // BatchNorm's running statistics before a step, for skip_step() to put back.
    void keep_statistics() {
        const std::size_t n = net_.params().buffers.size();
        if (!saved_statistics_) saved_statistics_ = statistics_storage_.allocate_floats(n);
        B::axpby(ctx_, 1, net_.working().buffers, 0, saved_statistics_, n);
    }

    // Validation of the weights (and of their average), the epoch's figures, best.safetensors.
    plugin::EpochStats finish_epoch(int epoch, std::chrono::steady_clock::time_point start, Meter meter, std::int64_t trained_here,
                                    double lr, std::int64_t global_step) {
        reduce(meter);
        const double seconds = seconds_since(start);
        const std::int64_t bad_train = data_.bad_samples();
        const Evaluation val = evaluate();
        plugin::EpochStats stats{epoch, config_.epochs, lr, meter.loss(), meter.top1_rate(), val.loss, val.top1, val.top5,
                                 double(trained_here) / seconds, 0, bad_train + data_.bad_samples()};
        if (ema_) {
            const auto swapped = ema_->swapped_in();
            const Evaluation average = evaluate();
            stats.has_ema = true;
            stats.ema_val_loss = average.loss, stats.ema_val_top1 = average.top1, stats.ema_val_top5 = average.top5;
        }
        stats.time_s = seconds_since(start);
        stats.global_step = global_step;
        stats.skipped_steps = std::exchange(skipped_in_epoch_, 0);
        const bool best = val.top1 > progress_.best_top1;
        progress_ = {epoch + 1, 0, Meter{}, std::max(progress_.best_top1, val.top1)};
        if (is_root() && best) guarded_save("best.safetensors", [&] { save_weights(config_.run_dir / "best.safetensors", progress_); });
        return stats;
    }

    // Host gradients go through a thread of their own (MPI); device gradients through NCCL on a
    // stream of their own.
    std::unique_ptr<dist::GradientAverager> make_reducer() {
        const auto memory = net_.working();
        const std::size_t count = net_.params().grads.size();
        if constexpr (B::has_device_memory) {
#ifdef TESSERA_WITH_NCCL
            if (config_.comm->device_memory())
                return std::make_unique<dist::DeviceGradientReducer>(*config_.comm, memory.grads, count, config_.bucket_bytes,
                                                                     B::stream(ctx_));
#endif
            throw user_error("[train] device = \"cuda\"", "training on several GPUs needs NCCL, and this build has none",
                             "install NCCL next to nvcc and rebuild, or run a single GPU process");
        } else {
            return std::make_unique<dist::GradientReducer>(*config_.comm, memory.grads, count, config_.bucket_bytes,
                                                           config_.comm->concurrent());
        }
    }
    bool is_root() const { return !config_.comm || config_.comm->is_root(); }
    int world_size() const { return config_.comm ? config_.comm->size() : 1; }

    // Sums over the ranks, so that every image counts once.
    void reduce(Meter& m) const {
        if (!distributed()) return;
        double sums[4] = {m.loss_sum, double(m.top1), double(m.top5), double(m.count)};
        config_.comm->all_reduce_sum(sums, 4);
        m = {sums[0], std::int64_t(sums[1]), std::int64_t(sums[2]), std::int64_t(sums[3])};
    }

    plugin::EpochPlan plan(int epoch, plugin::Split split) const {
        plugin::EpochPlan p;
        p.epoch = epoch;
        p.seed = config_.seed;
        p.batch_size = config_.batch_size;
        p.rank = config_.comm ? config_.comm->rank() : 0;
        p.world_size = world_size();
        p.drop_last = split == plugin::Split::train;  // full batches keep BatchNorm's statistics sound
        return p;
    }

    Tensor input(const plugin::Batch& b) {  // (N, H, W, C), normalised
        Tensor x = ctx_.arena.tensor({b.count, b.height, b.width, b.channels}, ctx_.activations);
        B::normalize_images(ctx_, b.pixels.data(), mean_.data(), inv_std_.data(), x);
        return x;
    }

    // Rank 0's running figures; images per second for all ranks (each trains as many), counted from
    // where this process began the epoch.
    void log_step(int epoch, std::int64_t batch, std::int64_t first_batch, const Meter& meter, double lr,
                  std::chrono::steady_clock::time_point start) {
        if (!is_root()) return;
        const std::int64_t steps = steps_per_epoch(), step = batch / config_.accumulate;
        const double elapsed = seconds_since(start), done_here = double(batch - first_batch) / config_.accumulate;
        const plugin::StepStats s{epoch, step, steps, meter.loss(), meter.top1_rate(), lr,
                                  double(batch - first_batch) * config_.batch_size * world_size() / elapsed, elapsed,
                                  elapsed / done_here * double(steps - step), std::int64_t(epoch - 1) * steps + step};
        for (auto& l : loggers_) l->on_step(s);
    }

    // Whether to stop now, and whether a timed checkpoint is due: rank 0's clock and every rank's
    // stop request decide for all ranks together.
    std::pair<bool, bool> decide(std::int64_t step, std::chrono::steady_clock::time_point last_save) const {
        double votes[2] = {(config_.stop && config_.stop->load()) || (config_.stop_after_steps && step >= config_.stop_after_steps) ? 1.0 : 0.0,
                           is_root() && config_.checkpoint_minutes > 0 && seconds_since(last_save) >= 60 * config_.checkpoint_minutes ? 1.0 : 0.0};
        if (distributed()) config_.comm->all_reduce_sum(votes, 2);
        return {votes[0] > 0, votes[1] > 0};
    }

    // last.safetensors and last.state.safetensors, for resume(): the state first, each written
    // whole under a temporary name, so that a crash leaves the previous pair or a mismatch that
    // resume() refuses. Rank 0 writes; every rank takes part in summing the epoch's figures.
    // The three files are written whole under temporary names, then renamed together.
    void save_checkpoint(const Progress& at) {
        Meter meter = at.meter;
        reduce(meter);
        if (!is_root()) return;
        checkpoint::TrainingState state{metadata(at), optimizer_.state()};
        state.metadata["loss_sum"] = std::to_string(meter.loss_sum);
        state.metadata["top1"] = std::to_string(meter.top1);
        state.metadata["top5"] = std::to_string(meter.top5);
        state.metadata["count"] = std::to_string(meter.count);
        state.metadata["best_top1"] = std::to_string(at.best_top1);
        if (scaler_.dynamic()) {
            char scale[32];
            std::snprintf(scale, sizeof scale, "%.17g", scaler_.scale());
            state.metadata["loss_scale"] = scale;
            state.metadata["loss_scale_good_steps"] = std::to_string(scaler_.good_steps());
        }
        guarded_save("the checkpoint", [&] {
            checkpoint::FileSet files;
            checkpoint::save_state(state, state_file(config_.run_dir / "last.safetensors"), &files);
            if (ema_) {
                const auto swapped = ema_->swapped_in();
                save_weights(ema_file(config_.run_dir / "last.safetensors"), at, &files);
            }
            save_weights(config_.run_dir / "last.safetensors", at, &files);
            files.commit();
        });
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
            std::fprintf(stderr, "warning: could not save %s: %s\n  the previous files are as they were; training goes on "
                                 "(checkpoint.on_failure = \"continue\")\n", what, e.what());
        }
    }

    // epoch_<N>.safetensors for the last keep_epochs epochs; older ones are removed.
    void keep_epoch_weights(int epoch) {
        if (config_.keep_epochs < 1 || !is_root()) return;
        auto file = [&](int e) { return config_.run_dir / ("epoch_" + std::to_string(e) + ".safetensors"); };
        guarded_save("the epoch's weights", [&] { save_weights(file(epoch), progress_); });
        std::error_code ignored;
        std::filesystem::remove(file(epoch - config_.keep_epochs), ignored);
    }

    void save_weights(const std::filesystem::path& path, const Progress& at, checkpoint::FileSet* files = nullptr) {
        net_.download();
        checkpoint::save(net_.params(), path, metadata(at), files);
    }

    // Where training stood, and what `runner predict` needs to use the weights alone: the input
    // size, its normalisation, the validation resize and the class names.
    std::map<std::string, std::string> metadata(const Progress& at) const {
        auto numbers = [](const std::vector<double>& v) {
            std::string s;
            char buf[32];
            for (double x : v) {
                std::snprintf(buf, sizeof buf, "%.9g", x);  // exact for the floats they become
                if (!s.empty()) s += ',';
                s += buf;
            }
            return s;
        };
        std::map<std::string, std::string> m = {
            {"arch", net_.arch()}, {"epoch", std::to_string(at.epoch)}, {"batch", std::to_string(at.batch)},
            {"step", std::to_string(std::int64_t(at.epoch - 1) * steps_per_epoch() + at.batch / config_.accumulate)},
            {"input_height", std::to_string(info_.height)}, {"input_width", std::to_string(info_.width)},
            {"val_resize", std::to_string(info_.val_resize)}, {"mean", numbers(info_.mean)}, {"std", numbers(info_.std)}};
        if (!info_.class_names.empty()) {
            std::vector<std::string> quoted;
            for (auto& n : info_.class_names) quoted.push_back(json::quote(n));
            std::string& names = m["class_names"];
            names = "[";
            names += join(quoted);
            names += ']';
        }
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
    plugin::DatasetInfo info_;
    std::vector<float> mean_, inv_std_;
    plugin::Batch batch_;
    std::unique_ptr<dist::GradientAverager> reducer_;
    std::unique_ptr<WeightAverage<B>> ema_;
    std::remove_cvref_t<decltype(std::declval<Context&>().arena)> statistics_storage_;  // the backend's memory
    float* saved_statistics_ = nullptr;  // BatchNorm's statistics before the current step
    std::int64_t steps_done_ = 0, skipped_in_epoch_ = 0;
    int bad_steps_in_row_ = 0;
    LossScaler scaler_;
    Progress progress_;
    bool interrupted_ = false, reached_target_ = false;
};

}  // namespace tessera::train
