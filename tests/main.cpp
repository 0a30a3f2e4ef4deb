// The test binary's main: picks OpenBLAS's kernels as runner does and remembers where it lives.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>

#include "helpers.hpp"
#include "runner.hpp"
#include "tessera/backend/cpu/select_cpu_kernels.hpp"
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

int exit_code_in_child(std::size_t headroom, const std::function<int()>& body) {
    std::fflush(nullptr);
    const pid_t child = fork();
    if (child == 0) {
        std::size_t in_use = 0;  // VmSize, the address space the limit counts
        std::ifstream status("/proc/self/status");
        for (std::string line; std::getline(status, line);)
            if (line.rfind("VmSize:", 0) == 0) in_use = std::stoull(line.substr(7)) * 1024;
        const rlimit limit{in_use + headroom, in_use + headroom};
        setrlimit(RLIMIT_AS, &limit);
        int code = 0;
        try {
            code = body();
        } catch (const Error& e) {
            code = e.is_user_error() ? 2 : 1;
        } catch (...) {
            code = 3;
        }
        _exit(code);
    }
    int status = 0;
    for (int waited_ms = 0; waitpid(child, &status, WNOHANG) == 0; waited_ms += 10) {
        if (waited_ms >
            60'000) {  // a child that hangs (a deadlock in std::terminate, say) fails the test, never stalls it
            kill(child, SIGKILL);
            waitpid(child, &status, 0);
            return 128 + SIGKILL;
        }
        usleep(10'000);
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
}  // namespace tessera::test

int main(int argc, char** argv) {
    tessera::cpu::select_cpu_kernels(argv);
    tessera::test::binary_dir() = std::filesystem::absolute(argv[0]).parent_path();
    ::testing::InitGoogleTest(&argc, argv);
    return RUN_ALL_TESTS();
}
