#pragma once
// What the tests share: random tensors, a bound layer with its own parameter buffers, running the
// runner binary, temporary folders.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <iterator>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "tessera/backend/cpu/backend.hpp"
#include "tessera/core/rng.hpp"
#include "tessera/models/network.hpp"

namespace tessera::test {

namespace fs = std::filesystem;

/// The folder of the test binary (set by main), to find the runner and plugins of the same build.
fs::path& binary_dir();
/// The source tree's root: tests find their data relative to it, never by a path baked into the build.
fs::path source_root();

inline fs::path runner_path() { return binary_dir() / ".." / "runner" / "runner"; }
inline fs::path plugin_dir() { return binary_dir() / ".." / "plugins"; }

struct RunResult {
    int exit_code;
    std::string output;  // stdout and stderr
};

/// Runs a shell command; its exit code and its stdout.
inline RunResult run_shell(const std::string& command) {
    RunResult r{-1, ""};
    FILE* pipe = popen(command.c_str(), "r");
    if (!pipe) return r;
    std::array<char, 4096> buf;
    std::size_t got;
    while ((got = fread(buf.data(), 1, buf.size(), pipe)) > 0) r.output.append(buf.data(), got);
    const int status = pclose(pipe);
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    return r;
}

/// Runs the runner with `args` (a shell-quoted string), from `cwd`.
inline RunResult run_runner(const std::string& args, const fs::path& cwd = fs::current_path()) {
    return run_shell("cd '" + cwd.string() + "' && '" + fs::absolute(runner_path()).string() + "' " + args + " 2>&1");
}

/// A fresh, empty temporary folder, removed at the end of the test.
class TempDir {
public:
    TempDir() {
        path_ = fs::temp_directory_path() /
                ("tessera-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter()++));
        fs::remove_all(path_);
        fs::create_directories(path_);
    }
    ~TempDir() { fs::remove_all(path_); }
    const fs::path& path() const { return path_; }
    fs::path operator/(const std::string& name) const { return path_ / name; }

private:
    static int& counter() {
        static int c = 0;
        return c;
    }
    fs::path path_;
};

/// The weights and BatchNorm statistics a checkpoint holds, loaded into a CPU network of `arch`
/// with `classes` outputs: for comparing checkpoints value for value.
/// A file's whole text ("" for none).
inline std::string read_file(const fs::path& file) {
    std::ifstream in(file, std::ios::binary);
    return std::string((std::istreambuf_iterator<char>(in)), {});
}

/// Runs `body` in a child process whose address space may grow by `headroom` bytes at most (thread
/// stacks and large allocations then fail); the child's exit code: body's result, 2 for a user
/// error, 3 for another exception; 128 + the signal if it died of one (std::terminate: SIGABRT), and
/// 128 + SIGKILL if it had not ended after a minute.
int exit_code_in_child(std::size_t headroom, const std::function<int()>& body);

std::vector<float> checkpoint_values(const fs::path& file, const std::string& arch = "resnet20", int classes = 4);

/// max |a - b| over max |b|: how far apart two tensors are, relative to their scale.
inline double distance(const std::vector<float>& a, const std::vector<float>& b) {
    double worst = 0, scale = 1e-30;
    for (std::size_t i = 0; i < b.size(); ++i) {
        worst = std::max(worst, double(std::abs(a[i] - b[i])));
        scale = std::max(scale, double(std::abs(b[i])));
    }
    return worst / scale;
}

inline void fill_normal(float* data, std::size_t n, Rng& rng, double scale = 1.0) {
    for (std::size_t i = 0; i < n; ++i) data[i] = float(rng.normal() * scale);
}

/// A layer bound to the CPU backend with parameter buffers of its own.
template <class Spec, int In>
struct Bound {
    using Layer = decltype(Spec::template bind<In, cpu::Backend>(layers::BindOptions{}));
    Layer layer;
    models::ParamStore store;

    explicit Bound(int num_classes = 10)
        : layer(Spec::template bind<In, cpu::Backend>(layers::BindOptions{num_classes})) {
        store.bind(layer);
    }
    Bound(const Bound&) = delete;
};

}  // namespace tessera::test
