#pragma once
// The layers every mixed-precision backend is checked on, forward and backward, against the CPU in
// fp32: each convolution shape of the ResNet family, BatchNorm in training and eval, the
// activations, the pools, the classifier and a whole Bottleneck. The CUDA test (test_cuda.cpp) and
// the CPU's bf16 test (test_precision.cpp) both walk this list, each with its own check.
#include "tessera/layers/activation.hpp"
#include "tessera/layers/batchnorm.hpp"
#include "tessera/layers/conv.hpp"
#include "tessera/layers/linear.hpp"
#include "tessera/layers/pool.hpp"
#include "tessera/models/resnet.hpp"

namespace tessera::test {

/// Calls check.template operator()<Spec, In>(input shape, training, backward) for each layer of the
/// list; `backward` false checks the forward pass alone.
///
/// The Bottleneck is checked forward only. Backward, with random output gradients, a block's
/// gradients are ill-conditioned: each ReLU whose input lies within rounding of 0 takes an O(1)
/// gradient or drops it, and BatchNorm's training backward amplifies the difference. Measured on
/// the CPU, in fp32 alone: perturbing the Bottleneck's input by 0.2% (bf16's rounding) moves its
/// input gradient by 0.15 of its largest value. The layers it is made of are each checked backward
/// here, and the whole network's bf16 training by the quick start reaching its accuracy.
template <class Check>
void for_each_mixed_precision_layer(Check&& check) {
    using namespace tessera::layers;
    using BatchNormReLU = BatchNorm<BatchNormPosition::inner, true>;
    check.template operator()<Conv<32, 3>, 16>(Shape{4, 14, 14, 16}, true, true);
    check.template operator()<Conv<32, 3, 2>, 16>(Shape{4, 15, 15, 16}, true, true);
    check.template operator()<Conv<64, 1>, 32>(Shape{4, 8, 8, 32}, true, true);
    check.template operator()<Conv<64, 1, 2>, 32>(Shape{4, 8, 8, 32}, true, true);
    check.template operator()<Conv<64, 7, 2>, 3>(Shape{2, 32, 32, 3}, true, true);
    check.template operator()<BatchNorm<>, 32>(Shape{4, 7, 7, 32}, true, true);
    check.template operator()<BatchNorm<>, 32>(Shape{4, 7, 7, 32}, false, true);
    check.template operator()<BatchNormReLU, 32>(Shape{4, 7, 7, 32}, true, true);
    check.template operator()<BatchNormReLU, 32>(Shape{4, 7, 7, 32}, false, true);
    check.template operator()<ReLU, 8>(Shape{2, 5, 5, 8}, true, true);
    check.template operator()<MaxPool<3, 2>, 8>(Shape{2, 9, 9, 8}, true, true);
    check.template operator()<GlobalAvgPool, 16>(Shape{3, 4, 4, 16}, true, true);
    check.template operator()<Linear<10>, 64>(Shape{5, 1, 1, 64}, true, true);
    check.template operator()<models::Bottleneck<64, 2>, 32>(Shape{2, 8, 8, 32}, true, false);
}

}  // namespace tessera::test
