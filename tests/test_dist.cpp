// Data parallelism across processes, launched by mpirun as a user would: two ranks with batch B
// give the weights one process gets with batch 2B (BatchNorm synchronised, the case where they must
// agree), the same validation figures, and a rank that dies ends the run on every rank. Skips itself,
// saying so, where Open MPI's mpirun is not installed.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <thread>

#include "helpers.hpp"
#include "runner.hpp"
#include "tessera/train/checkpoint.hpp"

namespace tessera::test {
namespace {

bool have_mpirun() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

#define SKIP_WITHOUT_MPI()                                                                                         \
    if (!have_mpirun()) GTEST_SKIP() << "mpirun is not installed (apt install openmpi-bin libopenmpi-dev); scripts/test installs it"

// `--oversubscribe`: CI has two cores; `--allow-run-as-root`: CI runs as root.
std::string mpirun(int ranks) {
    return "mpirun --allow-run-as-root --oversubscribe -np " + std::to_string(ranks) + " '" + fs::absolute(runner_path()).string() + "' ";
}

const char* recipe = R"([run]
name = "one"
out_dir = "runs"
seed = 3
[model]
arch = "resnet20"
[data]
plugin = "synthetic"
image_size = 16
channels = 3
num_classes = 4
train_size = 96
val_size = 40
batch_size = 32
[optimizer]
plugin = "sgd"
momentum = 0.9
weight_decay = 1e-4
[scheduler]
plugin = "constant"
lr = 0.05
[train]
epochs = 1
sync_batchnorm = true
bucket_mb = 1
[[logger]]
plugin = "console"
mode = "lines"
)";

std::string final_line(const std::string& output) {
    const auto at = output.find("final:");
    return at == std::string::npos ? "" : output.substr(at, output.find(" time_s=", at) - at);
}

TEST(DataParallel, TwoRanksOfBatchBMatchOneProcessOfBatch2B) {
    SKIP_WITHOUT_MPI();
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    // Three steps. The run of one process: batch 32; of two: batch 16 each, with gradients in
    // several buckets (bucket_mb = 1: ResNet-20's 1.1 MB of gradients make two).
    const RunResult one = run_runner("r.toml --threads 1", dir.path());
    ASSERT_EQ(one.exit_code, 0) << one.output;
    const std::string two_ranks = "cd '" + dir.path().string() + "' && " + mpirun(2) +
                                  "r.toml --threads 1 --set run.name=two --set data.batch_size=16 2>&1";
    RunResult two{-1, ""};
    FILE* pipe = popen(two_ranks.c_str(), "r");
    ASSERT_NE(pipe, nullptr);
    for (char buf[4096]; std::size_t got = fread(buf, 1, sizeof buf, pipe);) two.output.append(buf, got);
    const int status = pclose(pipe);
    two.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    ASSERT_EQ(two.exit_code, 0) << two.output;
    EXPECT_NE(two.output.find("data parallel: 2 processes (MPI), batch 16 each, global batch 32"), std::string::npos) << two.output;

    auto a = runner::make_cpu_network("resnet20", 4, 3), b = runner::make_cpu_network("resnet20", 4, 3);
    checkpoint::load(a->params(), dir / "runs" / "one" / "last.safetensors");
    checkpoint::load(b->params(), dir / "runs" / "two" / "last.safetensors");
    double worst = 0, scale = 0;
    for (std::size_t i = 0; i < a->params().values.size(); ++i) {
        worst = std::max(worst, double(std::abs(a->params().values[i] - b->params().values[i])));
        scale = std::max(scale, double(std::abs(a->params().values[i])));
    }
    EXPECT_LT(worst / scale, 1e-4) << "weights differ beyond fp32 rounding";
    for (std::size_t i = 0; i < a->params().buffers.size(); ++i)
        EXPECT_NEAR(a->params().buffers[i], b->params().buffers[i], 1e-3 * (1 + std::abs(a->params().buffers[i])))
            << a->params().buffer_entries.front().name;
    // Validation counts each of the 40 images once, over both ranks: the same figures.
    EXPECT_EQ(final_line(two.output).substr(0, 45), final_line(one.output).substr(0, 45)) << one.output << two.output;
}

// The pid of the runner that is rank `rank` of an mpirun whose arguments contain `marker`.
pid_t find_rank(const std::string& marker, int rank) {
    for (const auto& entry : fs::directory_iterator("/proc")) {
        const std::string pid = entry.path().filename();
        if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
        std::ifstream cmdline(entry.path() / "cmdline"), environ(entry.path() / "environ");
        const std::string args((std::istreambuf_iterator<char>(cmdline)), {}), env((std::istreambuf_iterator<char>(environ)), {});
        if (args.rfind(fs::absolute(runner_path()).string(), 0) == 0 && args.find(marker) != std::string::npos &&
            env.find("OMPI_COMM_WORLD_RANK=" + std::to_string(rank) + '\0') != std::string::npos)
            return pid_t(std::stoi(pid));
    }
    return 0;
}

TEST(DataParallel, ARankThatDiesEndsTheRunOnEveryRank) {
    SKIP_WITHOUT_MPI();
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    const std::string marker = "run.name=doomed" + std::to_string(::getpid());
    const std::string command = "cd '" + dir.path().string() + "' && exec " + mpirun(2) + "r.toml --threads 1 --set " + marker +
                                " --set train.epochs=10000 --set data.batch_size=16 >out.txt 2>&1";
    const pid_t launcher = fork();
    ASSERT_GE(launcher, 0);
    if (launcher == 0) {
        execl("/bin/sh", "sh", "-c", command.c_str(), static_cast<char*>(nullptr));
        _exit(127);
    }
    pid_t victim = 0;
    for (int tries = 0; tries < 200 && !victim; ++tries) {
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
        victim = find_rank(marker, 1);
    }
    ASSERT_NE(victim, 0) << "rank 1 never started";
    std::this_thread::sleep_for(std::chrono::seconds(1));  // let it train
    kill(victim, SIGKILL);
    // mpirun must end, with an error, and take rank 0 with it: within a minute, never a hang.
    int status = 0;
    bool ended = false;
    for (int waited = 0; waited < 600 && !ended; ++waited) {
        ended = waitpid(launcher, &status, WNOHANG) == launcher;
        if (!ended) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (!ended) {
        kill(launcher, SIGKILL);
        waitpid(launcher, &status, 0);
    }
    EXPECT_TRUE(ended) << "mpirun still running 60 s after a rank died";
    EXPECT_FALSE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "mpirun reported success";
    EXPECT_EQ(find_rank(marker, 0), 0) << "rank 0 outlived the run";
}

}  // namespace
}  // namespace tessera::test
