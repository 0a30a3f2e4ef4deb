#pragma once
// The one function of runner that nvcc compiles (cuda_networks.cu): every architecture bound to the
// CUDA backend. Apart from runner.hpp so that the CUDA translation unit includes no CPU backend
// (oneDNN's and Eigen's headers are for the host compiler).
#include <memory>
#include <string>

#include "tessera/backend/cuda/backend.hpp"
#include "tessera/models/network.hpp"

namespace tessera::runner {

std::unique_ptr<models::Network<cuda::Backend>> make_cuda_network(const std::string& arch, int num_classes,
                                                                  int in_channels);

}  // namespace tessera::runner
