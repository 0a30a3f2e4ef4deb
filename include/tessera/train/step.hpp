#pragma once
// Step: one optimizer step, as llm.c's training step reads: next batch, forward, loss, backward,
// update. `accumulate` batches, each mixed (mixup / cutmix, if asked), forward, loss, backward,
// their gradients adding up (the last batch's backward all-reduces them over the ranks); then the
// gradients unscaled (fp16), clipped to a global norm, the optimizer's step and the update of the
// weights' moving average.
//
// Everything a step needs is fixed when the Step is built: the context's gradient hook and
// BatchNorm group are set here, once, and cleared when it ends; nothing writes into the context
// while a step runs. Data parallel when given a communicator of more than one rank, as DDP: every
// rank starts from rank 0's weights, and gradients are averaged in buckets overlapped with backward.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <type_traits>
#include <utility>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/parallel/gradient_reducer.hpp"
#ifdef TESSERA_WITH_NCCL
#include "tessera/parallel/nccl.hpp"
#endif
#include "tessera/models/network.hpp"
#include "tessera/plugin/api.hpp"
#include "tessera/train/config.hpp"
#include "tessera/train/ema.hpp"
#include "tessera/train/input.hpp"
#include "tessera/train/loss_scale.hpp"
#include "tessera/train/metrics.hpp"
#include "tessera/train/mix.hpp"

namespace tessera::train {

/// The trainable parameters as the optimizer plugins see them: the working copy, on its device.
template <class B>
plugin::Parameters optimizer_view(models::Network<B>& net, typename B::Context& ctx) {
    const auto memory = net.working();
    plugin::Parameters p{memory.values, memory.grads, net.params().values.size(), {}, B::name, B::stream(ctx)};
    for (auto& e : net.params().params) p.tensors.push_back({e.name, layers::role_name(e.role), e.offset, e.size});
    return p;
}

/// DDP's no_sync(): the layers report final gradients through the context's hook on every batch,
/// and only the step's last batch passes them on to the reducer.
class NoSyncGate final : public parallel::GradientHook {
public:
    explicit NoSyncGate(parallel::GradientAverager& reducer) : reducer_(reducer) {}
    void open() {
        open_ = true;
        reducer_.begin_step();
    }
    void close() { open_ = false; }
    void ready(const float* grad, std::size_t count) override {
        if (open_) reducer_.ready(grad, count);
    }

private:
    parallel::GradientAverager& reducer_;
    bool open_ = false;
};

template <Backend B>
class Step {
public:
    using Context = typename B::Context;

    Step(Context& ctx, models::Network<B>& net, plugin::Optimizer& optimizer, const plugin::DatasetInfo& info,
         StepConfig config)
        : ctx_(ctx), net_(net), optimizer_(optimizer), config_(std::move(config)), normalization_(info),
          params_(optimizer_view(net, ctx)), scaler_(config_.loss_scale) {
        TESSERA_CHECK(config_.accumulate >= 1 && config_.batch_size >= 1,
                      "a step takes at least one batch of at least one image");
        if (config_.ema_decay > 0) ema_ = std::make_unique<WeightAverage<B>>(ctx_, net_, config_.ema_decay);
        if (distributed()) {
            reducer_ = make_reducer();
            gate_ = std::make_unique<NoSyncGate>(*reducer_);
            ctx_.gradient_hook = gate_.get();
            if (config_.sync_batchnorm) ctx_.batchnorm_group = config_.comm;
            broadcast_from_root();  // every rank starts from rank 0's weights and statistics
        }
    }
    ~Step() {
        ctx_.gradient_hook = nullptr;
        ctx_.batchnorm_group = nullptr;
    }
    Step(const Step&) = delete;
    Step& operator=(const Step&) = delete;

    /// One optimizer step on the next `accumulate` batches of `data`, which are batches `batch`,
    /// `batch` + 1, … of epoch `epoch` (advanced past them; the mixing draws derive from them).
    Meter run(plugin::DataSource& data, int epoch, std::int64_t& batch, const plugin::StepRates& rates) {
        net_.zero_grad(ctx_);
        keep_statistics();
        Meter step;
        for (int k = 0; k < config_.accumulate; ++k, ++batch) {
            if (!data.next(batch_))
                throw internal_error("step", "the data source gave fewer batches than num_batches() said");
            Rng mixing = Rng::derive(config_.seed ^ 0x6D6978ull, std::uint64_t(epoch), std::uint64_t(batch));
            step.add(accumulate_gradients(batch_, mixing, k + 1 == config_.accumulate));
        }
        apply_gradients(rates);
        return step;
    }

