#pragma once
// NCCL for GPU gradients: NcclCommunicator (one GPU per rank, bootstrapped by broadcasting NCCL's
// unique id over MPI) and DeviceGradientReducer, which all-reduces gradient buckets on a stream of
// its own as backward produces them, each bucket waiting on an event recorded on the compute stream;
// finish() makes the compute stream wait for the last one. Nothing waits on the host.
//
// Needs the CUDA runtime and NCCL (dependency: nccl, found next to nvcc).
#include <cuda_runtime.h>
#include <nccl.h>

#include <memory>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/parallel/communicator.hpp"
#include "tessera/parallel/gradient_reducer.hpp"

namespace tessera::parallel::detail {

// NCCL and CUDA runtime calls, checked: a failure names the call, the file and the line.
inline void check(ncclResult_t status, const char* call, const char* file, int line) {
    if (status != ncclSuccess)
        throw internal_error(std::string(file) + ":" + std::to_string(line),
                             std::string(call) + ": " + ncclGetErrorString(status));
}
inline void check(cudaError_t status, const char* call, const char* file, int line) {
    if (status != cudaSuccess)
        throw internal_error(std::string(file) + ":" + std::to_string(line),
                             std::string(call) + ": " + cudaGetErrorString(status));
}

}  // namespace tessera::parallel::detail

#define TESSERA_NCCL(call) ::tessera::parallel::detail::check((call), #call, __FILE__, __LINE__)

namespace tessera::parallel {

// Every device collective of one communicator runs on the communicator's own stream, in the order
// the process issued it, as PyTorch's ProcessGroupNCCL does: the gradient buckets (issued from the
// reducer's stream) and synchronised BatchNorm's sums (from the compute stream) then run in the same
// order on every rank, which two streams sharing one NCCL communicator would not promise. The
// caller's stream waits for the collective; the host never does.
class NcclCommunicator final : public Communicator {
public:
    /// The ranks of `host` (an MPI world), one GPU each: `device`, usually the local rank.
    NcclCommunicator(const Communicator& host, int device) : host_(host.duplicate()), device_(device) {
        ncclUniqueId id{};
        if (host_->is_root()) TESSERA_NCCL(ncclGetUniqueId(&id));
        host_->broadcast(&id, sizeof id, 0);
        TESSERA_NCCL(cudaSetDevice(device_));
        TESSERA_NCCL(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()));
        TESSERA_NCCL(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        TESSERA_NCCL(cudaEventCreateWithFlags(&issued_, cudaEventDisableTiming));
        TESSERA_NCCL(cudaEventCreateWithFlags(&done_, cudaEventDisableTiming));
    }
    ~NcclCommunicator() override {
        if (comm_) ncclCommDestroy(comm_);
        cudaEventDestroy(issued_);
        cudaEventDestroy(done_);
        cudaStreamDestroy(stream_);
    }
    NcclCommunicator(const NcclCommunicator&) = delete;
    NcclCommunicator& operator=(const NcclCommunicator&) = delete;

    int rank() const override { return host_->rank(); }
    int size() const override { return host_->size(); }
    int local_rank() const override { return host_->local_rank(); }
    int local_size() const override { return host_->local_size(); }
    std::string name() const override { return "NCCL"; }
    bool device_memory() const override { return true; }
    bool concurrent() const override { return true; }

