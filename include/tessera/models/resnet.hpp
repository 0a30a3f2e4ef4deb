#pragma once
// The ResNet family as types.
//
//   ResNet18/34/50/101/152    torchvision's ResNet v1.5 (the stride of a downsampling bottleneck is
//                             on its 3x3 conv), 7x7/2 stem and 3x3/2 max-pool, for 224 px images
//   ResNet18Small … 152Small  the same stages behind a 3x3/1 stem without max-pool, for 28-64 px
//   ResNet20/32/44/56/110     He et al. 2016 §4.2: 6n+2 layers, three stages of 16/32/64 channels
//                             for 32 px images. Their shortcuts are projections (the paper's option
//                             B) where the shape changes: 0.27 M parameters for ResNet-20.
//
// Names follow torchvision's state_dict, so PyTorch checkpoints load as they are.
#include "tessera/layers/activation.hpp"
#include "tessera/layers/batchnorm.hpp"
#include "tessera/layers/conv.hpp"
#include "tessera/layers/linear.hpp"
#include "tessera/layers/pool.hpp"
#include "tessera/layers/residual.hpp"
#include "tessera/layers/sequential.hpp"

namespace tessera::models {

using namespace tessera::layers;

/// Two 3x3 convs (ResNet18/34 and the small-image family).
template <int Out, int Stride>
using BasicBlock = Seq<Residual<Seq<Named<"conv1", Conv<Out, 3, Stride>>, Named<"bn1", BatchNorm<>>, ReLU,
                                    Named<"conv2", Conv<Out, 3>>, Named<"bn2", BatchNorm<BlockOutput>>>,
                                Projection<Out, Stride>>,
                       ReLU>;

/// 1x1 reduce, 3x3 (carrying the stride, v1.5), 1x1 expand by 4 (ResNet50/101/152).
template <int Out, int Stride>
using Bottleneck = Seq<Residual<Seq<Named<"conv1", Conv<Out / 4, 1>>, Named<"bn1", BatchNorm<>>, ReLU,
                                    Named<"conv2", Conv<Out / 4, 3, Stride>>, Named<"bn2", BatchNorm<>>, ReLU,
                                    Named<"conv3", Conv<Out, 1>>, Named<"bn3", BatchNorm<BlockOutput>>>,
                                Projection<Out, Stride>>,
                       ReLU>;

/// A stage: its first block changes resolution and width, the rest keep them.
template <template <int, int> class Block, int Out, int Blocks, int Stride>
using Stage = Seq<Named<"0", Block<Out, Stride>>, Repeat<Blocks - 1, Block<Out, 1>, 1>>;

using ImageNetStem = Seq<Named<"conv1", Conv<64, 7, 2>>, Named<"bn1", BatchNorm<>>, ReLU, MaxPool<3, 2>>;
using SmallImageStem = Seq<Named<"conv1", Conv<64, 3>>, Named<"bn1", BatchNorm<>>, ReLU>;
using Head = Seq<GlobalAvgPool, Named<"fc", Linear<>>>;

template <class Stem, template <int, int> class Block, int Expansion, int B1, int B2, int B3, int B4>
using ResNet =
    Seq<Stem, Named<"layer1", Stage<Block, 64 * Expansion, B1, 1>>,
        Named<"layer2", Stage<Block, 128 * Expansion, B2, 2>>, Named<"layer3", Stage<Block, 256 * Expansion, B3, 2>>,
        Named<"layer4", Stage<Block, 512 * Expansion, B4, 2>>, Head>;

using ResNet18 = ResNet<ImageNetStem, BasicBlock, 1, 2, 2, 2, 2>;
using ResNet34 = ResNet<ImageNetStem, BasicBlock, 1, 3, 4, 6, 3>;
using ResNet50 = ResNet<ImageNetStem, Bottleneck, 4, 3, 4, 6, 3>;
using ResNet101 = ResNet<ImageNetStem, Bottleneck, 4, 3, 4, 23, 3>;
using ResNet152 = ResNet<ImageNetStem, Bottleneck, 4, 3, 8, 36, 3>;

using ResNet18Small = ResNet<SmallImageStem, BasicBlock, 1, 2, 2, 2, 2>;
using ResNet34Small = ResNet<SmallImageStem, BasicBlock, 1, 3, 4, 6, 3>;
using ResNet50Small = ResNet<SmallImageStem, Bottleneck, 4, 3, 4, 6, 3>;
using ResNet101Small = ResNet<SmallImageStem, Bottleneck, 4, 3, 4, 23, 3>;
using ResNet152Small = ResNet<SmallImageStem, Bottleneck, 4, 3, 8, 36, 3>;

/// He et al. 2016 §4.2: depth 6n + 2.
template <int N>
using CifarResNet =
    Seq<Named<"conv1", Conv<16, 3>>, Named<"bn1", BatchNorm<>>, ReLU, Named<"layer1", Stage<BasicBlock, 16, N, 1>>,
        Named<"layer2", Stage<BasicBlock, 32, N, 2>>, Named<"layer3", Stage<BasicBlock, 64, N, 2>>, Head>;

using ResNet20 = CifarResNet<3>;
using ResNet32 = CifarResNet<5>;
using ResNet44 = CifarResNet<7>;
using ResNet56 = CifarResNet<9>;
using ResNet110 = CifarResNet<18>;

// torchvision's counts (sum(p.numel() for p in resnetXX().parameters()), 1000 classes, RGB input).
static_assert(param_count<ResNet18, 3> == 11'689'512, "ResNet18 must have torchvision's parameter count");
static_assert(param_count<ResNet34, 3> == 21'797'672, "ResNet34 must have torchvision's parameter count");
static_assert(param_count<ResNet50, 3> == 25'557'032, "ResNet50 must have torchvision's parameter count");
static_assert(param_count<ResNet101, 3> == 44'549'160, "ResNet101 must have torchvision's parameter count");
static_assert(param_count<ResNet152, 3> == 60'192'808, "ResNet152 must have torchvision's parameter count");
// ResNet-20 with projection shortcuts, 10 classes: 0.27 M as the paper's table 6 gives.
static_assert(param_count<ResNet20, 3, 10> > 270'000 && param_count<ResNet20, 3, 10> < 280'000,
              "ResNet-20 must have about 0.27 M parameters");

}  // namespace tessera::models
