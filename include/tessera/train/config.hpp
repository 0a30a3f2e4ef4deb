#pragma once
// What training takes from a recipe: StepConfig for one optimizer step (train/step.hpp), and
// TrainConfig, which adds the loop's and the run folder's (train/loop.hpp). A RunSpec
// (recipe/run_spec.hpp) fills both from a recipe whose every value it has checked.
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>

#include "tessera/parallel/communicator.hpp"
#include "tessera/train/loss_scale.hpp"
#include "tessera/train/mix.hpp"

namespace tessera::train {

struct StepConfig {
    int batch_size = 128;  // images per batch per rank
    int accumulate = 1;    // batches whose gradients add up to one optimizer step
    float label_smoothing = 0;
    std::uint64_t seed = 0;      // mixing draws derive from it, the epoch and the batch
    double grad_clip = 0;        // clip the gradients' global L2 norm to this, as clip_grad_norm_ (0: never)
    double ema_decay = 0;        // keep a moving average of the weights with this decay per step (0: none)
    MixConfig mix;               // mixup and cutmix
    int max_bad_steps = 10;      // stop after so many steps in a row with gradients not finite (0: never)
    LossScaleConfig loss_scale;  // fp16: the loss's gradient is scaled up for backward, the weights' down after
    parallel::Communicator* comm = nullptr;            // null or a world of one: this process alone
    bool sync_batchnorm = false;                       // BatchNorm statistics over every rank's batch
    std::size_t bucket_bytes = std::size_t(25) << 20;  // gradients all-reduced together, as DDP's default
    // Called with each step's gradients (averaged over the ranks) before they are checked and used:
    // for fault injection in tests, and for debugging. On a GPU they are device memory.
    std::function<void(std::int64_t step, float* grads, std::size_t count)> on_gradients;
    // Called with each batch as the network is about to see it, after mixup or cutmix, and how it
    // was mixed: `runner parity` records what tessera trained on, for PyTorch to train on the same.
    std::function<void(const plugin::Batch& batch, const Mixing& mixing)> on_batch;
};

struct TrainConfig : StepConfig {
    int epochs = 1;
    int checkpoint_every = 1;  // epochs
    std::filesystem::path run_dir;
    double lr_scale = 1;                      // multiplies the scheduler's rates (linear scaling with the global batch)
    double checkpoint_minutes = 0;            // also save every so many minutes within an epoch (0: at epoch ends only)
    const std::atomic<bool>* stop = nullptr;  // set (by a signal handler) to stop after the current step and save
    std::int64_t stop_after_steps = 0;        // stop as if interrupted once this many steps are done (0: never)
    double target_top1 = 0;  // stop once validation top-1 (of the weights or their average) reaches it (0: never)
    int keep_epochs = 0;     // also keep the weights of the last so many epochs, as epoch_<N>.safetensors
    bool stop_on_save_failure = true;  // a checkpoint that cannot be written stops the run (false: warn, go on)
};

}  // namespace tessera::train
