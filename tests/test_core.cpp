// Arena, random numbers and the epoch order of samples.
#include <algorithm>
#include <set>

#include "helpers.hpp"
#include "tessera/core/arena.hpp"
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

TEST(Rng, SameSeedSameNumbersAndNormalMoments) {
    Rng a(42), b(42), c(43);
    EXPECT_EQ(a.next(), b.next());
    EXPECT_NE(a.next(), c.next());
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
    EXPECT_EQ(data::epoch_order(size, true, 9, 2, 0, 1), data::epoch_order(size, true, 9, 2, 0, 1));
    EXPECT_NE(data::epoch_order(size, true, 9, 2, 0, 1), data::epoch_order(size, true, 9, 3, 0, 1));
    std::int64_t val_total = 0;
    for (int rank = 0; rank < 4; ++rank) val_total += std::int64_t(data::validation_order(size, rank, 4).size());
    EXPECT_EQ(val_total, size);
}

}  // namespace
}  // namespace tessera::test
