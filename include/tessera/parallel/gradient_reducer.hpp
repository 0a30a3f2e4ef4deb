#pragma once
// GradientReducer: averages the flat gradient buffer over the ranks, in buckets (25 MiB by
// default, as DDP), each all-reduced as soon as every gradient in it is final. The layers say when
// a gradient is final (layers::gradients_ready); backward produces them from the last layer to the
// first, so the buckets at the end of the buffer go out while the layers before them still run, on
// a thread of their own. finish() waits for the last bucket; the optimizer then steps.
//
// Where the communicator cannot run collectives from two threads at once, every bucket goes out in
// finish(), after backward: the same sums, without the overlap.
#include <algorithm>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

#include "tessera/parallel/communicator.hpp"

namespace tessera::parallel {

/// A flat gradient buffer cut into buckets, and how much of each is final this step.
class Buckets {
public:
    Buckets(const float* base, std::size_t count, std::size_t bucket_bytes)
        : base_(base), count_(count), per_bucket_(std::max<std::size_t>(1, bucket_bytes / sizeof(float))),
          ready_((count + per_bucket_ - 1) / per_bucket_) {}

    std::size_t size() const { return ready_.size(); }
    std::size_t first(std::size_t b) const { return b * per_bucket_; }
    std::size_t length(std::size_t b) const { return std::min(per_bucket_, count_ - b * per_bucket_); }
    void reset() { std::fill(ready_.begin(), ready_.end(), 0); }

    /// Counts `count` gradients at `grad` as final; calls full(b) for each bucket this completes.
    template <class Full>
    void ready(const float* grad, std::size_t count, Full&& full) {
        if (grad < base_ || grad >= base_ + count_) return;
        std::size_t at = std::size_t(grad - base_);
        const std::size_t end = std::min(at + count, count_);
        while (at < end) {
            const std::size_t b = at / per_bucket_, n = std::min(end, first(b) + length(b)) - at;
            if ((ready_[b] += n) == length(b)) full(b);
            at += n;
        }
    }

private:
    const float* base_;
    std::size_t count_, per_bucket_;
    std::vector<std::size_t> ready_;
};

class GradientReducer final : public GradientAverager {
public:
    /// `grads`: `count` floats in host memory; `background`: may a thread of its own all-reduce
    /// while backward goes on (on a duplicate of `comm`, so that its collectives never mix with
    /// those of the main thread).
    GradientReducer(const Communicator& comm, float* grads, std::size_t count, std::size_t bucket_bytes,
                    bool background)
        : comm_(comm.duplicate()), grads_(grads), buckets_(grads, count, bucket_bytes), queued_(buckets_.size()) {
        if (background) thread_ = std::thread([this] { send(); });
        begin_step();
    }

    ~GradientReducer() override {
        {
            std::lock_guard lock(mutex_);
            stop_ = true;
        }
        wake_.notify_all();
        if (thread_.joinable()) thread_.join();
    }

    GradientReducer(const GradientReducer&) = delete;
    GradientReducer& operator=(const GradientReducer&) = delete;

    std::size_t buckets() const { return buckets_.size(); }

    /// Before each step's backward.
    void begin_step() override {
        buckets_.reset();
        std::fill(queued_.begin(), queued_.end(), false);
        done_ = 0;
    }

    /// From the layers: `count` gradients at `grad` are final.
    void ready(const float* grad, std::size_t count) override {
        buckets_.ready(grad, count, [&](std::size_t b) { queue(b); });
    }

    /// Every bucket summed and divided by the number of ranks: the gradients are the mean over all.
    void finish() override {
        for (std::size_t b = 0; b < buckets_.size(); ++b) queue(b);  // those no layer reported
        if (thread_.joinable()) {
            std::unique_lock lock(mutex_);
            finished_.wait(lock, [&] { return done_ == buckets_.size(); });
        } else {
            while (!pending_.empty()) {
                reduce(pending_.front());
                pending_.pop_front();
            }
        }
    }

private:
    void queue(std::size_t b) {
        if (queued_[b]) return;
        queued_[b] = true;
        {
            std::lock_guard lock(mutex_);
            pending_.push_back(b);
        }
        wake_.notify_one();
    }

    void reduce(std::size_t b) { comm_->all_reduce_average(grads_ + buckets_.first(b), buckets_.length(b), nullptr); }

    void send() {
        std::unique_lock lock(mutex_);
        for (;;) {
            wake_.wait(lock, [&] { return stop_ || !pending_.empty(); });
            if (stop_) return;
            const std::size_t b = pending_.front();
            pending_.pop_front();
            lock.unlock();
            reduce(b);
            lock.lock();
            if (++done_ == buckets_.size()) finished_.notify_all();
        }
    }

    std::unique_ptr<Communicator> comm_;
    float* grads_;
    Buckets buckets_;
    std::vector<bool> queued_;
    std::mutex mutex_;
    std::condition_variable wake_, finished_;
    std::deque<std::size_t> pending_;
    std::size_t done_ = 0;
    bool stop_ = false;
    std::thread thread_;
};

}  // namespace tessera::parallel
