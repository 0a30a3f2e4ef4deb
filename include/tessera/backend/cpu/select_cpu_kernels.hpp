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

/// OpenBLAS configures itself when it is loaded, before main(), from the environment; two of its
/// choices cost tessera dearly, so this fixes them and runs the program again:
///  - Debian's OpenBLAS 0.3.21 does not recognise some recent Xeons and falls back to its SSE3
///    ("Prescott") kernels, three times slower than the AVX2/AVX-512 ones the CPU can run: it sets
///    OPENBLAS_CORETYPE;
///  - it starts a pool of threads, one per core, whose idle threads spin (sched_yield) while the
///    data loader's workers need those cores, and which tessera never uses (its GEMMs run one per
///    thread of its own loops): it sets OPENBLAS_NUM_THREADS=1.
/// OpenMP is left as it is: every kernel of tessera's runs on OpenMP's threads, as oneDNN's do
/// (openmp_threads.hpp), so their short spin after each region (libgomp's GOMP_SPINCOUNT) keeps the
/// cores for the next kernel rather than taking them from another pool.
///
/// Call it first thing in main(); it returns normally when there is nothing to do (or the re-run
/// fails).
inline void select_cpu_kernels(char** argv) {
    bool rerun = false;
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
