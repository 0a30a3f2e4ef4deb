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
#include "tessera/dist/communicator.hpp"
#include "tessera/dist/gradient_reducer.hpp"

#define TESSERA_NCCL(call)                                                                                              \
    do {                                                                                                                \
        const ncclResult_t tessera_nccl_result = (call);                                                                \
        if (tessera_nccl_result != ncclSuccess)                                                                         \
            throw ::tessera::internal_error(std::string(__FILE__) + ":" + std::to_string(__LINE__),                    \
                                            std::string(#call) + ": " + ncclGetErrorString(tessera_nccl_result));        \
    } while (0)

#define TESSERA_CUDA_RT(call)                                                                                           \
    do {                                                                                                                \
        const cudaError_t tessera_cuda_result = (call);                                                                 \
        if (tessera_cuda_result != cudaSuccess)                                                                         \
            throw ::tessera::internal_error(std::string(__FILE__) + ":" + std::to_string(__LINE__),                    \
                                            std::string(#call) + ": " + cudaGetErrorString(tessera_cuda_result));        \
    } while (0)

namespace tessera::dist {

class NcclCommunicator final : public Communicator {
public:
    /// The ranks of `host` (an MPI world), one GPU each: `device`, usually the local rank.
    NcclCommunicator(const Communicator& host, int device) : host_(host.duplicate()), device_(device) {
        ncclUniqueId id{};
        if (host_->is_root()) TESSERA_NCCL(ncclGetUniqueId(&id));
        host_->broadcast(&id, sizeof id, 0);
        TESSERA_CUDA_RT(cudaSetDevice(device_));
        TESSERA_NCCL(ncclCommInitRank(&comm_, host_->size(), id, host_->rank()));
    }
    ~NcclCommunicator() override {
        if (comm_) ncclCommDestroy(comm_);
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
    void all_reduce_sum(float* data, std::size_t count, void* stream) override {
        TESSERA_NCCL(ncclAllReduce(data, data, count, ncclFloat, ncclSum, comm_, static_cast<cudaStream_t>(stream)));
    }
    void all_reduce_average(float* data, std::size_t count, void* stream) override {
        TESSERA_NCCL(ncclAllReduce(data, data, count, ncclFloat, ncclAvg, comm_, static_cast<cudaStream_t>(stream)));
    }
    void broadcast(void* data, std::size_t bytes, int root) override { host_->broadcast(data, bytes, root); }
    void barrier() override { host_->barrier(); }
    [[noreturn]] void abort(int code) override {
        ncclCommAbort(comm_);
        comm_ = nullptr;
        host_->abort(code);
    }
    std::unique_ptr<Communicator> duplicate() const override { return std::make_unique<NcclCommunicator>(*host_, device_); }

private:
    std::unique_ptr<Communicator> host_;
    int device_;
    ncclComm_t comm_ = nullptr;
};

/// GradientReducer's device twin (see dist/gradient_reducer.hpp for the bucketing).
class DeviceGradientReducer final : public GradientAverager {
public:
    DeviceGradientReducer(Communicator& comm, float* grads, std::size_t count, std::size_t bucket_bytes, void* compute_stream)
        : comm_(comm), grads_(grads), buckets_(grads, count, bucket_bytes), compute_(static_cast<cudaStream_t>(compute_stream)),
          sent_(buckets_.size()), produced_(buckets_.size()) {
        TESSERA_CHECK(comm.device_memory(), "DeviceGradientReducer needs a communicator of device memory (NCCL)");
        TESSERA_CUDA_RT(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
        for (auto& e : produced_) TESSERA_CUDA_RT(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
        TESSERA_CUDA_RT(cudaEventCreateWithFlags(&reduced_, cudaEventDisableTiming));
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
        TESSERA_CUDA_RT(cudaEventRecord(reduced_, stream_));
        TESSERA_CUDA_RT(cudaStreamWaitEvent(compute_, reduced_, 0));
    }

private:
    // The bucket's all-reduce, on the reducer's stream, after the compute stream has produced it.
    void send(std::size_t b) {
        if (sent_[b]) return;
        sent_[b] = true;
        TESSERA_CUDA_RT(cudaEventRecord(produced_[b], compute_));
        TESSERA_CUDA_RT(cudaStreamWaitEvent(stream_, produced_[b], 0));
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

}  // namespace tessera::dist
