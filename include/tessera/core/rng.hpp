#pragma once
// Rng: a small, fast, reproducible generator (xoshiro256**, seeded through splitmix64) with the
// draws training needs. The same seed gives the same numbers on every machine and compiler, which
// std::normal_distribution does not promise.
#include <cmath>
#include <cstdint>
#include <numbers>

namespace tessera {

class Rng {
public:
    explicit Rng(std::uint64_t seed = 0) { reseed(seed); }

    void reseed(std::uint64_t seed) {
        for (auto& word : s_) word = splitmix64(seed);
        has_spare_ = false;
    }

    /// A generator for a sub-stream (an epoch, a worker, a layer) that does not overlap this one.
    static Rng derive(std::uint64_t seed, std::uint64_t a, std::uint64_t b = 0) {
        std::uint64_t x = seed;
        std::uint64_t mixed = splitmix64(x) ^ (a * 0x9E3779B97F4A7C15ull);
        mixed = splitmix64(mixed) ^ (b * 0xC2B2AE3D27D4EB4Full);
        return Rng(mixed);
    }

    std::uint64_t next() {
        const std::uint64_t result = rotl(s_[1] * 5, 7) * 9;
        const std::uint64_t t = s_[1] << 17;
        s_[2] ^= s_[0];
        s_[3] ^= s_[1];
        s_[1] ^= s_[2];
        s_[0] ^= s_[3];
        s_[2] ^= t;
        s_[3] = rotl(s_[3], 45);
        return result;
    }

    /// Uniform in [0, 1).
    double uniform() { return double(next() >> 11) * 0x1.0p-53; }
    double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }
    /// Uniform integer in [0, n).
    std::uint64_t below(std::uint64_t n) { return n ? next() % n : 0; }
    bool coin() { return next() >> 63; }

    /// Standard normal (Box-Muller, both values used).
    double normal() {
        if (has_spare_) {
            has_spare_ = false;
            return spare_;
        }
        double u1 = 0;
        while (u1 <= 0) u1 = uniform();
        double u2 = uniform();
        double r = std::sqrt(-2.0 * std::log(u1));
        spare_ = r * std::sin(2 * std::numbers::pi * u2);
        has_spare_ = true;
        return r * std::cos(2 * std::numbers::pi * u2);
    }

private:
    static std::uint64_t rotl(std::uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
    static std::uint64_t splitmix64(std::uint64_t& x) {
        std::uint64_t z = (x += 0x9E3779B97F4A7C15ull);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        return z ^ (z >> 31);
    }
    std::uint64_t s_[4];
    double spare_ = 0;
    bool has_spare_ = false;
};

}  // namespace tessera
