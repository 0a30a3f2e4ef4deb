#pragma once
// Loader: turns a source of samples (decode one image, augment it) into batches, in the background.
//
// Worker threads claim a few samples at a time and write them straight into one of `prefetch` batch
// buffers; the consumer takes batches strictly in order and hands its previous buffer back, so after
// the first epoch nothing is allocated. What a sample looks like depends only on (seed, epoch, rank,
// its position in the epoch): never on the number of workers or on which one was faster.
//
// A sample that cannot be read is reported once with its path, counted, and replaced by another
// sample chosen the same deterministic way; the run goes on.
//
// What a source of samples provides is the SampleSource concept below.
#include <atomic>
#include <concepts>
#include <cstdint>
#include <string>
#include <condition_variable>
#include <cstdio>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <unordered_set>
#include <utility>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/data/augment.hpp"
#include "tessera/data/image.hpp"
#include "tessera/data/sampler.hpp"
#include "tessera/plugin/api.hpp"

namespace tessera::data {

/// How many unreadable samples in a row the loader replaces before it gives up on the dataset.
inline constexpr int max_replacements_in_a_row = 64;

/// A source of samples, shared by every worker thread (so its members are const) and read through
/// per-thread state of its own:
///   Worker                           per-thread state (a decoder, scratch buffers), made per thread
///   output(split)                    the size of every sample of that split
///   label(split, index)              the sample's class
///   name(split, index)               a path, for messages
///   load(worker, split, index, rng, rgb)   decodes and augments into `rgb`; throws DecodeError
template <class S>
concept SampleSource = std::default_initializable<typename S::Worker> &&
    requires(const S& source, typename S::Worker& worker, plugin::Split split, std::int64_t index, Rng& rng,
             std::uint8_t* rgb) {
    { source.output(split) } -> std::same_as<Size2>;
    { source.label(split, index) } -> std::convertible_to<std::int32_t>;
    { source.name(split, index) } -> std::convertible_to<std::string>;
    source.load(worker, split, index, rng, rgb);
};

template <SampleSource Source>
class Loader {
public:
    using Split = plugin::Split;
    using Warn = std::function<void(const std::string&)>;

    /// `workers` = 0 loads in the caller's thread; `prefetch` batches are prepared ahead.
    Loader(const Source& source, int workers, int prefetch, Warn warn = default_warn)
        : source_(source), warn_(std::move(warn)), slots_(std::max(prefetch, 1)) {
        if (workers == 0) inline_worker_ = std::make_unique<typename Source::Worker>();
        try {
            for (int w = 0; w < workers; ++w) threads_.emplace_back([this] { work(); });
        } catch (const std::system_error& e) {  // the workers started must end before the loader does
            stop();
            throw user_error("data loader",
                             "cannot start decoding thread " + std::to_string(threads_.size() + 1) + " of " +
                                 std::to_string(workers) + ": " + e.what(),
                             "lower data.workers, or raise the process's limits (ulimit -u, ulimit -v)");
        }
    }

    ~Loader() { stop(); }

    Loader(const Loader&) = delete;
    Loader& operator=(const Loader&) = delete;

    static std::int64_t num_batches(Split split, const plugin::EpochPlan& plan, std::int64_t size) {
        return EpochCursor::num_batches(split, plan, size);
    }

    /// Starts an epoch of `size` samples, abandoning whatever the previous one had not delivered.
    void start(Split split, const plugin::EpochPlan& plan, std::int64_t size) {
        std::unique_lock lock(mutex_);
        total_ = 0;  // no more claims from the old epoch
        idle_.wait(lock, [&] { return active_ == 0; });
        split_ = split;
        plan_ = plan;
        size_ = size;
        order_ = split == Split::train ? epoch_order(size, true, plan.seed, plan.epoch, plan.rank, plan.world_size)
                                       : validation_order(size, plan.rank, plan.world_size);
        batches_ = num_batches(split, plan, size);
        total_ = std::min<std::int64_t>(std::int64_t(order_.size()), batches_ * plan.batch_size);
        consumed_ = std::min(plan.first_batch, batches_);  // a resumed epoch skips what was trained on
        claimed_ = std::min(consumed_ * plan.batch_size, total_);
        for (auto& s : slots_) s.number = -1;
        bad_this_epoch_ = 0;
        const Size2 out = source_.output(split);
        sample_bytes_ = std::size_t(out.width) * out.height * 3;
        lock.unlock();
        work_ready_.notify_all();
    }

    /// The next batch of the epoch into `out` (whose buffers are recycled); false when it is done.
    bool next(plugin::Batch& out) {
        if (consumed_ >= batches_) return false;
        if (inline_worker_) {
            prepare(out, consumed_);
            const std::int64_t first = consumed_ * plan_.batch_size;
            for (int i = 0; i < out.count; ++i) load_sample(*inline_worker_, first + i, out, i);
            ++consumed_;
            return true;
        }
        std::unique_lock lock(mutex_);
        Slot& slot = slots_[consumed_ % slots_.size()];
        const std::int64_t wanted = consumed_;
        batch_ready_.wait(lock, [&] { return error_ || (slot.number == wanted && slot.remaining == 0); });
        if (error_) std::rethrow_exception(std::exchange(error_, nullptr));
        std::swap(out, slot.batch);
        slot.number = -1;
        ++consumed_;
        lock.unlock();
        work_ready_.notify_all();
        return true;
    }

    /// Samples replaced this epoch because they could not be read.
    std::int64_t bad_samples() const { return bad_this_epoch_.load(); }

