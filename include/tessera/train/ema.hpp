#pragma once
// WeightAverage: an exponential moving average of a network's weights and BatchNorm statistics,
// as timm's ModelEmaV2 (every state_dict tensor, updated after each optimizer step):
//   average = decay * average + (1 - decay) * current
// Averaged weights usually validate better late in training; the trainer evaluates them alongside
// the weights being trained and saves them as ema.safetensors, a checkpoint like any other.
// Everything stays in the backend's memory: the average and a backup of the weights that
// evaluation of the average swaps out.
#include <type_traits>

#include "tessera/models/network.hpp"

namespace tessera::train {

template <LayerBackend B>
class WeightAverage {
public:
    using Context = typename B::Context;

    WeightAverage(Context& ctx, models::Network<B>& net, double decay)
        : ctx_(ctx), net_(net), decay_(float(decay)), values_(net.params().values.size()),
          buffers_(net.params().buffers.size()) {
        average_ = storage_.allocate_floats(values_ + buffers_);
        backup_ = storage_.allocate_floats(values_ + buffers_);
        copy_from_network(average_);
    }

    /// After each optimizer step.
    void update() {
        const auto w = net_.working();
        B::axpby(ctx_, 1 - decay_, w.values, decay_, average_, values_);
        B::axpby(ctx_, 1 - decay_, w.buffers, decay_, average_ + values_, buffers_);
    }

    /// The network computes with the average until the Swapped ends; its own weights come back then.
    /// BatchNorm's num_batches_tracked, a count, is the network's own rather than an average.
    class Swapped {
    public:
        explicit Swapped(WeightAverage& a) : a_(a) {
            a_.copy_from_network(a_.backup_);
            a_.copy_to_network(a_.average_);
            const auto w = a_.net_.working();
            for (auto& e : a_.net_.params().buffer_entries)
                if (e.role == layers::Role::num_batches_tracked)
                    B::axpby(a_.ctx_, 1, a_.backup_ + a_.values_ + e.offset, 0, w.buffers + e.offset, e.size);
        }
        ~Swapped() { a_.copy_to_network(a_.backup_); }
        Swapped(const Swapped&) = delete;
        Swapped& operator=(const Swapped&) = delete;

    private:
        WeightAverage& a_;
    };
    Swapped swapped_in() { return Swapped(*this); }

    /// Takes the network's current weights as the average (after loading a saved average into it).
    void capture() { copy_from_network(average_); }

private:
    void copy_from_network(float* to) {
        const auto w = net_.working();
        B::axpby(ctx_, 1, w.values, 0, to, values_);
        B::axpby(ctx_, 1, w.buffers, 0, to + values_, buffers_);
    }
    void copy_to_network(const float* from) {
        const auto w = net_.working();
        B::axpby(ctx_, 1, from, 0, w.values, values_);
        B::axpby(ctx_, 1, from + values_, 0, w.buffers, buffers_);
    }

    Context& ctx_;
    models::Network<B>& net_;
    float decay_;
    std::size_t values_, buffers_;
    std::remove_cvref_t<decltype(std::declval<Context&>().arena)> storage_;  // the backend's memory, allocated once
    float* average_ = nullptr;
    float* backup_ = nullptr;
};

}  // namespace tessera::train