    /// One optimizer step on `batch` alone, unmixed, whatever `accumulate` says: for benchmarks,
    /// which time the step without the loading of its batch.
    Meter run(plugin::Batch& batch, const plugin::StepRates& rates) {
        net_.zero_grad(ctx_);
        keep_statistics();
        Rng unused;
        const Meter step = accumulate_gradients(batch, unused, true, false);
        apply_gradients(rates);
        return step;
    }

    /// Rank 0's weights and BatchNorm statistics (and their average) on every rank: at the start,
    /// and after rank 0 alone has read a checkpoint.
    void broadcast_from_root() {
        if (!distributed()) return;
        if (ema_) {
            const auto swapped = ema_->swapped_in();
            broadcast_network(true);
            ema_->capture();
        }
        broadcast_network(true);
    }

    /// Rank 0's BatchNorm statistics on every rank, before validating or saving. With per-rank
    /// BatchNorm each rank's running statistics follow its own batches; rank 0's are the ones it
    /// saves, and DDP broadcasts them at every forward (broadcast_buffers = True). Validation then
    /// measures, on every rank, the model that is saved.
    void share_root_statistics() {
        if (distributed() && !config_.sync_batchnorm) broadcast_network(false);
    }

    const plugin::Parameters& params() const { return params_; }
    WeightAverage<B>* average() { return ema_.get(); }
    LossScaler& scaler() { return scaler_; }
    std::int64_t steps_done() const { return steps_done_; }
    void set_steps_done(std::int64_t steps) { steps_done_ = steps; }
    /// Steps skipped (gradients not finite) since the last call.
    std::int64_t take_skipped() { return std::exchange(skipped_, 0); }
    const StepConfig& config() const { return config_; }
    bool distributed() const { return config_.comm && config_.comm->size() > 1; }
    bool is_root() const { return !config_.comm || config_.comm->is_root(); }

private:
    // Forward and backward on batch_, adding its share of the step's gradient: the loss is the mean
    // over the step's images, mixed batches weigh their two labels. `last`: the step's last batch,
    // whose backward all-reduces the summed gradients.
    Meter accumulate_gradients(plugin::Batch& batch, Rng& mixing_rng, bool last, bool mix = true) {
        ctx_.arena.reset();
        ctx_.grads.reset();
        ctx_.training = true;
        const Mixing mixing = mix ? mix_batch(batch, config_.mix, mixing_rng) : Mixing{};
        if (config_.on_batch) config_.on_batch(batch, mixing);
        const Tensor logits = net_.forward(ctx_, normalization_.input<B>(ctx_, batch));
        const Tensor dlogits = ctx_.arena.tensor(logits.shape);
        // Each batch's share of the step's loss, times the loss scale (fp16).
        const float share = float(scaler_.scale() / (mix ? config_.accumulate : 1)), lam = mixing.lam;
        auto loss = B::softmax_cross_entropy(ctx_, logits, batch.labels.data(), config_.label_smoothing, dlogits.data);
        if (mixing.active) {
            const Tensor dpartner = ctx_.arena.tensor(logits.shape);
            const auto partner =
                B::softmax_cross_entropy(ctx_, logits, mixing.partner.data(), config_.label_smoothing, dpartner.data);
            B::axpby(ctx_, share * (1 - lam), dpartner.data, share * lam, dlogits.data, dlogits.size());
            loss = {lam * loss.loss + (1 - lam) * partner.loss, lam >= 0.5f ? loss.top1 : partner.top1,
                    lam >= 0.5f ? loss.top5 : partner.top5};
        } else if (share != 1.f) {
            B::scale(ctx_, dlogits.data, dlogits.size(), share);
        }
        if (gate_) last ? gate_->open() : gate_->close();
        net_.backward(ctx_, dlogits);
        Meter m;
        m.add(loss.loss, loss.top1, loss.top5, batch.count);
        return m;
    }

