#pragma once
// Trainer: the training loop. Next batch, forward, loss, backward, step, log; validate every epoch;
// save the weights. Everything it uses arrives from outside: the network, the plugins, the context.
// Data parallel when given a communicator of more than one rank: each rank trains on its shard of
// every epoch, gradients are averaged over the ranks in buckets overlapped with backward, metrics
// are summed so that each image counts once, and rank 0 alone logs and saves.
#include <chrono>
#include <filesystem>
#include <memory>
#include <vector>

#include "tessera/dist/gradient_reducer.hpp"
#ifdef TESSERA_WITH_NCCL
#include "tessera/dist/nccl.hpp"
#endif
#include "tessera/models/network.hpp"
#include "tessera/plugin/api.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/metrics.hpp"

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
        if (distributed()) {
            reducer_ = make_reducer();
            ctx_.gradient_hook = reducer_.get();
            if (config_.sync_batchnorm) {
                if constexpr (B::has_device_memory)
                    throw user_error("[train] sync_batchnorm", "synchronised BatchNorm runs on the CPU backend only, so far",
                                     "set sync_batchnorm = false: each GPU normalises over its own batch, as DDP does by default");
                ctx_.batchnorm_group = config_.comm;
            }
            // Every rank starts from rank 0's weights and statistics.
            auto host = net_.params().host();
            config_.comm->broadcast(host.values, net_.params().values.size() * sizeof(float), 0);
            config_.comm->broadcast(host.buffers, net_.params().buffers.size() * sizeof(float), 0);
            net_.upload();
        }
    }

    ~Trainer() {
        ctx_.gradient_hook = nullptr;
        ctx_.batchnorm_group = nullptr;
    }

    std::int64_t steps_per_epoch() const { return data_.num_batches(plugin::Split::train, plan(1, plugin::Split::train)); }

    /// Trains for the configured epochs; returns the last epoch's figures.
    plugin::EpochStats fit() {
        plugin::Clock clock{0, steps_per_epoch() * config_.epochs, steps_per_epoch()};
        const plugin::Parameters params = optimizer_view(net_, ctx_);
        plugin::EpochStats stats;
        for (int epoch = 1; epoch <= config_.epochs; ++epoch) {
            const auto start = std::chrono::steady_clock::now();
            Meter meter;
            data_.start_epoch(plugin::Split::train, plan(epoch, plugin::Split::train));
            while (data_.next(batch_)) {
                const plugin::StepRates rates{scheduler_.lr(clock) * config_.lr_scale, scheduler_.momentum(clock)};
                const auto loss = train_step(rates, params);
                meter.add(loss.loss, loss.top1, loss.top5, batch_.count);
                ++clock.step;
                log_step(epoch, clock.step - (epoch - 1) * clock.steps_per_epoch, clock.steps_per_epoch, meter, rates.lr, start);
                stats.lr = rates.lr;
            }
            reduce(meter);
            const double seconds = seconds_since(start);
            const std::int64_t bad_train = data_.bad_samples();
            const Evaluation val = evaluate();
            stats = {epoch, config_.epochs, stats.lr, meter.loss(), meter.top1_rate(), val.loss, val.top1, val.top5,
                     double(meter.count) / seconds, seconds_since(start), bad_train + data_.bad_samples()};
            if (is_root()) {
                for (auto& l : loggers_) l->on_epoch(stats);
                if (epoch % config_.checkpoint_every == 0 || epoch == config_.epochs) save_weights();
            }
        }
        return stats;
    }

    /// One optimizer step on the current batch.
    auto train_step(const plugin::StepRates& rates, const plugin::Parameters& params) {
        ctx_.arena.reset();
        ctx_.grads.reset();
        ctx_.training = true;
        net_.zero_grad(ctx_);
        const Tensor logits = net_.forward(ctx_, input(batch_));
        const Tensor dlogits = ctx_.arena.tensor(logits.shape);
        const auto loss = B::softmax_cross_entropy(ctx_, logits, batch_.labels.data(), config_.label_smoothing, dlogits.data);
        if (reducer_) reducer_->begin_step();
        net_.backward(ctx_, dlogits);
        if (reducer_) reducer_->finish();  // the gradients are now the mean over every rank's batch
        optimizer_.step(params, rates);
        return loss;
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
        Tensor x = ctx_.arena.tensor({b.count, b.height, b.width, b.channels});
        B::normalize_images(ctx_, b.pixels.data(), mean_.data(), inv_std_.data(), x);
        return x;
    }

    // Rank 0's running figures; images per second for all ranks (each trains as many).
    void log_step(int epoch, std::int64_t step, std::int64_t steps, const Meter& meter, double lr,
                  std::chrono::steady_clock::time_point start) {
        if (!is_root()) return;
        const double elapsed = seconds_since(start);
        const plugin::StepStats s{epoch, step, steps, meter.loss(), meter.top1_rate(), lr,
                                  double(meter.count) * world_size() / elapsed, elapsed, elapsed / double(step) * double(steps - step)};
        for (auto& l : loggers_) l->on_step(s);
    }

    void save_weights() {
        net_.download();
        checkpoint::save(net_.params(), config_.run_dir / "last.safetensors", {{"arch", net_.arch()}});
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
};

}  // namespace tessera::train
