#pragma once
// Batch normalisation over the (N*H*W, C) view of an NHWC tensor.
//   training:  y = gamma * (x - mean_B) / sqrt(var_B + eps) + beta, batch statistics, and
//              running = (1 - momentum) * running + momentum * stat (unbiased variance, as PyTorch)
//   eval:      the same with the running statistics
//   backward (training), with xhat = (x - mean) * inv_std and P = N*H*W:
//              dbeta = sum(dy), dgamma = sum(dy * xhat)
//              dx = gamma * inv_std / P * (P * dy - dbeta - xhat * dgamma)
// x̂ is recomputed from x in backward rather than stored: one tensor less per BN layer.
// Synchronised (ctx.batchnorm_group set, as torch.nn.SyncBatchNorm): the sums over rows, and the
// row count P, are taken over every rank's batch; dgamma and dbeta stay this rank's sums, which the
// gradient all-reduce then averages like every other gradient.
#include <Eigen/Core>

#include <cmath>
#include <vector>

#include "tessera/backend/ops.hpp"
#include "tessera/backend/cpu/context.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

using RowArray = Eigen::Map<Eigen::ArrayXf>;
using ConstRowArray = Eigen::Map<const Eigen::ArrayXf>;

using tessera::BatchNormParams;
using tessera::BatchNormSaved;

namespace detail {
// Sums f(row) (a C-vector) over all rows, in double, one partial sum per thread.
template <class RowTerm>
Eigen::ArrayXd sum_rows(Context& ctx, std::size_t rows, int channels, RowTerm term) {
    std::vector<Eigen::ArrayXd> partial(ctx.pool.size(), Eigen::ArrayXd::Zero(channels));
    ctx.pool.parallel_for(ctx.pool.size(), [&](std::size_t t0, std::size_t t1) {
        for (std::size_t t = t0; t < t1; ++t) {
            const std::size_t begin = rows * t / ctx.pool.size(), end = rows * (t + 1) / ctx.pool.size();
            Eigen::ArrayXf acc = Eigen::ArrayXf::Zero(channels);
            std::size_t since_flush = 0;
            for (std::size_t r = begin; r < end; ++r) {
                acc += term(r);
                // Flush float partials into double every 256 rows: exact enough, and fast.
                if (++since_flush == 256) {
                    partial[t] += acc.cast<double>();
                    acc.setZero();
                    since_flush = 0;
                }
            }
            partial[t] += acc.cast<double>();
        }
    });
    Eigen::ArrayXd total = Eigen::ArrayXd::Zero(channels);
    for (auto& p : partial) total += p;
    return total;
}

// Sums over the group's ranks, in place (nothing without a group).
inline void sum_over_group(parallel::Communicator* group, Eigen::ArrayXd& sums) {
    if (group) group->all_reduce_sum(sums.data(), std::size_t(sums.size()));
}

// The rows of the batch across the group.
inline double group_rows(parallel::Communicator* group, std::size_t rows) {
    double total = double(rows);
    if (group) group->all_reduce_sum(&total, 1);
    return total;
}
}  // namespace detail

