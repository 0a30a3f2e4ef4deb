// The CUDA backend's definitions and every architecture bound to it: the one translation unit of
// runner that nvcc compiles. It includes no CPU backend (see cuda_networks.hpp).
#include "cuda_networks.hpp"
#include "tessera/backend/cuda/backend.cuh"
#include "tessera/models/zoo.hpp"

namespace tessera::runner {

std::unique_ptr<models::Network<cuda::Backend>> make_cuda_network(const std::string& arch, int num_classes,
                                                                  int in_channels) {
    return models::make_network<cuda::Backend>(arch, {num_classes, in_channels});
}

}  // namespace tessera::runner
