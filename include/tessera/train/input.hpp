#pragma once
// What the step and evaluation share: which batches an epoch holds for this rank (the plan the
// data source follows) and the batch's uint8 pixels made into the network's normalised input.
#include <vector>

#include "tessera/core/tensor.hpp"
#include "tessera/parallel/communicator.hpp"
#include "tessera/plugin/api.hpp"

namespace tessera::train {

/// Epoch `epoch` of `split` for this rank: its shard of the data, in batches of `batch_size`.
/// Training drops the last partial batch (full batches keep BatchNorm's statistics sound).
inline plugin::EpochPlan epoch_plan(int epoch, plugin::Split split, int batch_size, std::uint64_t seed,
                                    const parallel::Communicator* comm) {
    plugin::EpochPlan p;
    p.epoch = epoch;
    p.seed = seed;
    p.batch_size = batch_size;
    p.rank = comm ? comm->rank() : 0;
    p.world_size = comm ? comm->size() : 1;
    p.drop_last = split == plugin::Split::train;
    return p;
}

/// (x / 255 - mean) / std per channel, as torchvision's ToTensor and Normalize, in the backend's
/// memory: (N, H, W, C).
class Normalization {
public:
    explicit Normalization(const plugin::DatasetInfo& info) {
        for (std::size_t c = 0; c < info.mean.size(); ++c) {
            mean_.push_back(float(info.mean[c]));
            inv_std_.push_back(float(1.0 / info.std[c]));
        }
    }
    template <class B>
    Tensor input(typename B::Context& ctx, const plugin::Batch& b) const {
        Tensor x = ctx.arena.tensor({b.count, b.height, b.width, b.channels}, ctx.activations);
        B::normalize_images(ctx, b.pixels.data(), mean_.data(), inv_std_.data(), x);
        return x;
    }

private:
    std::vector<float> mean_, inv_std_;
};

}  // namespace tessera::train
