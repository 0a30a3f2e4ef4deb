// Arena, random numbers, the epoch order of samples, and the threads kernels run on.
#include <algorithm>
#include <atomic>
#include <mutex>
#include <set>
#include <stdexcept>
#include <utility>
#include <vector>

#include "helpers.hpp"
#include "tessera/backend/cpu/openmp_threads.hpp"
#include "tessera/core/arena.hpp"
#include "tessera/core/thread_pool.hpp"
#include "tessera/data/sampler.hpp"

namespace tessera::test {
namespace {

TEST(Arena, SecondStepAllocatesNothingNew) {
    Arena arena;
    auto step = [&] {
        arena.reset();
        float* a = arena.allocate_floats(1000);
        auto m = arena.mark();
        arena.allocate_floats(1 << 20);  // scratch, spills into a new block the first time
        arena.release(m);
        float* b = arena.allocate_floats(5000);
        EXPECT_EQ(reinterpret_cast<std::uintptr_t>(a) % Arena::alignment, 0u);
        EXPECT_NE(a, b);
    };
    step();
    const std::size_t capacity = arena.capacity_bytes();
    step();
    step();
    EXPECT_EQ(arena.capacity_bytes(), capacity);  // merged into one block, reused from then on
    EXPECT_GE(arena.peak_bytes(), (1000 + (1 << 20)) * sizeof(float));
}

TEST(Rng, TheReferenceSequenceAndNormalMoments) {
    // The first draws of seed 42, from Vigna's xoshiro256** seeded by splitmix64, written out in
    // Python apart from this code: a resumed run draws what the interrupted one would have, on any
    // machine and in any later version.
    Rng a(42);
    EXPECT_EQ(a.next(), 0x15780b2e0c2ec716ull);
    EXPECT_EQ(a.next(), 0x6104d9866d113a7eull);
    EXPECT_EQ(a.next(), 0xae17533239e499a1ull);
    Rng g(1);
    double sum = 0, sum_sq = 0;
    const int n = 200000;
    for (int i = 0; i < n; ++i) {
        const double v = g.normal();
        sum += v;
        sum_sq += v * v;
    }
    EXPECT_NEAR(sum / n, 0.0, 0.01);
    EXPECT_NEAR(sum_sq / n, 1.0, 0.01);
}

TEST(Sampler, ShardsCoverEverySampleOnceAndDependOnlyOnSeedAndEpoch) {
    const std::int64_t size = 103;
    std::multiset<std::int64_t> seen;
    for (int rank = 0; rank < 4; ++rank) {
        auto shard = data::epoch_order(size, true, 9, 2, rank, 4);
        EXPECT_EQ(shard.size(), 26u);  // padded to 104 = 4 x 26
        seen.insert(shard.begin(), shard.end());
    }
    for (std::int64_t i = 0; i < size; ++i) EXPECT_GE(seen.count(i), 1u);
    EXPECT_EQ(seen.size(), 104u);
    // The order is DistributedSampler's: one permutation of (seed, epoch), dealt out to the ranks.
    const auto whole = data::epoch_order(size, true, 9, 2, 0, 1);
    for (int rank = 0; rank < 4; ++rank) {
        const auto shard = data::epoch_order(size, true, 9, 2, rank, 4);
        for (std::size_t i = 0; i < shard.size(); ++i)
            EXPECT_EQ(shard[i], whole[(4 * i + std::size_t(rank)) % 103]) << rank << " " << i;
    }
    // Its first indices for seed 9, epoch 2: Fisher-Yates over the same reference generator (derived
    // as Rng::derive does), written out in Python. A changed shuffle would resume runs on other samples.
    EXPECT_EQ(std::vector<std::int64_t>(whole.begin(), whole.begin() + 12),
              (std::vector<std::int64_t>{75, 85, 47, 38, 83, 64, 69, 76, 70, 91, 11, 22}));
    EXPECT_NE(whole, data::epoch_order(size, true, 9, 3, 0, 1));
    EXPECT_NE(whole, data::epoch_order(size, true, 10, 2, 0, 1));
    std::int64_t val_total = 0;
    for (int rank = 0; rank < 4; ++rank) val_total += std::int64_t(data::validation_order(size, rank, 4).size());
    EXPECT_EQ(val_total, size);
}

// Threads that cannot be created (a container's limits, a huge --threads) stop the program with a
// message naming the setting, not with std::terminate from a half-built pool.
TEST(ThreadPool, ThreadsThatCannotStartAreAUserError) {
#ifdef __SANITIZE_ADDRESS__
    GTEST_SKIP()
        << "AddressSanitizer's shadow memory does not fit an address-space limit, and its allocator aborts where "
           "malloc would fail";
#endif
    EXPECT_EQ(exit_code_in_child(std::size_t(256) << 20,
                                 [] {
                                     ThreadPool pool(512);  // 8 MiB of stack each, in 256 MiB of room
                                     return 0;
                                 }),
              2);
    EXPECT_EQ(exit_code_in_child(std::size_t(256) << 20,
                                 [] {
                                     ThreadPool pool(4);
                                     return pool.size() == 4 ? 0 : 1;
                                 }),
              0)
        << "a pool that fits is made as asked";
}

// The chunks [begin, end) each call of parallel_for made, in order.
std::vector<std::pair<std::size_t, std::size_t>> chunks_of(const cpu::OpenMpThreads& threads, std::size_t n,
                                                           std::size_t grain = 1) {
    std::mutex mutex;
    std::vector<std::pair<std::size_t, std::size_t>> chunks;
    threads.parallel_for(
        n,
        [&](std::size_t begin, std::size_t end) {
            std::lock_guard lock(mutex);
            chunks.emplace_back(begin, end);
        },
        grain);
    std::sort(chunks.begin(), chunks.end());
    return chunks;
}

TEST(OpenMpThreads, SplitsIntoOneContiguousChunkPerThread) {
    using Chunks = std::vector<std::pair<std::size_t, std::size_t>>;
    const cpu::OpenMpThreads threads(3);
    EXPECT_EQ(chunks_of(threads, 10), (Chunks{{0, 3}, {3, 6}, {6, 10}})) << "ThreadPool's split, fixed by n alone";
    EXPECT_EQ(chunks_of(threads, 2), (Chunks{{0, 1}, {1, 2}}));
    EXPECT_EQ(chunks_of(threads, 10, 8), (Chunks{{0, 10}})) << "chunks smaller than the grain are not split";
    EXPECT_EQ(chunks_of(threads, 0), Chunks{});
}

TEST(OpenMpThreads, EveryChunkRunsOnceInsideAnotherParallelRegion) {
    // Inside a parallel region OpenMP gives a nested one a single thread: it must still run every chunk.
    const cpu::OpenMpThreads outer(2), inner(4);
    std::vector<std::vector<std::pair<std::size_t, std::size_t>>> seen(2);
    outer.parallel_for(2, [&](std::size_t begin, std::size_t) { seen[begin] = chunks_of(inner, 8); });
    for (const auto& chunks : seen)
        EXPECT_EQ(chunks, (std::vector<std::pair<std::size_t, std::size_t>>{{0, 2}, {2, 4}, {4, 6}, {6, 8}}));
}

TEST(OpenMpThreads, AnExceptionInAChunkReachesTheCaller) {
    const cpu::OpenMpThreads threads(2);
    std::atomic<int> ran{0};
    EXPECT_THROW(threads.parallel_for(2,
                                      [&](std::size_t begin, std::size_t) {
                                          ++ran;
                                          if (begin == 1) throw std::runtime_error("chunk 1");
                                      }),
                 std::runtime_error);
    EXPECT_EQ(ran.load(), 2) << "the other chunk still ran to its end";
}

}  // namespace
}  // namespace tessera::test
