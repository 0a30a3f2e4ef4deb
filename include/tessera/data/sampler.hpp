#pragma once
// The order of samples in an epoch, as torch.utils.data.DistributedSampler: shuffle the indices with
// a generator seeded by (seed, epoch), pad to a multiple of the world size by repeating the first
// indices, and give rank r every world_size-th index from r. The order depends on nothing else.
#include <cstdint>
#include <algorithm>
#include <numeric>
#include <span>
#include <vector>

#include "tessera/core/rng.hpp"
#include "tessera/plugin/api.hpp"

namespace tessera::data {

inline std::vector<std::int64_t> epoch_order(std::int64_t size, bool shuffle, std::uint64_t seed, std::int64_t epoch,
                                             int rank, int world_size) {
    std::vector<std::int64_t> order(size);
    std::iota(order.begin(), order.end(), 0);
    if (shuffle) {
        Rng rng = Rng::derive(seed, std::uint64_t(epoch), 0x5A3D1E);
        for (std::int64_t i = size - 1; i > 0; --i) std::swap(order[i], order[rng.below(std::uint64_t(i + 1))]);
    }
    if (world_size <= 1 || size == 0) return order;
    const std::int64_t per_rank = (size + world_size - 1) / world_size;
    std::vector<std::int64_t> shard;
    shard.reserve(per_rank);
    for (std::int64_t i = rank; i < per_rank * world_size; i += world_size) shard.push_back(order[i % size]);
    return shard;
}

/// Validation counts every sample exactly once across ranks: rank r takes r, r + world, …
inline std::vector<std::int64_t> validation_order(std::int64_t size, int rank, int world_size) {
    std::vector<std::int64_t> order;
    for (std::int64_t i = rank; i < size; i += world_size) order.push_back(i);
    return order;
}

/// How many samples a rank sees: training pads to equal shards, validation does not.
inline std::int64_t samples_per_rank(std::int64_t size, bool training, const plugin::EpochPlan& plan) {
    if (training) return (size + plan.world_size - 1) / plan.world_size;
    return size > plan.rank ? (size - plan.rank + plan.world_size - 1) / plan.world_size : 0;
}

/// Batches in an epoch of `samples`: all full ones, and the partial last one unless dropped.
inline std::int64_t batches_in(std::int64_t samples, int batch_size, bool drop_last) {
    return drop_last ? samples / batch_size : (samples + batch_size - 1) / batch_size;
}

/// Where a data source stands in an epoch: the order of its samples for this rank and how far it has
/// got. Data plugins keep one and ask it for each batch's indices.
class EpochCursor {
public:
    using Split = plugin::Split;

    static std::int64_t num_batches(Split split, const plugin::EpochPlan& plan, std::int64_t size) {
        return batches_in(samples_per_rank(size, split == Split::train, plan), plan.batch_size, plan.drop_last);
    }

    /// Training shuffles and shards; validation takes every sample once across the ranks, in order.
    /// A resumed epoch starts at plan.first_batch.
    void start(Split split, const plugin::EpochPlan& plan, std::int64_t size) {
        split_ = split;
        plan_ = plan;
        order_ = split == Split::train ? epoch_order(size, true, plan.seed, plan.epoch, plan.rank, plan.world_size)
                                       : validation_order(size, plan.rank, plan.world_size);
        cursor_ = std::min<std::int64_t>(std::int64_t(order_.size()), plan.first_batch * plan.batch_size);
    }

    /// The next batch's sample indices; empty when the epoch is done (or only a dropped partial batch is left).
    std::span<const std::int64_t> next_batch() {
        const std::int64_t count = std::min<std::int64_t>(std::int64_t(order_.size()) - cursor_, plan_.batch_size);
        if (count <= 0 || (plan_.drop_last && count < plan_.batch_size)) return {};
        std::span<const std::int64_t> batch(order_.data() + cursor_, std::size_t(count));
        cursor_ += count;
        return batch;
    }

    /// The position in this rank's epoch of the next sample next_batch() gives.
    std::int64_t position() const { return cursor_; }
    Split split() const { return split_; }
    const plugin::EpochPlan& plan() const { return plan_; }

private:
    Split split_ = Split::train;
    plugin::EpochPlan plan_;
    std::vector<std::int64_t> order_;
    std::int64_t cursor_ = 0;
};

}  // namespace tessera::data
