#pragma once
// Fully connected layer: y (N, O) = x (N, I) * W^T + b, with W (O, I) as PyTorch stores it.
#include <algorithm>
#include <cstddef>
#include <vector>

#include "tessera/backend/cpu/gemm.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

inline void linear_forward(const Tensor& x, const float* w, const float* b, int out, const Tensor& y) {
    const std::size_t n = x.shape.n, in = x.size() / n;
    for (std::size_t r = 0; r < n; ++r) std::copy(b, b + out, y.data + r * out);
    gemm(false, true, n, out, in, 1.f, x.data, in, w, in, 1.f, y.data, out);
}

/// dW += dy^T x, db += sum_rows(dy), dx = dy W (skipped when dx.data is null).
///
/// The bias gradient sums each column in row order, a loop the compiler vectorizes across columns
/// only. Eigen's `colwise().sum()` assigned into `db` peeled the columns before `db`'s first 32-byte
/// boundary onto a scalar path that adds the rows in another order, so the result followed where
/// the allocator happened to put the gradient buffer.
inline void linear_backward(const Tensor& x, const float* w, const Tensor& dy, int out, float* dw, float* db,
                            const Tensor& dx) {
    const std::size_t n = x.shape.n, in = x.size() / n;
    gemm(true, false, out, in, n, 1.f, dy.data, out, x.data, in, 1.f, dw, in);
    std::vector<float> column_sums(std::size_t(out), 0.f);
    for (std::size_t r = 0; r < n; ++r)
        for (std::size_t o = 0; o < std::size_t(out); ++o) column_sums[o] += dy.data[r * out + o];
    for (std::size_t o = 0; o < std::size_t(out); ++o) db[o] += column_sums[o];
    if (dx.data) gemm(false, false, n, in, out, 1.f, dy.data, out, w, in, 0.f, dx.data, in);
}

}  // namespace tessera::cpu
