#pragma once
// Evaluation: loss (without label smoothing), top-1 and top-5 of a network on the validation
// split, in eval mode (BatchNorm's running statistics), each image counted once across the ranks.
// It needs a network and data alone: no optimizer, no trainer. `runner eval`, the trainer's
// validation and library users call the same function.
#include <concepts>

#include "tessera/export/cpu_inference.hpp"
#include "tessera/models/network.hpp"
#include "tessera/parallel/communicator.hpp"
#include "tessera/plugin/api.hpp"
#include "tessera/train/input.hpp"
#include "tessera/train/metrics.hpp"

namespace tessera::train {

struct Evaluation {
    double loss = 0, top1 = 0, top5 = 0;
};

/// Sums a meter over the ranks, so that every image counts once.
inline void reduce(Meter& m, parallel::Communicator* comm) {
    if (!comm || comm->size() < 2) return;
    double sums[4] = {m.loss_sum, double(m.top1), double(m.top5), double(m.count)};
    comm->all_reduce_sum(sums, 4);
    m = {sums[0], std::int64_t(sums[1]), std::int64_t(sums[2]), std::int64_t(sums[3])};
}

/// The figures of `forward` (normalised images in, logits out) on `data`'s validation split, this
/// rank's shard of it in batches of `batch_size`, summed over the ranks of `comm` (null: this
/// process alone). A network's forward below; tessera's int8 fake-quant forward (runner eval of a
/// quantized model) is the other.
template <Backend B, class Forward>
requires std::invocable<Forward&, typename B::Context&, const Tensor&> Evaluation
evaluate_with(typename B::Context& ctx, Forward&& forward, plugin::DataSource& data, int batch_size,
              parallel::Communicator* comm = nullptr) {
    const Normalization normalization(data.info());
    plugin::Batch batch;
    Meter meter;
    data.start_epoch(plugin::Split::val, epoch_plan(0, plugin::Split::val, batch_size, 0, comm));
    const bool was_training = ctx.training;
    ctx.training = false;
    while (data.next(batch)) {
        ctx.arena.reset();
        const Tensor logits = forward(ctx, normalization.input<B>(ctx, batch));
        const auto loss = B::softmax_cross_entropy(ctx, logits, batch.labels.data(), 0.f, nullptr);
        meter.add(loss.loss, loss.top1, loss.top5, batch.count);
    }
    ctx.training = was_training;
    reduce(meter, comm);
    return {meter.loss(), meter.top1_rate(), meter.top5_rate()};
}

/// The network's figures on `data`'s validation split (evaluate_with), through its inference forward
/// (compiled on the CPU: deploy::InferenceForward). Every rank must hold the same weights and
/// statistics.
template <Backend B>
Evaluation evaluate(typename B::Context& ctx, models::Network<B>& net, plugin::DataSource& data, int batch_size,
                    parallel::Communicator* comm = nullptr) {
    deploy::InferenceForward<B> forward(net, ctx.activations);
    return evaluate_with<B>(ctx, forward, data, batch_size, comm);
}

}  // namespace tessera::train
