#pragma once
// Softmax cross-entropy with label smoothing, as torch.nn.CrossEntropyLoss(label_smoothing=eps):
// the target puts 1 - eps + eps/K on the true class and eps/K on every other, and
//   loss = mean over the batch of -sum_k q_k log softmax(z)_k,   dz = (softmax(z) - q) / N.
// Also counts top-1 and top-5 hits from the same logits.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "tessera/backend/labels.hpp"
#include "tessera/backend/ops.hpp"
#include "tessera/core/tensor.hpp"

namespace tessera::cpu {

/// Rank of the true class among the logits: 0 if it is the largest (ties count against it).
inline int rank_of_label(const float* z, int classes, int label) {
    int rank = 0;
    for (int k = 0; k < classes; ++k) rank += (z[k] > z[label]) || (z[k] == z[label] && k < label);
    return rank;
}

/// logits (N, K); labels (N); dlogits (N, K) is written when not null.
inline LossResult softmax_cross_entropy(const Tensor& logits, const std::int32_t* labels, float label_smoothing,
                                        float* dlogits) {
    const int n = logits.shape.n, k = int(logits.size() / logits.shape.n);
    check_labels(labels, n, k);
    const double off = double(label_smoothing) / k, on = 1.0 - label_smoothing + off;
    LossResult result;
    for (int i = 0; i < n; ++i) {
        const float* z = logits.data + std::size_t(i) * k;
        const float zmax = *std::max_element(z, z + k);
        double sum = 0, sum_z = 0;
        for (int j = 0; j < k; ++j) {
            sum += std::exp(double(z[j] - zmax));
            sum_z += z[j] - zmax;
        }
        const double log_sum = std::log(sum);
        const double log_p_label = z[labels[i]] - zmax - log_sum;
        // -sum q log p = -(on - off) log p_label - off * sum_j log p_j
        result.loss += -(on - off) * log_p_label - off * (sum_z - k * log_sum);
        const int rank = rank_of_label(z, k, labels[i]);
        result.top1 += rank < 1;
        result.top5 += rank < 5;
        if (dlogits) {
            float* d = dlogits + std::size_t(i) * k;
            for (int j = 0; j < k; ++j) {
                const double p = std::exp(double(z[j] - zmax) - log_sum);
                d[j] = float((p - (j == labels[i] ? on : off)) / n);
            }
        }
    }
    result.loss /= n;
    return result;
}

}  // namespace tessera::cpu
