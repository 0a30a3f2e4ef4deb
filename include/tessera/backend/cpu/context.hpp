#pragma once
// The CPU backend's per-run state: the worker threads, the step's arena and oneDNN's primitives.
#include <omp.h>

#include "tessera/backend/cpu/gemm.hpp"
#include "tessera/backend/cpu/onednn_conv.hpp"
#include "tessera/backend/cpu/openmp_threads.hpp"
#include "tessera/core/arena.hpp"
#include "tessera/core/thread_pool.hpp"
#include "tessera/parallel/communicator.hpp"

namespace tessera::cpu {

struct Context {
    explicit Context(int threads = ThreadPool::default_threads(), DType activations_ = DType::f32)
        : activations(activations_), pool(threads) {
        set_gemm_threads(threads);
        omp_set_num_threads(threads);  // oneDNN's threads (Debian's oneDNN runs on OpenMP)
    }

    // The activations' type and their gradients': fp32, or bf16 for mixed precision (fp32 weights,
    // gradients of the weights and statistics) on CPUs with bf16 instructions (runner's make_context
    // checks).
    DType activations = DType::f32;

    OpenMpThreads pool;  // every kernel's loops, on oneDNN's (OpenMP's) threads
    Arena arena;         // activations and scratch of one step
    TensorPool grads;    // gradients flowing back, each freed once the layer below has used it
    OneDnnConvs onednn;
    bool training = true;
    // Set by Seq and Repeat for the child they call: its input is a tensor no one else holds, so a
    // ReLU may overwrite it (see layers/activation.hpp).
    bool input_is_private = false;
    // The network's input needs no gradient: the first layer checks this and skips its dx.
    const float* network_input = nullptr;
    // Data parallelism: told when each gradient is final (its all-reduce can start), and the ranks
    // BatchNorm computes its statistics over when synchronised (null: this process's batch alone).
    parallel::GradientHook* gradient_hook = nullptr;
    parallel::Communicator* batchnorm_group = nullptr;
};

}  // namespace tessera::cpu