    // The summed gradients, averaged over the ranks, unscaled, clipped: the optimizer's step, then the
    // average's. Gradients that are not finite (fp16 overflow, a diverging loss, a bad batch) skip the
    // step: the weights stay, BatchNorm's statistics go back to what they were before it, a dynamic
    // loss scale halves; too many such steps in a row stop the run, whose last checkpoint is from
    // before them. Every rank sees the same gradients, so every rank decides the same.
    void apply_gradients(const plugin::StepRates& rates) {
        if (reducer_) reducer_->finish();
        if (gate_) gate_->close();
        float* grads = net_.working().grads;
        if (scaler_.active()) B::scale(ctx_, grads, params_.count, float(1 / scaler_.scale()));
        if (config_.on_gradients) config_.on_gradients(steps_done_, grads, params_.count);
        ++steps_done_;
        const double norm = std::sqrt(B::sum_squares(ctx_, grads, params_.count));
        scaler_.update(std::isfinite(norm));
        if (!std::isfinite(norm)) return skip_step();
        bad_steps_in_row_ = 0;
        if (config_.grad_clip > 0 && norm > config_.grad_clip)
            B::scale(ctx_, grads, params_.count, float(config_.grad_clip / (norm + 1e-6)));
        optimizer_.step(params_, rates);
        if (ema_) ema_->update();
    }

    void skip_step() {
        const auto w = net_.working();
        B::axpby(ctx_, 1, saved_statistics_, 0, w.buffers, net_.params().buffers.size());
        ++skipped_;
        // Under dynamic loss scaling an overflow is routine, and lowers the scale; only once the scale
        // has fallen below 1 is the loss itself not finite, and the step a bad one.
        if (scaler_.dynamic() && scaler_.scale() >= 1) {
            if (is_root())
                std::fprintf(stderr,
                             "note: step %lld skipped: its gradients overflowed fp16; the loss scale is now %g\n",
                             (long long)steps_done_, scaler_.scale());
            return;
        }
        ++bad_steps_in_row_;
        if (is_root())
            std::fprintf(
                stderr,
                "warning: step %lld skipped: its gradients are not finite (the loss diverged, or a batch was bad)\n",
                (long long)steps_done_);
        if (config_.max_bad_steps > 0 && bad_steps_in_row_ >= config_.max_bad_steps)
            throw user_error(
                "training",
                "the gradients were not finite for " + std::to_string(bad_steps_in_row_) +
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

    // Rank 0's host copy of the statistics (and of the weights, with `weights`) to every rank.
    void broadcast_network(bool weights) {
        net_.download();
        auto host = net_.params().host();
        if (weights) config_.comm->broadcast(host.values, net_.params().values.size() * sizeof(float), 0);
        config_.comm->broadcast(host.buffers, net_.params().buffers.size() * sizeof(float), 0);
        net_.upload();
    }

    // Host gradients go through a thread of their own (MPI); device gradients through NCCL on a
    // stream of their own.
    std::unique_ptr<parallel::GradientAverager> make_reducer() {
        const auto memory = net_.working();
        const std::size_t count = net_.params().grads.size();
        if constexpr (B::has_device_memory) {
#ifdef TESSERA_WITH_NCCL
            if (config_.comm->device_memory())
                return std::make_unique<parallel::DeviceGradientReducer>(*config_.comm, memory.grads, count,
                                                                         config_.bucket_bytes, B::stream(ctx_));
#endif
            throw user_error("[train] device = \"cuda\"",
                             "training on several GPUs needs NCCL, and this build has none",
                             "install NCCL next to nvcc and rebuild, or run a single GPU process");
        } else {
            return std::make_unique<parallel::GradientReducer>(*config_.comm, memory.grads, count, config_.bucket_bytes,
                                                               config_.comm->concurrent());
        }
    }

    Context& ctx_;
    models::Network<B>& net_;
    plugin::Optimizer& optimizer_;
    StepConfig config_;
    Normalization normalization_;
    plugin::Parameters params_;
    plugin::Batch batch_;
    std::unique_ptr<parallel::GradientAverager> reducer_;
    std::unique_ptr<NoSyncGate> gate_;
    std::unique_ptr<WeightAverage<B>> ema_;
    std::remove_cvref_t<decltype(std::declval<Context&>().arena)> statistics_storage_;  // the backend's memory
    float* saved_statistics_ = nullptr;  // BatchNorm's statistics before the current step
    std::int64_t steps_done_ = 0, skipped_ = 0;
    int bad_steps_in_row_ = 0;
    LossScaler scaler_;
};

}  // namespace tessera::train
