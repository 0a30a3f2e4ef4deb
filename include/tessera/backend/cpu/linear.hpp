#pragma once
// Fully connected layer: y (N, O) = x (N, I) * W^T + b, with W (O, I) as PyTorch stores it.
//
// In mixed precision x and dx are bf16, and the logits y and their gradient dy fp32 (as autocast
// hands the loss fp32). The products are bf16's, as on CUDA and under PyTorch's autocast: W and dy
// are rounded to bf16 and x already is. They are multiplied by the fp32 GEMM, which is exact for
// them (a product of two 8-bit mantissas fits fp32's 24), and accumulated in fp32. The classifier
// is a thousandth of ResNet50's work, so this costs nothing that shows.
#include <algorithm>
#include <cstddef>
#include <vector>

#include "tessera/backend/cpu/bf16.hpp"
#include "tessera/backend/cpu/context.hpp"
#include "tessera/backend/cpu/elementwise.hpp"
#include "tessera/backend/cpu/gemm.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

namespace detail {
/// The n floats at `v`, or in bf16 their copy rounded to bf16 in the arena.
inline const float* in_compute_type(Context& ctx, const float* v, std::size_t n, DType compute) {
    if (compute == DType::f32) return v;
    float* rounded = ctx.arena.allocate_floats(n);
    for (std::size_t i = 0; i < n; ++i) rounded[i] = round_to_bf16(v[i]);
    return rounded;
}
/// x as fp32: itself, or its values widened into the arena.
inline const float* as_fp32(Context& ctx, const Tensor& x) {
    if (x.dtype == DType::f32) return x.data;
    float* wide = ctx.arena.allocate_floats(x.size());
    widen_to(x, wide);
    return wide;
}
}  // namespace detail

inline void linear_forward(Context& ctx, const Tensor& x, const float* w, const float* b, int out, const Tensor& y) {
    TESSERA_CHECK(y.dtype == DType::f32, "linear forward: the logits are fp32");
    const std::size_t n = x.shape.n, in = x.size() / n;
    const auto mark = ctx.arena.mark();
    const float* features = detail::as_fp32(ctx, x);
    const float* weights = detail::in_compute_type(ctx, w, std::size_t(out) * in, x.dtype);
    for (std::size_t r = 0; r < n; ++r) std::copy(b, b + out, y.data + r * out);
    gemm(false, true, n, out, in, 1.f, features, in, weights, in, 1.f, y.data, out);
    ctx.arena.release(mark);
}

/// dW += dy^T x, db += sum_rows(dy), dx = dy W (skipped when dx.data is null).
///
/// The bias gradient sums each column in row order, a loop the compiler vectorizes across columns
/// only. Eigen's `colwise().sum()` assigned into `db` peeled the columns before `db`'s first 32-byte
/// boundary onto a scalar path that adds the rows in another order, so the result followed where
/// the allocator happened to put the gradient buffer.
inline void linear_backward(Context& ctx, const Tensor& x, const float* w, const Tensor& dy, int out, float* dw,
                            float* db, const Tensor& dx) {
    TESSERA_CHECK(dy.dtype == DType::f32, "linear backward: the logits' gradient is fp32");
    const std::size_t n = x.shape.n, in = x.size() / n;
    const auto mark = ctx.arena.mark();
    const float* features = detail::as_fp32(ctx, x);
    const float* grad = detail::in_compute_type(ctx, dy.data, dy.size(), x.dtype);
    gemm(true, false, out, in, n, 1.f, grad, out, features, in, 1.f, dw, in);
    std::vector<float> column_sums(std::size_t(out), 0.f);
    for (std::size_t r = 0; r < n; ++r)
        for (std::size_t o = 0; o < std::size_t(out); ++o) column_sums[o] += dy.data[r * out + o];
    for (std::size_t o = 0; o < std::size_t(out); ++o) db[o] += column_sums[o];
    if (dx.data) {
        const float* weights = detail::in_compute_type(ctx, w, std::size_t(out) * in, x.dtype);
        if (dx.dtype == DType::f32) {
            gemm(false, false, n, in, out, 1.f, grad, out, weights, in, 0.f, dx.data, in);
        } else {
            float* wide = ctx.arena.allocate_floats(dx.size());
            gemm(false, false, n, in, out, 1.f, grad, out, weights, in, 0.f, wide, in);
            bf16* narrowed = dx.as<bf16>();
            for (std::size_t i = 0; i < dx.size(); ++i) narrowed[i] = to_bf16(wide[i]);
        }
    }
    ctx.arena.release(mark);
}

}  // namespace tessera::cpu
