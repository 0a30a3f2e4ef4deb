#pragma once
// Every label names one of the model's classes. A label outside them would make the loss read past
// its row of logits: undefined behaviour on the CPU, a silent wrong loss (or a fault) on the GPU.
// Both backends' losses check the batch's labels, in host memory, before they run.
#include <cstdint>
#include <string>

#include "tessera/core/error.hpp"

namespace tessera {

/// Throws a user error (the data's, not the code's) naming the first label outside [0, classes).
inline void check_labels(const std::int32_t* labels, int n, int classes) {
    for (int i = 0; i < n; ++i)
        if (labels[i] < 0 || labels[i] >= classes)
            throw user_error("data",
                             "sample " + std::to_string(i) + " of a batch has label " + std::to_string(labels[i]) +
                                 ", outside the model's " + std::to_string(classes) + " classes (0 to " +
                                 std::to_string(classes - 1) + ")",
                             "check the data source's labels, or set model.num_classes to cover them");
}

}  // namespace tessera
