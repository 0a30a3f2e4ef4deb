#pragma once
// Dynamic batching: images that arrive together run through the network as one batch. The first
// image waiting opens a batch; it closes when max_batch images wait or when the first has waited
// max_wait, whichever is first (the rule of Triton's and TorchServe's dynamic batchers). The
// default max_wait is 0: a batch is whatever waits when the network is free, so a lone request
// never waits for company, and under load the requests that arrive while one batch runs form the
// next (measured in bench/serve_load.sh: with 5 ms, one client got 2.6x fewer answers per second
// and 64 clients none more). One thread runs the network, so its own threads have the cores.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <mutex>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "../classifier.hpp"
#include "metrics.hpp"

namespace tessera::serve {

class Batcher {
public:
    using Clock = std::chrono::steady_clock;
    /// One image, preprocessed; `done` gets its class probabilities, or `failed` the reason the
    /// network could not run. Both are called on the batcher's thread.
    struct Job {
        std::vector<std::uint8_t> pixels;
        std::function<void(std::span<const double>)> done;
        std::function<void(const std::string&)> failed;
        Clock::time_point queued = Clock::now();
    };

    Batcher(runner::Classifier& classifier, const runner::ModelCard& card, int max_batch,
            std::chrono::microseconds max_wait, Metrics& metrics)
        : classifier_(classifier), card_(card), max_batch_(max_batch), max_wait_(max_wait), metrics_(metrics),
          thread_([this] { run(); }) {}
    ~Batcher() { stop(); }
    Batcher(const Batcher&) = delete;
    Batcher& operator=(const Batcher&) = delete;

    void submit(Job job) {
        {
            std::lock_guard lock(mutex_);
            queue_.push_back(std::move(job));
        }
        wake_.notify_one();
    }

    /// Runs what is queued, then ends the thread.
    void stop() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_one();
        if (thread_.joinable()) thread_.join();
    }

private:
    void run() {
        std::vector<Job> batch;
        std::vector<std::uint8_t> pixels;
        for (;;) {
            {
                std::unique_lock lock(mutex_);
                wake_.wait(lock, [&] { return stopping_ || !queue_.empty(); });
                if (queue_.empty()) return;  // stopping, nothing left
                const auto deadline = queue_.front().queued + max_wait_;
                wake_.wait_until(lock, deadline, [&] { return stopping_ || int(queue_.size()) >= max_batch_; });
                const std::size_t n = std::min(queue_.size(), std::size_t(max_batch_));
                batch.assign(std::make_move_iterator(queue_.begin()),
                             std::make_move_iterator(queue_.begin() + long(n)));
                queue_.erase(queue_.begin(), queue_.begin() + long(n));
            }
            const std::size_t bytes = card_.input_bytes();
            pixels.resize(batch.size() * bytes);
            for (std::size_t i = 0; i < batch.size(); ++i)
                std::memcpy(pixels.data() + i * bytes, batch[i].pixels.data(), bytes);
            try {
                const auto start = Clock::now();
                const std::vector<double> p = classifier_.probabilities(pixels.data(), int(batch.size()));
                metrics_.batch(int(batch.size()), std::chrono::duration<double>(Clock::now() - start).count());
                const std::size_t classes = std::size_t(card_.classes);
                for (std::size_t i = 0; i < batch.size(); ++i) batch[i].done({p.data() + i * classes, classes});
            } catch (const std::exception& e) {
                for (Job& job : batch) job.failed(e.what());
            }
            batch.clear();
        }
    }

    runner::Classifier& classifier_;
    const runner::ModelCard& card_;
    const int max_batch_;
    const std::chrono::microseconds max_wait_;
    Metrics& metrics_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<Job> queue_;
    bool stopping_ = false;
    std::thread thread_;  // last: it starts once the members above exist
};

}  // namespace tessera::serve