/// y = BN(x), both (N, H, W, C). In training, fills `saved` and updates the running statistics.
inline void batchnorm_forward(Context& ctx, const Tensor& x, const BatchNormParams& p, BatchNormSaved saved,
                              bool training, const Tensor& y) {
    const int c = x.shape.c;
    const std::size_t rows = x.shape.pixels();
    Eigen::ArrayXf mean(c), inv_std(c);
    if (training) {
        auto row = [&](std::size_t r) { return ConstRowArray(x.row(r), c); };
        const double total_rows = detail::group_rows(ctx.batchnorm_group, rows);
        Eigen::ArrayXd sum = detail::sum_rows(ctx, rows, c, row);
        detail::sum_over_group(ctx.batchnorm_group, sum);
        const Eigen::ArrayXd mean_d = sum / total_rows;
        Eigen::ArrayXf mean_f = mean_d.cast<float>();
        Eigen::ArrayXd squares =
            detail::sum_rows(ctx, rows, c, [&](std::size_t r) { return (row(r) - mean_f).square().eval(); });
        detail::sum_over_group(ctx.batchnorm_group, squares);
        const Eigen::ArrayXd var_d = squares / total_rows;
        mean = mean_f;
        inv_std = (var_d + p.eps).rsqrt().cast<float>();
        const double unbiased = total_rows > 1 ? total_rows / (total_rows - 1) : 1.0;
        RowArray running_mean(p.running_mean, c), running_var(p.running_var, c);
        running_mean = (1 - p.momentum) * running_mean + p.momentum * mean_d.cast<float>();
        running_var = (1 - p.momentum) * running_var + p.momentum * (var_d * unbiased).cast<float>();
        RowArray(saved.mean, c) = mean;
        RowArray(saved.inv_std, c) = inv_std;
    } else {
        mean = ConstRowArray(p.running_mean, c);
        inv_std = (ConstRowArray(p.running_var, c) + p.eps).rsqrt();
    }
    const Eigen::ArrayXf scale = ConstRowArray(p.gamma, c) * inv_std;
    const Eigen::ArrayXf shift = ConstRowArray(p.beta, c) - mean * scale;
    ctx.pool.parallel_for(
        rows,
        [&](std::size_t begin, std::size_t end) {
            for (std::size_t r = begin; r < end; ++r)
                RowArray(y.row(r), c) = ConstRowArray(x.row(r), c) * scale + shift;
        },
        256);
}

/// dx from dy (N, H, W, C); dgamma and dbeta are accumulated (+=).
inline void batchnorm_backward(Context& ctx, const Tensor& x, const Tensor& dy, const BatchNormParams& p,
                               BatchNormSaved saved, bool training, float* dgamma, float* dbeta, const Tensor& dx) {
    const int c = x.shape.c;
    const std::size_t rows = x.shape.pixels();
    Eigen::ArrayXf mean(c), inv_std(c);
    if (training) {
        mean = ConstRowArray(saved.mean, c);
        inv_std = ConstRowArray(saved.inv_std, c);
    } else {
        mean = ConstRowArray(p.running_mean, c);
        inv_std = (ConstRowArray(p.running_var, c) + p.eps).rsqrt();
    }
    auto grad = [&](std::size_t r) { return ConstRowArray(dy.row(r), c); };
    auto xhat = [&](std::size_t r) { return (ConstRowArray(x.row(r), c) - mean) * inv_std; };
    Eigen::ArrayXd sums(2 * c);  // sum(dy), then sum(dy * xhat)
    sums.head(c) = detail::sum_rows(ctx, rows, c, grad);
    sums.tail(c) = detail::sum_rows(ctx, rows, c, [&](std::size_t r) { return (grad(r) * xhat(r)).eval(); });
    RowArray(dbeta, c) += sums.head(c).cast<float>();
    RowArray(dgamma, c) += sums.tail(c).cast<float>();
    if (!dx.data) return;
    const Eigen::ArrayXf scale = ConstRowArray(p.gamma, c) * inv_std;
    if (!training) {
        ctx.pool.parallel_for(
            rows,
            [&](std::size_t begin, std::size_t end) {
                for (std::size_t r = begin; r < end; ++r) RowArray(dx.row(r), c) = grad(r) * scale;
            },
            256);
        return;
    }
    detail::sum_over_group(ctx.batchnorm_group, sums);
    const double total_rows = detail::group_rows(ctx.batchnorm_group, rows);
    const Eigen::ArrayXf mean_dy = (sums.head(c) / total_rows).cast<float>();
    const Eigen::ArrayXf mean_dy_xhat = (sums.tail(c) / total_rows).cast<float>();
    ctx.pool.parallel_for(
        rows,
        [&](std::size_t begin, std::size_t end) {
            for (std::size_t r = begin; r < end; ++r)
                RowArray(dx.row(r), c) = scale * (grad(r) - mean_dy - xhat(r) * mean_dy_xhat);
        },
        256);
}

}  // namespace tessera::cpu
