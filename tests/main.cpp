// The test binary's main: picks OpenBLAS's kernels as runner does and remembers where it lives.
#include <gtest/gtest.h>

#include "helpers.hpp"
#include "runner.hpp"
#include "tessera/backend/cpu/gemm.hpp"
#include "tessera/train/checkpoint.hpp"

namespace tessera::test {
fs::path& binary_dir() {
    static fs::path dir;
    return dir;
}
fs::path source_root() {
    if (const char* root = std::getenv("TESSERA_SOURCE_ROOT")) return root;
    return fs::current_path();
}
std::vector<float> checkpoint_values(const fs::path& file, const std::string& arch, int classes) {
    auto net = runner::make_cpu_network(arch, classes, 3);
    checkpoint::load(net->params(), file);
    std::vector<float> all = net->params().values;
    all.insert(all.end(), net->params().buffers.begin(), net->params().buffers.end());
    return all;
}
}  // namespace tessera::test

int main(int argc, char** argv) {
    tessera::cpu::select_gemm_kernels(argv);
    tessera::test::binary_dir() = std::filesystem::absolute(argv[0]).parent_path();
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
