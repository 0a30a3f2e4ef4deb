#pragma once
// OpenMpThreads: the CPU backend's data-parallel loops, run on OpenMP's threads, the same threads
// oneDNN runs its convolutions on (Debian's oneDNN is built for OpenMP), as PyTorch's at::parallel_for
// does. With one set of threads for the whole step, OpenMP's threads may spin for a moment after each
// region, ready for the next kernel, whoever's it is. With a second pool of tessera's own, they had
// to sleep (OMP_WAIT_POLICY=passive) or they would take the cores from it, and every kernel of a step
// then paid a sleep and a wake-up per thread (7% of a ResNet-20 step's cycles went to try_to_wake_up
// under `perf`).
//
// The split is ThreadPool's (Split): [0, n) in one contiguous chunk per thread, chunk t to thread t, so the
// results do not depend on timing; where OpenMP gives fewer threads than asked (a loop inside another
// parallel region), each thread takes every team-size-th chunk, so every chunk still runs once.
#include <omp.h>

#include <algorithm>
#include <cstddef>
#include <exception>
#include <mutex>

#include "tessera/core/thread_pool.hpp"

namespace tessera::cpu {

class OpenMpThreads {
public:
    explicit OpenMpThreads(int threads) : size_(std::max(1, threads)) {}

    int size() const { return size_; }

    /// Calls body(begin, end) over chunks of [0, n); chunks smaller than `grain` are not split further.
    /// An exception thrown by the body is rethrown here, once every chunk has ended.
    template <class Body>
    void parallel_for(std::size_t n, const Body& body, std::size_t grain = 1) const {
        const Split split(n, std::size_t(size_), grain);
        const std::size_t chunks = split.chunks;
        if (chunks <= 1 || n == 0) {
            if (n) body(std::size_t(0), n);
            return;
        }
        std::exception_ptr failure;
        std::mutex failure_mutex;
#pragma omp parallel num_threads(int(chunks))
        {
            const std::size_t team = std::size_t(omp_get_num_threads());
            for (std::size_t t = std::size_t(omp_get_thread_num()); t < chunks; t += team) {
                try {
                    body(split.begin(t), split.end(t));
                } catch (...) {  // an exception must not leave an OpenMP region (std::terminate)
                    std::lock_guard lock(failure_mutex);
                    if (!failure) failure = std::current_exception();
                }
            }
        }
        if (failure) std::rethrow_exception(failure);
    }

private:
    int size_;
};

}  // namespace tessera::cpu
