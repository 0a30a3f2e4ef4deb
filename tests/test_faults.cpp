// Faults, with nothing lost: a checkpoint that cannot be written (a full disk, a folder in the
// way), the process killed while it writes one, a plugin that throws. Each leaves the previous
// checkpoint loadable and the run resumable.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <thread>

#include "helpers.hpp"
#include "runner.hpp"
#include "tessera/train/checkpoint.hpp"

namespace tessera::test {
namespace {

// 8 steps an epoch.
const std::string recipe = R"([run]
name = "run"
out_dir = "runs"
seed = 2
[model]
arch = "resnet20"
[data]
plugin = "synthetic"
image_size = 8
num_classes = 4
train_size = 128
val_size = 32
batch_size = 16
[scheduler]
plugin = "constant"
lr = 0.05
[train]
epochs = 2
[[logger]]
plugin = "console"
mode = "lines"
)";

bool has_temporaries(const fs::path& folder) {
    for (auto& f : fs::directory_iterator(folder))
        if (f.path().extension() == ".tmp") return true;
    return false;
}

struct Stopped {  // a run stopped after 4 steps: the checkpoint the faults must not lose
    TempDir dir;
    fs::path folder = dir / "runs" / "run";
    std::vector<float> saved;
    explicit Stopped(const std::string& text = recipe) {
        std::ofstream(dir / "r.toml") << text;
        const RunResult r = run_runner("r.toml --threads 2 --stop-after-steps 4", dir.path());
        EXPECT_EQ(r.exit_code, 0) << r.output;
        saved = checkpoint_values(folder / "last.safetensors");
    }
    RunResult run(const std::string& args, const std::string& limits = "") const {
        return run_shell("cd '" + dir.path().string() + "' && " + limits + " '" + fs::absolute(runner_path()).string() + "' " + args +
                         " 2>&1");
    }
};

TEST(Faults, DiskFullDuringACheckpointLeavesThePreviousOne) {
    Stopped s;
    // A file-size limit of 256 KiB, SIGXFSZ ignored: writes past it fail as on a full disk (the
    // weights are about 1 MiB).
    const std::string full_disk = "trap '' XFSZ; ulimit -f 256;";
    RunResult r = s.run("r.toml --threads 2", full_disk);
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("write failed (disk full?)"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("the previous files are as they were"), std::string::npos) << r.output;
    EXPECT_TRUE(checkpoint_values(s.folder / "last.safetensors") == s.saved);
    EXPECT_FALSE(has_temporaries(s.folder));
    // on_failure = "continue": the run trains on, warning at each save.
    r = s.run("r.toml --threads 2 --set checkpoint.on_failure=continue", full_disk);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("warning: could not save the checkpoint"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("final: epoch=2"), std::string::npos) << r.output;
    EXPECT_TRUE(checkpoint_values(s.folder / "last.safetensors") == s.saved);
    // With room again, the run resumes from the checkpoint it kept.
    r = s.run("r.toml --threads 2");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("resuming from runs/run/last.safetensors: epoch 1, step 4 of 8"), std::string::npos) << r.output;
}

TEST(Faults, AFolderThatCannotBeWrittenLeavesThePreviousOne) {
    Stopped s;
    // A folder where the training state's temporary file must go: no write can succeed, even as root.
    fs::create_directory(s.folder / "last.state.safetensors.tmp");
    const RunResult r = s.run("r.toml --threads 2");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("last.state.safetensors.tmp: cannot open for writing"), std::string::npos) << r.output;
    EXPECT_TRUE(checkpoint_values(s.folder / "last.safetensors") == s.saved);
    EXPECT_NO_THROW(checkpoint::load_state(s.folder / "last.state.safetensors"));
}

TEST(Faults, KilledWhileWritingACheckpointThePreviousStillLoads) {
    // ResNet50: a checkpoint of 100 MB, long enough to be caught in the middle of writing it.
    std::string big = recipe;
    big.replace(big.find("arch = \"resnet20\""), 17, "arch = \"resnet50\"");
    big.replace(big.find("train_size = 128"), 16, "train_size = 8");
    big.replace(big.find("batch_size = 16"), 15, "batch_size = 2");
    TempDir dir;
    std::ofstream(dir / "r.toml") << big;
    ASSERT_EQ(run_runner("r.toml --threads 2 --stop-after-steps 1", dir.path()).exit_code, 0);
    const fs::path folder = dir / "runs" / "run";
    const auto saved = checkpoint_values(folder / "last.safetensors", "resnet50");
    bool caught = false;
    for (int attempt = 0; attempt < 3 && !caught; ++attempt) {
        const pid_t child = fork();
        ASSERT_GE(child, 0);
        if (child == 0) {
            freopen((dir / "out.txt").c_str(), "w", stdout);
            dup2(fileno(stdout), 2);
            if (chdir(dir.path().c_str()) != 0) _exit(127);
            const std::string runner = fs::absolute(runner_path()).string();
            execl(runner.c_str(), runner.c_str(), "r.toml", "--threads", "2", static_cast<char*>(nullptr));
            _exit(127);
        }
        // SIGKILL the moment a temporary checkpoint file appears.
        for (int i = 0; i < 600000 && !caught; ++i) {
            if (fs::exists(folder / "last.safetensors.tmp") || fs::exists(folder / "last.state.safetensors.tmp")) caught = true;
            else if (waitpid(child, nullptr, WNOHANG) == child) break;
            else std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
        kill(child, SIGKILL);
        waitpid(child, nullptr, 0);
    }
    ASSERT_TRUE(caught) << "never saw the checkpoint being written";
    EXPECT_TRUE(checkpoint_values(folder / "last.safetensors", "resnet50") == saved) << "the previous checkpoint changed";
    const RunResult r = run_runner("r.toml --threads 2 --stop-after-steps 2", dir.path());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("resuming from runs/run/last.safetensors: epoch 1, step 1 of 4"), std::string::npos) << r.output;
}

TEST(Faults, APluginThatThrowsIsNamedAndTheCheckpointKept) {
    const std::string plugins = "[run]\nplugin_path = '" + fs::absolute(binary_dir()).string() + "'\n";
    std::string faulty = recipe;
    faulty.replace(faulty.find("[scheduler]"), 11, "[optimizer]\nplugin = \"faulty\"\nthrow_at_step = 12\n[scheduler]");
    faulty.replace(faulty.find("seed = 2\n"), 9, "seed = 2\nplugin_path = '" + fs::absolute(binary_dir()).string() + "'\n");
    TempDir dir;
    std::ofstream(dir / "r.toml") << faulty;
    // Its factory fails: refused, naming the module.
    RunResult r = run_runner("r.toml --threads 2 --set optimizer.throw_in_factory=true", dir.path());
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("optimizer plugin \"faulty\""), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("faulty.so"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("failed in its factory: the factory was told to fail"), std::string::npos) << r.output;
    // Its step fails in the second epoch: the run stops naming it; the first epoch's checkpoint stays.
    r = run_runner("r.toml --threads 2", dir.path());
    EXPECT_EQ(r.exit_code, 1) << r.output;
    EXPECT_NE(r.output.find("optimizer plugin \"faulty\""), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("failed in step(): an index out of range, on purpose"), std::string::npos) << r.output;
    const auto meta = checkpoint::read_metadata(dir / "runs" / "run" / "last.safetensors");
    EXPECT_EQ(meta.at("epoch"), "2");
    EXPECT_EQ(meta.at("batch"), "0");
    EXPECT_NO_THROW(checkpoint_values(dir / "runs" / "run" / "last.safetensors"));
}

}  // namespace
}  // namespace tessera::test
