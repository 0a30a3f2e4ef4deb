#pragma once
// Arena: the memory of one training step. Activations saved for backward and scratch (im2col
// columns) are carved from it with a bump pointer and released all at once when the step ends.
// The first step at a new batch shape measures what it needs; from then on the arena is one block
// of that size and a step allocates nothing. TensorPool: the gradients flowing back, each freed
// as soon as it has been used.
#include <algorithm>
#include <cstddef>
#include <cstdlib>
#include <memory>
#include <new>
#include <vector>

#include "tessera/core/tensor.hpp"

namespace tessera {

/// Where blocks come from: aligned host memory here, device memory for the CUDA backend.
inline constexpr std::size_t memory_alignment = 256;  // a cache line on the CPU, a cuDNN-friendly boundary on the GPU

struct HostMemory {
    static void* allocate(std::size_t bytes) { return std::aligned_alloc(memory_alignment, bytes); }
    static void free(void* p) { std::free(p); }
};

/// One allocation of Memory, its size rounded up to the alignment, freed when the block goes.
template <class Memory>
struct MemoryBlock {
    struct Free {
        void operator()(std::byte* p) const { Memory::free(p); }
    };
    std::unique_ptr<std::byte, Free> data;
    std::size_t bytes = 0;

    static std::size_t round_up(std::size_t bytes) {
        return (bytes + memory_alignment - 1) / memory_alignment * memory_alignment;
    }
    static MemoryBlock make(std::size_t bytes) {
        bytes = round_up(std::max<std::size_t>(bytes, 1));
        auto* p = static_cast<std::byte*>(Memory::allocate(bytes));
        if (!p) throw std::bad_alloc();
        return MemoryBlock{std::unique_ptr<std::byte, Free>(p), bytes};
    }
};

/// An arena over Memory (HostMemory, or device memory for the CUDA backend).
template <class Memory>
class BasicArena {
public:
    static constexpr std::size_t alignment = memory_alignment;

    struct Mark {
        std::size_t block, offset;
    };

    BasicArena() = default;
    BasicArena(const BasicArena&) = delete;
    BasicArena& operator=(const BasicArena&) = delete;

    /// Room for `count` floats, aligned.
    float* allocate_floats(std::size_t count) { return allocate_bytes(count * sizeof(float)); }

    /// Room for `bytes` bytes, aligned (as a float pointer: the handle a Tensor holds).
    float* allocate_bytes(std::size_t bytes) {
        bytes = round_up(std::max<std::size_t>(bytes, 1));
        if (blocks_.empty() || blocks_[current_].bytes - offset_ < bytes) next_block(bytes);
        float* p = reinterpret_cast<float*>(blocks_[current_].data.get() + offset_);
        offset_ += bytes;
        peak_ = std::max(peak_, in_use());
        return p;
    }

    Tensor tensor(Shape shape, DType dtype = DType::f32) {
        return Tensor{allocate_bytes(shape.size() * element_bytes(dtype)), shape, dtype};
    }

    /// Scratch space is released in LIFO order: mark, allocate, release(mark).
    Mark mark() const { return {current_, offset_}; }
    void release(Mark m) {
        current_ = m.block;
        offset_ = m.offset;
    }

    /// End of a step: everything is free again. If the step spilled into more than one block, the
    /// blocks are replaced by one that holds the most any step has used, so the next step allocates
    /// nothing.
    void reset() {
        if (blocks_.size() > 1) {
            blocks_.clear();
            blocks_.push_back(Block::make(peak_));
        }
        used_.assign(blocks_.size(), 0);
        current_ = 0;
        offset_ = 0;
    }

    std::size_t in_use() const {
        std::size_t bytes = offset_;
        for (std::size_t b = 0; b < current_; ++b) bytes += used_[b];
        return bytes;
    }

    std::size_t capacity_bytes() const {
        std::size_t total = 0;
        for (auto& b : blocks_) total += b.bytes;
        return total;
    }
    std::size_t peak_bytes() const { return peak_; }

private:
    using Block = MemoryBlock<Memory>;
    static std::size_t round_up(std::size_t bytes) { return Block::round_up(bytes); }

    void next_block(std::size_t bytes) {
        if (!blocks_.empty()) used_[current_] = offset_;
        // Reuse a later block that fits (one left by release()), or append one that at least
        // doubles what we hold, so a growing step needs few of them.
        for (std::size_t b = blocks_.empty() ? 0 : current_ + 1; b < blocks_.size(); ++b) {
            if (blocks_[b].bytes >= bytes) {
                for (std::size_t skipped = current_ + 1; skipped < b; ++skipped) used_[skipped] = 0;
                current_ = b;
                offset_ = 0;
                return;
            }
        }
        for (std::size_t skipped = current_ + 1; skipped < blocks_.size(); ++skipped) used_[skipped] = 0;
        blocks_.push_back(Block::make(std::max(bytes, capacity_bytes())));
        used_.push_back(0);
        current_ = blocks_.size() - 1;
        offset_ = 0;
    }

    std::vector<Block> blocks_;
    std::vector<std::size_t> used_;  // bytes used in each block when the step moved past it
    std::size_t current_ = 0, offset_ = 0, peak_ = 0;
};

using Arena = BasicArena<HostMemory>;

/// Gradients flowing back through a network live only until the layer below has used them, so
/// they come from a pool instead of the step's arena: acquire() takes the smallest free block that
/// fits (allocating one only when none does), release() gives it back. Every step asks for the same
/// sizes in the same order, so from the second step on nothing is allocated, and the pool holds only
/// as many blocks as there are gradients alive at once.
template <class Memory>
class BasicTensorPool {
public:
    BasicTensorPool() = default;
    BasicTensorPool(const BasicTensorPool&) = delete;
    BasicTensorPool& operator=(const BasicTensorPool&) = delete;

    Tensor acquire(Shape shape, DType dtype = DType::f32) {
        const std::size_t bytes = shape.size() * element_bytes(dtype);
        Block* best = nullptr;
        for (auto& b : blocks_)
            if (!b.used && b.memory.bytes >= bytes && (!best || b.memory.bytes < best->memory.bytes)) best = &b;
        if (!best) {
            blocks_.push_back({MemoryBlock<Memory>::make(bytes), false});
            best = &blocks_.back();
        }
        best->used = true;
        in_use_ += best->memory.bytes;
        peak_ = std::max(peak_, in_use_);
        return Tensor{reinterpret_cast<float*>(best->memory.data.get()), shape, dtype};
    }

    /// Gives back a tensor from acquire(); a tensor from elsewhere (or none) is ignored.
    void release(const Tensor& t) {
        for (auto& b : blocks_) {
            if (b.used && reinterpret_cast<float*>(b.memory.data.get()) == t.data) {
                b.used = false;
                in_use_ -= b.memory.bytes;
                return;
            }
        }
    }

    /// Start of a step: whatever a step left behind is free again.
    void reset() {
        for (auto& b : blocks_) b.used = false;
        in_use_ = 0;
    }

    std::size_t capacity_bytes() const {
        std::size_t total = 0;
        for (auto& b : blocks_) total += b.memory.bytes;
        return total;
    }
    std::size_t peak_bytes() const { return peak_; }

private:
    struct Block {
        MemoryBlock<Memory> memory;
        bool used;
    };
    std::vector<Block> blocks_;
    std::size_t in_use_ = 0, peak_ = 0;
};

using TensorPool = BasicTensorPool<HostMemory>;

}  // namespace tessera
