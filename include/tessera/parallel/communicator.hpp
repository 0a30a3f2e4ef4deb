#pragma once
// Communicator: what data-parallel training needs from the processes it runs in. Three of them:
// Single (a world of one: every call is a no-op), MpiCommunicator (parallel/mpi.hpp: CPU buffers, and
// the launch: mpirun, srun) and NcclCommunicator (GPU buffers, bootstrapped over MPI).
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace tessera::parallel {

class Communicator {
public:
    virtual ~Communicator() = default;
    virtual int rank() const = 0;
    virtual int size() const = 0;
    /// This process's rank among those on its machine (the GPU it drives), and how many there are.
    virtual int local_rank() const = 0;
    virtual int local_size() const = 0;
    virtual std::string name() const = 0;

    /// Sums across ranks, in place, in host memory: metrics, BatchNorm statistics, counts.
    virtual void all_reduce_sum(double* data, std::size_t count) = 0;
    /// Sums gradients across ranks, in place, in the memory this communicator works on (host for
    /// MPI; device for NCCL, on `stream`, without waiting for it).
    virtual void all_reduce_sum(float* data, std::size_t count, void* stream) = 0;
    /// Sums doubles across ranks, in place, in the memory this communicator works on, on `stream`:
    /// synchronised BatchNorm's per-channel sums, which on a GPU never leave the device.
    virtual void all_reduce_sum(double* data, std::size_t count, void* /*stream*/) { all_reduce_sum(data, count); }
    /// The same, divided by the number of ranks: the mean gradient.
    virtual void all_reduce_average(float* data, std::size_t count, void* stream) {
        all_reduce_sum(data, count, stream);
        const float scale = 1.f / float(size());
        for (std::size_t i = 0; i < count; ++i) data[i] *= scale;
    }
    /// Whether the float collectives work on GPU memory (NCCL) rather than host memory.
    virtual bool device_memory() const { return false; }
    virtual void broadcast(void* data, std::size_t bytes, int root) = 0;
    virtual void barrier() = 0;
    /// Ends every rank's process now, with `code`: one rank's failure must never leave the others
    /// waiting in a collective.
    [[noreturn]] virtual void abort(int code) = 0;
    /// A second channel over the same ranks, whose collectives never mix with this one's: for a
    /// thread that all-reduces gradients while the main thread synchronises BatchNorm.
    virtual std::unique_ptr<Communicator> duplicate() const = 0;
    /// Whether two threads may run collectives at once, each on its own duplicate.
    virtual bool concurrent() const { return false; }

    bool is_root() const { return rank() == 0; }
};

/// Rank `root`'s named float vectors (an optimizer's state) on every rank of `comm`, whatever the
/// others held: the names and sizes first, then each vector.
inline void broadcast(Communicator& comm, std::map<std::string, std::vector<float>>& tensors, int root) {
    const bool sending = comm.rank() == root;
    std::uint64_t entries = tensors.size();
    comm.broadcast(&entries, sizeof entries, root);
    std::map<std::string, std::vector<float>> received;
    auto it = tensors.begin();
    for (std::uint64_t e = 0; e < entries; ++e) {
        std::string name = sending ? it->first : std::string();
        std::vector<float> values = sending ? it->second : std::vector<float>{};
        std::uint64_t sizes[2] = {name.size(), values.size()};
        comm.broadcast(sizes, sizeof sizes, root);
        name.resize(sizes[0]);
        values.resize(sizes[1]);
        comm.broadcast(name.data(), name.size(), root);
        comm.broadcast(values.data(), values.size() * sizeof(float), root);
        if (sending)
            ++it;
        else
            received[name] = std::move(values);
    }
    if (!sending) tensors = std::move(received);
}

/// A world of one: the run without a launcher, which never touches MPI.
class Single final : public Communicator {
public:
    int rank() const override { return 0; }
    int size() const override { return 1; }
    int local_rank() const override { return 0; }
    int local_size() const override { return 1; }
    std::string name() const override { return "single process"; }
    using Communicator::all_reduce_sum;
    void all_reduce_sum(double*, std::size_t) override {}
    void all_reduce_sum(float*, std::size_t, void*) override {}
    void broadcast(void*, std::size_t, int) override {}
    void barrier() override {}
    [[noreturn]] void abort(int code) override { std::_Exit(code); }
    std::unique_ptr<Communicator> duplicate() const override { return std::make_unique<Single>(); }
};

/// Whether a launcher that MPI can join started this process: mpirun (Open MPI, MPICH/Hydra) or
/// srun with PMI/PMIx. Read from the environment alone, so that a plain run never touches MPI.
inline bool launched_by_mpi() {
    for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS"})
        if (std::getenv(v)) return true;
    return false;
}

/// A hook the layers call once a parameter's gradient is final in this step's backward, so that
/// its all-reduce can start while backward goes on (parallel/gradient_reducer.hpp).
class GradientHook {
public:
    virtual ~GradientHook() = default;
    virtual void ready(const float* grad, std::size_t count) = 0;
};

/// What the trainer asks of a gradient reducer: reset before backward, the hook during it, and
/// after it the mean gradient over the ranks (ready for the optimizer, on the host or on the
/// device's compute stream).
class GradientAverager : public GradientHook {
public:
    virtual void begin_step() = 0;
    virtual void finish() = 0;
};

}  // namespace tessera::parallel
