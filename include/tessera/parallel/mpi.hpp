#pragma once
// MpiCommunicator: the processes mpirun or srun started, one per GPU (or per CPU socket), joined
// through MPI. Collectives on host buffers; NCCL bootstraps over it.
//
// A process started without a launcher is a world of one and never calls into MPI (see
// launched_by_mpi() in communicator.hpp).
// tessera calls MPI's C API only; Open MPI's deprecated C++ bindings would otherwise come along
// (and warn under -Wextra).
#ifndef OMPI_SKIP_MPICXX
#define OMPI_SKIP_MPICXX 1
#endif
#include <mpi.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <string>

#include "tessera/core/error.hpp"
#include "tessera/parallel/communicator.hpp"

namespace tessera::parallel {

class MpiCommunicator final : public Communicator {
public:
    /// Joins the launcher's world (initialising MPI, which the destructor finalises).
    MpiCommunicator() {
        int initialised = 0;
        MPI_Initialized(&initialised);
        if (!initialised) {
            int provided = MPI_THREAD_SINGLE;
            MPI_Init_thread(nullptr, nullptr, MPI_THREAD_MULTIPLE, &provided);
            concurrent_ = provided == MPI_THREAD_MULTIPLE;
            finalise_ = true;
        }
        MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
        describe();
    }
    ~MpiCommunicator() override {
        MPI_Comm_free(&comm_);
        if (finalise_) MPI_Finalize();
    }
    MpiCommunicator(const MpiCommunicator&) = delete;
    MpiCommunicator& operator=(const MpiCommunicator&) = delete;

    int rank() const override { return rank_; }
    int size() const override { return size_; }
    int local_rank() const override { return local_rank_; }
    int local_size() const override { return local_size_; }
    std::string name() const override { return "MPI"; }
    /// Whether two threads may run collectives at once, each on its own duplicate (MPI_THREAD_MULTIPLE).
    bool concurrent() const override { return concurrent_; }

    using Communicator::all_reduce_sum;
    void all_reduce_sum(double* data, std::size_t count) override { chunked(data, count, MPI_DOUBLE); }
    void all_reduce_sum(float* data, std::size_t count, void*) override { chunked(data, count, MPI_FLOAT); }

    void broadcast(void* data, std::size_t bytes, int root) override {
        auto* p = static_cast<char*>(data);
        for (std::size_t done = 0; done < bytes;) {
            const int n = int(std::min<std::size_t>(bytes - done, INT_MAX));
            MPI_Bcast(p + done, n, MPI_BYTE, root, comm_);
            done += std::size_t(n);
        }
    }

    void barrier() override { MPI_Barrier(comm_); }
    [[noreturn]] void abort(int code) override {
        MPI_Abort(MPI_COMM_WORLD, code);
        std::_Exit(code);
    }

    std::unique_ptr<Communicator> duplicate() const override {
        return std::unique_ptr<Communicator>(new MpiCommunicator(comm_, concurrent_));
    }

private:
    MpiCommunicator(MPI_Comm from, bool concurrent) : concurrent_(concurrent) {
        MPI_Comm_dup(from, &comm_);
        describe();
    }

    void describe() {
        MPI_Comm_rank(comm_, &rank_);
        MPI_Comm_size(comm_, &size_);
        MPI_Comm local;
        MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &local);
        MPI_Comm_rank(local, &local_rank_);
        MPI_Comm_size(local, &local_size_);
        MPI_Comm_free(&local);
    }

    template <class T>
    void chunked(T* data, std::size_t count, MPI_Datatype type) {
        for (std::size_t done = 0; done < count;) {
            const int n = int(std::min<std::size_t>(count - done, INT_MAX));
            MPI_Allreduce(MPI_IN_PLACE, data + done, n, type, MPI_SUM, comm_);
            done += std::size_t(n);
        }
    }

    MPI_Comm comm_ = MPI_COMM_NULL;
    int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
    bool concurrent_ = false, finalise_ = false;
};

}  // namespace tessera::parallel
