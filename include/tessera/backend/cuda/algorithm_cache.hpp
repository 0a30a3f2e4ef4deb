#pragma once
// Which cuDNN algorithm each convolution runs, found once with cudnnFind*AlgorithmEx and remembered.
// Plain C++ (no CUDA): the CPU tests check the policy.
//
// What a choice depends on is the key: the convolution, the pass, the data type and whether TF32 is
// allowed. Not the batch size: cuDNN's algorithms run any batch, so validation's last, partial batch
// reuses the training batch's choice instead of timing every algorithm again. A larger batch than
// the one measured is measured anew, and its choice replaces the smaller one's, so the cache settles
// on the largest batch a run uses (the training batch).
//
// The math type is part of the choice: cuDNN 7.4 and later pick tensor-core kernels from the
// algorithm and the descriptor's math type together, so the math type Find reported with the
// algorithm is set on the descriptor before the call runs, as PyTorch's cudnn/Conv_v7.cpp does.
#include <compare>
#include <cstddef>
#include <map>

#include "tessera/core/shape.hpp"
#include "tessera/core/tensor.hpp"
#include "tessera/backend/ops.hpp"

namespace tessera::cuda {

enum class ConvPass { forward, backward_data, backward_filter };

struct ConvKey {
    int h, w, c, out_channels, kernel, stride, pad;
    ConvPass pass;
    DType dtype;
    bool tf32;
    auto operator<=>(const ConvKey&) const = default;
};

inline ConvKey conv_key(const ConvGeometry& g, Shape x, ConvPass pass, DType dtype, bool tf32) {
    return {x.h, x.w, x.c, g.out_channels, g.kernel, g.stride, g.pad, pass, dtype, tf32};
}

struct ConvChoice {
    int algorithm = 0;  // cudnnConvolution{Fwd,BwdData,BwdFilter}Algo_t
    int math_type = 0;  // cudnnMathType_t, as Find reported it with the algorithm
    int batch = 0;      // the batch size it was measured at
};

class AlgorithmCache {
public:
    /// The choice for key, if one was measured at a batch of at least `batch`; null when it must be
    /// measured (then `remember` it).
    const ConvChoice* find(const ConvKey& key, int batch) const {
        auto it = choices_.find(key);
        return it != choices_.end() && batch <= it->second.batch ? &it->second : nullptr;
    }
    void remember(const ConvKey& key, ConvChoice choice) { choices_[key] = choice; }
    std::size_t size() const { return choices_.size(); }

private:
    std::map<ConvKey, ConvChoice> choices_;
};

}  // namespace tessera::cuda
