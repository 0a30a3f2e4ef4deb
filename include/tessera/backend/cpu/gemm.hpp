#pragma once
// Row-major single-precision GEMM on OpenBLAS. Measured on ResNet50's im2col shapes with 2 threads,
// OpenBLAS reaches 124-157 GFLOP/s against Eigen's own product at 44-93, so every large product goes
// here, called directly (not through EIGEN_USE_BLAS) so each call states its transposes and strides.
#include <cblas.h>

#include <unistd.h>

#include <cstddef>
#include <cstdlib>
#include <cstring>

namespace tessera::cpu {

/// OpenBLAS runs single-threaded: conv and the other callers split the batch over tessera's own
/// threads, which for ResNet's narrow layers is much faster than OpenBLAS threads contending for
/// the same cores.
inline void set_gemm_threads(int) { openblas_set_num_threads(1); }

/// OpenBLAS configures itself when it is loaded, before main(), from the environment; two of its
/// choices cost tessera dearly, so this fixes them and runs the program again:
///  - Debian's OpenBLAS 0.3.21 does not recognise some recent Xeons and falls back to its SSE3
///    ("Prescott") kernels, three times slower than the AVX2/AVX-512 ones the CPU can run: it sets
///    OPENBLAS_CORETYPE;
///  - it starts a pool of threads, one per core, whose idle threads spin (sched_yield) while the
///    data loader's workers need those cores, and which tessera never uses: it sets
///    OPENBLAS_NUM_THREADS=1.
/// Call it first thing in main(); it returns normally when there is nothing to do (or the re-run fails).
inline void select_gemm_kernels(char** argv) {
    bool rerun = false;
    const char* threads = std::getenv("OPENBLAS_NUM_THREADS");
    if (!threads || std::strcmp(threads, "1") != 0) {
        setenv("OPENBLAS_NUM_THREADS", "1", 1);
        rerun = openblas_get_num_threads() > 1;
    }
    if (!std::getenv("OPENBLAS_CORETYPE") && std::strcmp(openblas_get_corename(), "Prescott") == 0) {
        const char* core = __builtin_cpu_supports("avx512f") ? "SkylakeX" : __builtin_cpu_supports("avx2") ? "Haswell" : nullptr;
        if (core) {
            setenv("OPENBLAS_CORETYPE", core, 1);
            rerun = true;
        }
    }
    if (rerun) execv("/proc/self/exe", argv);
}

/// C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C, all row-major.
inline void gemm(bool trans_a, bool trans_b, std::size_t m, std::size_t n, std::size_t k, float alpha,
                 const float* a, std::size_t lda, const float* b, std::size_t ldb, float beta, float* c,
                 std::size_t ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans,
                int(m), int(n), int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

}  // namespace tessera::cpu
