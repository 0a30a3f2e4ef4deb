// The one translation unit that instantiates every architecture for the CPU backend; the other
// files of runner only see the Network interface, so they compile quickly.
#include "runner.hpp"
#include "tessera/models/zoo.hpp"

namespace tessera::runner {

std::unique_ptr<models::Network<cpu::Backend>> make_cpu_network(const std::string& arch, int num_classes,
                                                                int in_channels) {
    return models::make_network<cpu::Backend>(arch, {num_classes, in_channels});
}

}  // namespace tessera::runner