    void all_reduce_sum(double* data, std::size_t count) override { host_->all_reduce_sum(data, count); }
    void all_reduce_sum(double* data, std::size_t count, void* stream) override {
        in_order(stream, [&] { TESSERA_NCCL(ncclAllReduce(data, data, count, ncclDouble, ncclSum, comm_, stream_)); });
    }
    void all_reduce_sum(float* data, std::size_t count, void* stream) override {
        in_order(stream, [&] { TESSERA_NCCL(ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, stream_)); });
    }
    void all_reduce_average(float* data, std::size_t count, void* stream) override {
        in_order(stream, [&] { TESSERA_NCCL(ncclAllReduce(data, data, count, ncclFloat, ncclAvg, comm_, stream_)); });
    }
    void broadcast(void* data, std::size_t bytes, int root) override { host_->broadcast(data, bytes, root); }
    void barrier() override { host_->barrier(); }
    [[noreturn]] void abort(int code) override {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        host_->abort(code);
        std::abort();  // not reached: the host world's abort ends the process, behind a virtual call
    }
    std::unique_ptr<Communicator> duplicate() const override {
        return std::make_unique<NcclCommunicator>(*host_, device_);
    }

private:
    // `collective` on the communicator's stream, after what `caller` has issued so far; `caller`
    // then waits for it.
    template <class Collective>
    void in_order(void* caller, Collective collective) {
        const auto caller_stream = static_cast<cudaStream_t>(caller);
        TESSERA_NCCL(cudaEventRecord(issued_, caller_stream));
        TESSERA_NCCL(cudaStreamWaitEvent(stream_, issued_, 0));
        collective();
        TESSERA_NCCL(cudaEventRecord(done_, stream_));
        TESSERA_NCCL(cudaStreamWaitEvent(caller_stream, done_, 0));
    }

    std::unique_ptr<Communicator> host_;
    int device_;
    ncclComm_t comm_ = nullptr;
    cudaStream_t stream_ = nullptr;
    cudaEvent_t issued_ = nullptr, done_ = nullptr;
};

/// GradientReducer's device twin (see parallel/gradient_reducer.hpp for the bucketing).
class DeviceGradientReducer final : public GradientAverager {
public:
    DeviceGradientReducer(Communicator& comm, float* grads, std::size_t count, std::size_t bucket_bytes,
                          void* compute_stream)
        : comm_(comm), grads_(grads), buckets_(grads, count, bucket_bytes),
          compute_(static_cast<cudaStream_t>(compute_stream)), sent_(buckets_.size()), produced_(buckets_.size()) {
        TESSERA_CHECK(comm.device_memory(), "DeviceGradientReducer needs a communicator of device memory (NCCL)");
        TESSERA_NCCL(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        for (auto& e : produced_) TESSERA_NCCL(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        TESSERA_NCCL(cudaEventCreateWithFlags(&reduced_, cudaEventDisableTiming));
    }
    ~DeviceGradientReducer() override {
        for (auto& e : produced_) cudaEventDestroy(e);
        cudaEventDestroy(reduced_);
        cudaStreamDestroy(stream_);
    }
    DeviceGradientReducer(const DeviceGradientReducer&) = delete;
    DeviceGradientReducer& operator=(const DeviceGradientReducer&) = delete;

    void begin_step() override {
        buckets_.reset();
        std::fill(sent_.begin(), sent_.end(), false);
    }

    void ready(const float* grad, std::size_t count) override {
        buckets_.ready(grad, count, [&](std::size_t b) { send(b); });
    }

    void finish() override {
        for (std::size_t b = 0; b < buckets_.size(); ++b) send(b);
        TESSERA_NCCL(cudaEventRecord(reduced_, stream_));
        TESSERA_NCCL(cudaStreamWaitEvent(compute_, reduced_, 0));
    }

private:
    // The bucket's all-reduce, on the reducer's stream, after the compute stream has produced it.
    void send(std::size_t b) {
        if (sent_[b]) return;
        sent_[b] = true;
        TESSERA_NCCL(cudaEventRecord(produced_[b], compute_));
        TESSERA_NCCL(cudaStreamWaitEvent(stream_, produced_[b], 0));
        comm_.all_reduce_average(grads_ + buckets_.first(b), buckets_.length(b), stream_);
    }

    Communicator& comm_;
    float* grads_;
    Buckets buckets_;
    cudaStream_t compute_, stream_ = nullptr;
    std::vector<bool> sent_;
    std::vector<cudaEvent_t> produced_;
    cudaEvent_t reduced_ = nullptr;
};

}  // namespace tessera::parallel
