// The CUDA backend's definitions and every architecture bound to it: the one translation unit of
// runner that nvcc compiles.
// Eigen 3.4 (which runner.hpp's CPU backend brings) marks its functions __host__ __device__, and
// nvcc reports those annotations ignored on defaulted members (#20012-D; a file that includes
// <Eigen/Core> alone gets it). Eigen's code, not ours, and harmless: no Eigen code runs on the
// device. (Its calls to constexpr host functions need --expt-relaxed-constexpr, in meson.build.)
#pragma nv_diag_suppress 20012
#include "runner.hpp"
#include "tessera/backend/cuda/backend.cuh"
#include "tessera/models/zoo.hpp"

namespace tessera::runner {

std::unique_ptr<models::Network<cuda::Backend>> make_cuda_network(const std::string& arch, int num_classes,
                                                                  int in_channels) {
    return models::make_network<cuda::Backend>(arch, {num_classes, in_channels});
}

}  // namespace tessera::runner
