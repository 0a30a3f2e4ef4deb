#pragma once
// select_cpu_kernels(argv): the process's OpenBLAS and OpenMP (oneDNN's threads) set up for tessera,
// by re-executing the program with a few variables set. Kept apart from the kernels because it acts
// on the whole process: programs call it once, first thing in main(), as runner, the tests, the
// benchmarks and the examples do.
#include <cblas.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace tessera::cpu {

/// OpenBLAS and OpenMP configure themselves when they are loaded, before main(), from the
/// environment; three of their choices cost tessera dearly, so this fixes them and runs the program
/// again:
///  - Debian's OpenBLAS 0.3.21 does not recognise some recent Xeons and falls back to its SSE3
///    ("Prescott") kernels, three times slower than the AVX2/AVX-512 ones the CPU can run: it sets
///    OPENBLAS_CORETYPE;
///  - it starts a pool of threads, one per core, whose idle threads spin (sched_yield) while the
///    data loader's workers need those cores, and which tessera never uses: it sets
///    OPENBLAS_NUM_THREADS=1;
///  - OpenMP's threads (oneDNN runs its convolutions on them) spin after each parallel region, taking
///    the cores from tessera's own threads, which run every other kernel of a training step in
///    between: for training it sets OMP_WAIT_POLICY=passive (ResNet-20 at batch 128 on 2 cores: 460
///    img/s against 331 spinning). Compiled inference is oneDNN's primitives back to back, and there
///    the spin is what keeps the cores busy: passive threads went to sleep and woke between each two
///    (15% of the cores idle under `perf`), so for inference OpenMP keeps its default, a short spin
///    (libgomp's GOMP_SPINCOUNT, 300000) before it sleeps. Measured on 2 cores, one after the other:
///    ResNet-20 inference at batch 32, 1807 and 2235 img/s passive against 2869-2995 spinning;
///    runner serve at 64 connections, 1150 and 1408 requests/s against 2050 and 2074.
enum class Workload { training, inference };

/// Call it first thing in main(), with what the process runs; it returns normally when there is
/// nothing to do (or the re-run fails).
inline void select_cpu_kernels(char** argv, Workload workload = Workload::training) {
    bool rerun = false;
    if (workload == Workload::training && !std::getenv("OMP_WAIT_POLICY")) {
        setenv("OMP_WAIT_POLICY", "passive", 1);
        rerun = true;
    }
    const char* threads = std::getenv("OPENBLAS_NUM_THREADS");
    if (!threads || std::strcmp(threads, "1") != 0) {
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        rerun = openblas_get_num_threads() > 1;
    }
    if (!std::getenv("OPENBLAS_CORETYPE") && std::strcmp(openblas_get_corename(), "Prescott") == 0) {
        const char* core = __builtin_cpu_supports("avx512f") ? "SkylakeX"
                           : __builtin_cpu_supports("avx2")  ? "Haswell"
                                                             : nullptr;
        if (core) {
            setenv("OPENBLAS_CORETYPE", core, 1);
            rerun = true;
        }
    }
    if (rerun) execv("/proc/self/exe", argv);
}

}  // namespace tessera::cpu
