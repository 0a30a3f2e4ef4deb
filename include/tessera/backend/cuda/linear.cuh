#pragma once
// The classifier on cuBLAS.
#include "tessera/backend/cuda/context.cuh"

namespace tessera::cuda {

namespace kernels {

__global__ void broadcast_rows(const float* row, int width, float* out, std::size_t n) {
    TESSERA_GRID_STRIDE(i, n) out[i] = row[i % width];
}
__global__ void sum_rows(const float* m, int rows, int width, float* out) {  // out += column sums
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= width) return;
    float sum = 0.f;
    for (int r = 0; r < rows; ++r) sum += m[std::size_t(r) * width + col];
    out[col] += sum;
}

}  // namespace kernels

namespace detail {

inline cudaDataType_t cuda_type(DType t) {
    return t == DType::f32 ? CUDA_R_32F : t == DType::bf16 ? CUDA_R_16BF : CUDA_R_16F;
}

// Column-major C (m x n, of type c_type) = op(A) op(B) + beta C, A and B of type ab_type, summed in
// fp32 (TF32 tensor cores for fp32 data when allowed).
inline void gemm(Context& ctx, cublasOperation_t op_a, cublasOperation_t op_b, int m, int n, int k, const void* a,
                 int lda, const void* b, int ldb, DType ab_type, float beta, void* c, int ldc, DType c_type) {
    const float one = 1.f;
    const cublasComputeType_t compute =
        ab_type == DType::f32 && ctx.settings.tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    TESSERA_CUDA(cublasGemmEx(ctx.impl->cublas, op_a, op_b, m, n, k, &one, a, cuda_type(ab_type), lda, b,
                              cuda_type(ab_type), ldb, &beta, c, cuda_type(c_type), ldc, compute, CUBLAS_GEMM_DEFAULT));
}

}  // namespace detail

// Row-major products through column-major cuBLAS: a row-major (r x c) matrix is a column-major (c x r) one.
// x (N, In) and the weights in the compute type; the logits y (N, Out) and all gradients but dx in fp32.
void Backend::linear_forward(Context& ctx, const Tensor& x, const float* w, const float* b, int out, const Tensor& y) {
    detail::OpTimer timer(ctx, "linear forward");
    TESSERA_CHECK(y.dtype == DType::f32, "linear forward: the logits are fp32");
    const int n = x.shape.n, in = int(x.size() / n);
    const auto mark = ctx.arena.mark();
    const void* weights = detail::converted(ctx, w, std::size_t(out) * in, x.dtype);
    TESSERA_LAUNCH(broadcast_rows, y.size(), b, out, y.data, y.size());
    // y^T (out x n) += W (out x in) x^T: column-major W is (in x out), so op = T.
    detail::gemm(ctx, CUBLAS_OP_T, CUBLAS_OP_N, out, n, in, weights, in, x.data, in, x.dtype, 1.f, y.data, out,
                 DType::f32);
    ctx.arena.release(mark);
}
void Backend::linear_backward(Context& ctx, const Tensor& x, const float* w, const Tensor& dy, int out, float* dw,
                              float* db, const Tensor& dx) {
    detail::OpTimer timer(ctx, "linear backward");
    TESSERA_CHECK(dy.dtype == DType::f32, "linear backward: the logits' gradient is fp32");
    const int n = x.shape.n, in = int(x.size() / n);
    const auto mark = ctx.arena.mark();
    const void* dy_compute = detail::converted(ctx, dy.data, dy.size(), x.dtype);
    // dW (out x in, row-major) += dy^T x: column-major (in x out) = x^T (in x n) dy (n x out).
    detail::gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_T, in, out, n, x.data, in, dy_compute, out, x.dtype, 1.f, dw, in,
                 DType::f32);
    kernels::sum_rows<<<(out + kernels::threads - 1) / kernels::threads, kernels::threads, 0, ctx.impl->stream>>>(
        dy.data, n, out, db);
    TESSERA_CUDA(cudaGetLastError());
    // dx (n x in) = dy W: column-major (in x n) = column-major W (in x out) times dy^T (out x n).
    if (dx.data) {
        const void* weights = detail::converted(ctx, w, std::size_t(out) * in, x.dtype);
        detail::gemm(ctx, CUBLAS_OP_N, CUBLAS_OP_N, in, n, out, weights, in, dy_compute, out, x.dtype, 0.f, dx.data, in,
                     dx.dtype);
    }
    ctx.arena.release(mark);
}

}  // namespace tessera::cuda
