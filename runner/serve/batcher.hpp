#pragma once
// Dynamic batching: images that arrive together run through the network as one batch. The first
// image waiting opens a batch; it closes when max_batch images wait or when the first has waited
// max_wait, whichever is first (the rule of Triton's and TorchServe's dynamic batchers). The
// default max_wait is 0: a batch is whatever waits when the network is free, so a lone request
// never waits for company, and under load the requests that arrive while one batch runs form the
// next (measured in bench/serve_load.sh: with 5 ms, one client got 2.6x fewer answers per second
// and 64 clients none more).
//
// Each worker is a copy of the network on a thread of its own (runner serve --workers, Triton's
// instance_group count): one worker at a time forms a batch from the queue, and while it runs that
// batch the worker that came free first forms the next. With one worker, the network's own threads
// have the cores; with one per core, no layer waits at a barrier for a core that an I/O thread took.
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <functional>
#include <memory>
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
    /// network could not run. Both are called on the thread of the worker that ran it.
    struct Job {
        std::vector<std::uint8_t> pixels;
        std::function<void(std::span<const double>)> done;
        std::function<void(const std::string&)> failed;
        Clock::time_point queued = Clock::now();
    };

    /// One worker per classifier; each must be its own (they run at once).
    Batcher(std::span<const std::unique_ptr<runner::Classifier>> workers, const runner::ModelCard& card, int max_batch,
            std::chrono::microseconds max_wait, Metrics& metrics)
        : card_(card), max_batch_(max_batch), max_wait_(max_wait), metrics_(metrics) {
        for (std::size_t i = 0; i < workers.size(); ++i)
            threads_.emplace_back([this, i, network = workers[i].get()] { run(*network, int(i)); });
    }
    ~Batcher() { stop(); }
    Batcher(const Batcher&) = delete;
    Batcher& operator=(const Batcher&) = delete;

    void submit(Job job) {
        {
            std::lock_guard lock(mutex_);
            queue_.push_back(std::move(job));
        }
        wake_.notify_all();  // the worker forming a batch counts it, or the next ticket's holder starts one
    }

    /// Runs what is queued, then ends the workers.
    void stop() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (std::thread& t : threads_)
            if (t.joinable()) t.join();
    }

private:
    void run(runner::Classifier& network, int worker) {
        std::vector<Job> batch;
        std::vector<std::uint8_t> pixels;
        for (;;) {
            {
                // Free workers form batches in the order they came free (a ticket each), so that no
                // worker waits while another takes every batch.
                std::unique_lock lock(mutex_);
                const std::uint64_t turn = tickets_++;
                wake_.wait(lock,
                           [&] { return (turn == serving_ && !queue_.empty()) || (stopping_ && queue_.empty()); });
                if (queue_.empty()) return;  // stopping, nothing left
                const auto deadline = queue_.front().queued + max_wait_;
                wake_.wait_until(lock, deadline, [&] { return stopping_ || int(queue_.size()) >= max_batch_; });
                const std::size_t n = std::min(queue_.size(), std::size_t(max_batch_));
                batch.assign(std::make_move_iterator(queue_.begin()),
                             std::make_move_iterator(queue_.begin() + long(n)));
                queue_.erase(queue_.begin(), queue_.begin() + long(n));
                ++serving_;
            }
            wake_.notify_all();  // the next ticket forms the next batch
            const std::size_t bytes = card_.input_bytes();
            pixels.resize(batch.size() * bytes);
            for (std::size_t i = 0; i < batch.size(); ++i)
                std::memcpy(pixels.data() + i * bytes, batch[i].pixels.data(), bytes);
            try {
                const auto start = Clock::now();
                const std::vector<double> p = network.probabilities(pixels.data(), int(batch.size()));
                metrics_.batch(int(batch.size()), std::chrono::duration<double>(Clock::now() - start).count(), worker);
                const std::size_t classes = std::size_t(card_.classes);
                for (std::size_t i = 0; i < batch.size(); ++i) batch[i].done({p.data() + i * classes, classes});
            } catch (const std::exception& e) {
                for (Job& job : batch) job.failed(e.what());
            }
            batch.clear();
        }
    }

    const runner::ModelCard& card_;
    const int max_batch_;
    const std::chrono::microseconds max_wait_;
    Metrics& metrics_;
    std::mutex mutex_;
    std::condition_variable wake_;
    std::deque<Job> queue_;
    bool stopping_ = false;
    std::uint64_t tickets_ = 0, serving_ = 0;  // the next ticket to hand out; the one forming a batch
    std::vector<std::thread> threads_;         // last: they start once the members above exist
};

}  // namespace tessera::serve