    static void default_warn(const std::string& message) { std::fprintf(stderr, "warning: %s\n", message.c_str()); }

private:
    struct Slot {
        plugin::Batch batch;
        std::int64_t number = -1;  // the batch it holds or is being filled with
        std::int64_t remaining = 0;
    };

    // Sizes `b` for batch `number`; its buffers keep their capacity.
    void prepare(plugin::Batch& b, std::int64_t number) const {
        const Size2 out = source_.output(split_);
        b.count = int(std::min<std::int64_t>(plan_.batch_size, total_ - number * plan_.batch_size));
        b.height = out.height;
        b.width = out.width;
        b.channels = 3;
        b.pixels.resize(std::size_t(b.count) * sample_bytes_);
        b.labels.resize(std::size_t(b.count));
    }

    void stop() {
        {
            std::unique_lock lock(mutex_);
            stop_ = true;
        }
        work_ready_.notify_all();
        for (auto& t : threads_) t.join();
        threads_.clear();
    }

    // A worker's failure (a sample that cannot be loaded, memory that cannot be had for a batch)
    // ends the worker and reaches the consumer at its next batch: nothing escapes the thread.
    void work() {
        try {
            work_loop();
        } catch (...) {
            std::lock_guard lock(mutex_);
            if (!error_) error_ = std::current_exception();
            batch_ready_.notify_all();
        }
    }

    void work_loop() {
        typename Source::Worker worker;
        constexpr std::int64_t chunk = 4;  // samples per claim: few enough to spread a batch over many workers
        std::unique_lock lock(mutex_);
        for (;;) {
            work_ready_.wait(lock, [&] {
                return stop_ ||
                       (claimed_ < total_ && claimed_ / plan_.batch_size < consumed_ + std::int64_t(slots_.size()));
            });
            if (stop_) return;
            const std::int64_t first = claimed_, number = first / plan_.batch_size;
            const std::int64_t count = std::min({chunk, (number + 1) * plan_.batch_size - first, total_ - first});
            claimed_ += count;
            Slot& slot = slots_[number % slots_.size()];
            if (slot.number != number) {
                prepare(slot.batch, number);  // may throw (bad_alloc); the slot is claimed only once it is sized
                slot.number = number;
                slot.remaining = slot.batch.count;
            }
            ++active_;
            lock.unlock();
            std::exception_ptr failure;
            try {
                for (std::int64_t g = first; g < first + count; ++g)
                    load_sample(worker, g, slot.batch, int(g - number * plan_.batch_size));
            } catch (...) {
                failure = std::current_exception();
            }
            lock.lock();
            --active_;
            if (failure && !error_) error_ = failure;
            slot.remaining -= count;
            if (slot.remaining == 0 || failure) batch_ready_.notify_all();
            if (active_ == 0) idle_.notify_all();
        }
    }

    // Sample `position` of this rank's epoch into place `i` of `b`; unreadable ones are replaced.
    void load_sample(typename Source::Worker& worker, std::int64_t position, plugin::Batch& b, int i) {
        const std::uint64_t stream =
            (std::uint64_t(plan_.epoch) << 1 | (split_ == Split::val)) << 16 | std::uint64_t(plan_.rank);
        std::int64_t index = order_[position];
        for (int attempt = 0; attempt <= max_replacements_in_a_row; ++attempt) {
            if (attempt > 0)
                index =
                    std::int64_t(Rng::derive(plan_.seed, stream, std::uint64_t(position) << 8 | attempt).below(size_));
            if (is_bad(index)) continue;
            Rng rng = Rng::derive(plan_.seed ^ 0xA6A6'0000'0000ull, stream, std::uint64_t(position) << 8 | attempt);
            try {
                source_.load(worker, split_, index, rng, b.pixels.data() + std::size_t(i) * sample_bytes_);
                b.labels[i] = source_.label(split_, index);
                if (attempt > 0) ++bad_this_epoch_;
                return;
            } catch (const DecodeError& e) {
                mark_bad(index, e.what());
            }
        }
        throw user_error(
            source_.name(split_, order_[position]),
            "this and " + std::to_string(max_replacements_in_a_row) + " samples chosen to replace it could not be read",
            "check the data folder: most of its files seem damaged (the warnings above name them)");
    }

    bool is_bad(std::int64_t index) {
        std::lock_guard lock(bad_mutex_);
        return bad_[split_ == Split::val].count(index) > 0;
    }

    void mark_bad(std::int64_t index, const std::string& why) {
        {
            std::lock_guard lock(bad_mutex_);
            if (!bad_[split_ == Split::val].insert(index).second) return;
        }
        warn_(source_.name(split_, index) + ": " + why + "; skipped, another image takes its place");
    }

    const Source& source_;
    Warn warn_;
    std::unique_ptr<typename Source::Worker> inline_worker_;

    std::mutex mutex_;
    std::condition_variable work_ready_, batch_ready_, idle_;
    std::vector<Slot> slots_;
    std::vector<std::thread> threads_;
    bool stop_ = false;
    int active_ = 0;
    std::exception_ptr error_;

    Split split_ = Split::train;
    plugin::EpochPlan plan_;
    std::vector<std::int64_t> order_;
    std::int64_t size_ = 0, batches_ = 0, total_ = 0, claimed_ = 0, consumed_ = 0;
    std::size_t sample_bytes_ = 0;

    std::mutex bad_mutex_;
    std::unordered_set<std::int64_t> bad_[2];  // by split, across epochs: each is reported once
    std::atomic<std::int64_t> bad_this_epoch_ = 0;
};

}  // namespace tessera::data
