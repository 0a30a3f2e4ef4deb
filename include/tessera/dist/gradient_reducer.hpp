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

#include "tessera/dist/communicator.hpp"

namespace tessera::dist {

class GradientReducer final : public GradientAverager {
public:
    /// `grads`: `count` floats in host memory; `background`: may a thread of its own all-reduce
    /// while backward goes on (on a duplicate of `comm`, so that its collectives never mix with
    /// those of the main thread).
    GradientReducer(const Communicator& comm, float* grads, std::size_t count, std::size_t bucket_bytes, bool background)
        : comm_(comm.duplicate()), grads_(grads), count_(count),
          bucket_floats_(std::max<std::size_t>(1, bucket_bytes / sizeof(float))),
          buckets_((count + bucket_floats_ - 1) / bucket_floats_) {
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
        for (auto& b : buckets_) b.ready = 0, b.queued = false;
        done_ = 0;
    }

    /// From the layers: `count` gradients at `grad` are final.
    void ready(const float* grad, std::size_t count) override {
        if (grad < grads_ || grad >= grads_ + count_) return;
        std::size_t first = std::size_t(grad - grads_), end = std::min(first + count, count_);
        while (first < end) {
            const std::size_t b = first / bucket_floats_, bucket_end = std::min((b + 1) * bucket_floats_, count_);
            const std::size_t n = std::min(end, bucket_end) - first;
            buckets_[b].ready += n;
            if (buckets_[b].ready == bucket_end - b * bucket_floats_) queue(b);
            first += n;
        }
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
    struct Bucket {
        std::size_t ready = 0;
        bool queued = false;
    };

    void queue(std::size_t b) {
        if (buckets_[b].queued) return;
        buckets_[b].queued = true;
        {
            std::lock_guard lock(mutex_);
            pending_.push_back(b);
        }
        wake_.notify_one();
    }

    void reduce(std::size_t b) {
        float* data = grads_ + b * bucket_floats_;
        const std::size_t n = std::min(bucket_floats_, count_ - b * bucket_floats_);
        comm_->all_reduce_average(data, n, nullptr);
    }

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
    std::size_t count_, bucket_floats_;
    std::vector<Bucket> buckets_;
    std::mutex mutex_;
    std::condition_variable wake_, finished_;
    std::deque<std::size_t> pending_;
    std::size_t done_ = 0;
    bool stop_ = false;
    std::thread thread_;
};

}  // namespace tessera::dist
