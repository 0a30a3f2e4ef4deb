#pragma once
// ThreadPool: a fixed set of workers for data-parallel loops over rows, pixels or channels.
// parallel_for splits [0, n) into one contiguous chunk per thread (the caller's thread takes the
// first), so results do not depend on timing. GEMMs do not go through here: OpenBLAS has its own
// threads, sized to the same count (see backend/cpu/gemm.hpp).
#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera {

/// The split every parallel_for makes (ThreadPool's and the CPU backend's OpenMpThreads): [0, n)
/// in `chunks` contiguous chunks, one per thread and none of fewer than `grain` elements, chunk t
/// being [n*t/chunks, n*(t+1)/chunks). It depends on n alone, never on timing, so sums taken per
/// chunk add up the same way every run.
struct Split {
    std::size_t n, chunks;
    Split(std::size_t n, std::size_t threads, std::size_t grain)
        : n(n), chunks(std::min(threads, std::max<std::size_t>(1, n / std::max<std::size_t>(grain, 1)))) {}
    std::size_t begin(std::size_t chunk) const { return n * chunk / chunks; }
    std::size_t end(std::size_t chunk) const { return n * (chunk + 1) / chunks; }
};

class ThreadPool {
public:
    explicit ThreadPool(int threads = default_threads()) : size_(std::max(1, threads)) {
        try {
            for (int t = 1; t < size_; ++t) workers_.emplace_back([this, t] { work(t); });
        } catch (const std::system_error& e) {  // the threads started must end before the pool does
            stop();
            throw user_error(
                "thread pool",
                "cannot start thread " + std::to_string(workers_.size() + 2) + " of " + std::to_string(size_) + ": " +
                    e.what(),
                "use fewer threads (--threads, train.threads, TESSERA_NUM_THREADS), or raise the process's limits "
                "(ulimit -u, ulimit -v)");
        }
    }
    ~ThreadPool() { stop(); }
    ThreadPool(const ThreadPool&) = delete;
    ThreadPool& operator=(const ThreadPool&) = delete;

    int size() const { return size_; }

    /// Calls body(begin, end) over chunks of [0, n); chunks smaller than `grain` are not split further.
    void parallel_for(std::size_t n, const std::function<void(std::size_t, std::size_t)>& body, std::size_t grain = 1) {
        const Split split(n, std::size_t(size_), grain);
        if (split.chunks <= 1 || n == 0) {
            if (n) body(0, n);
            return;
        }
        {
            std::lock_guard lock(mutex_);
            body_ = &body;
            split_ = split;
            pending_ = split.chunks - 1;
            ++generation_;
        }
        wake_.notify_all();
        body(split.begin(0), split.end(0));
        std::unique_lock lock(mutex_);
        done_.wait(lock, [&] { return pending_ == 0; });
        body_ = nullptr;
    }

    /// TESSERA_NUM_THREADS if set, else every core.
    static int default_threads() {
        if (const char* env = std::getenv("TESSERA_NUM_THREADS")) {
            int t = std::atoi(env);
            if (t > 0) return t;
        }
        return std::max(1u, std::thread::hardware_concurrency());
    }

private:
    void stop() {
        {
            std::lock_guard lock(mutex_);
            stopping_ = true;
        }
        wake_.notify_all();
        for (auto& w : workers_) w.join();
        workers_.clear();
    }
    void work(int index) {
        std::size_t seen = 0;
        for (;;) {
            const std::function<void(std::size_t, std::size_t)>* body;
            std::size_t begin, end;
            {
                std::unique_lock lock(mutex_);
                wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
                if (stopping_) return;
                seen = generation_;
                if (std::size_t(index) >= split_.chunks) continue;
                body = body_;
                begin = split_.begin(std::size_t(index));
                end = split_.end(std::size_t(index));
            }
            (*body)(begin, end);
            {
                std::lock_guard lock(mutex_);
                if (--pending_ == 0) done_.notify_one();
            }
        }
    }

    int size_;
    std::vector<std::thread> workers_;
    std::mutex mutex_;
    std::condition_variable wake_, done_;
    const std::function<void(std::size_t, std::size_t)>* body_ = nullptr;
    Split split_{0, 1, 1};
    std::size_t pending_ = 0, generation_ = 0;
    bool stopping_ = false;
};

}  // namespace tessera
