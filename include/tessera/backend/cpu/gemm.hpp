#pragma once
// Row-major single-precision GEMM on OpenBLAS. Measured on ResNet50's im2col shapes with 2 threads,
// OpenBLAS reaches 124-157 GFLOP/s against Eigen's own product at 44-93, so every large product goes
// here, called directly (not through EIGEN_USE_BLAS) so each call states its transposes and strides.
#include <cblas.h>

#include <cstddef>

namespace tessera::cpu {

/// OpenBLAS runs single-threaded: conv and the other callers split the batch over tessera's own
/// threads, which for ResNet's narrow layers is much faster than OpenBLAS threads contending for
/// the same cores.
inline void set_gemm_threads(int) { openblas_set_num_threads(1); }

/// C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C, all row-major.
inline void gemm(bool trans_a, bool trans_b, std::size_t m, std::size_t n, std::size_t k, float alpha, const float* a,
                 std::size_t lda, const float* b, std::size_t ldb, float beta, float* c, std::size_t ldc) {
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, int(m), int(n),
                int(k), alpha, a, int(lda), b, int(ldb), beta, c, int(ldc));
}

}  // namespace tessera::cpu
