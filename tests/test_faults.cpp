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
        return run_shell("cd '" + dir.path().string() + "' && " + limits + " '" + fs::absolute(runner_path()).string() +
                         "' " + args + " 2>&1");
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
    EXPECT_NE(r.output.find("resuming from runs/run/last.safetensors: epoch 1, step 4 of 8"), std::string::npos)
        << r.output;
}

TEST(Faults, AFolderThatCannotBeWrittenLeavesThePreviousOne) {
    Stopped s;
    // A folder where the commit's pointer must be written: no write can succeed, even as root.
    fs::create_directory(s.folder / "checkpoints" / "current.tmp");
    RunResult r = s.run("r.toml --threads 2");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("current.tmp: cannot open for writing"), std::string::npos) << r.output;
    EXPECT_TRUE(checkpoint_values(s.folder / "last.safetensors") == s.saved);
    EXPECT_NO_THROW(checkpoint::load_state(s.folder / "last.state.safetensors"));
    fs::remove(s.folder / "checkpoints" / "current.tmp");
    r = s.run("r.toml --threads 2");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("resuming from runs/run/last.safetensors: epoch 1, step 4 of 8"), std::string::npos)
        << r.output;
}

// A save killed between any two of its file operations (SIGKILL: as a power cut, nothing flushed
// or cleaned up) leaves a whole checkpoint, the previous one or the new one: the run resumes and
// ends with exactly the weights of a run never killed. Every operation of the save is a kill point:
// the temporaries' creation, each rename, the pointer's, each link of the last.* names, the removal
// of the older set.
TEST(Faults, KilledBetweenAnyTwoFileOperationsTheRunResumesExactly) {
    std::string one_epoch = recipe;
    one_epoch.replace(one_epoch.find("epochs = 2"), 10, "epochs = 1");
    const Stopped start(one_epoch);  // 4 of 8 steps done; what is left ends in one save
    TempDir straight;
    fs::copy(start.dir.path(), straight.path(), fs::copy_options::recursive);
    ASSERT_EQ(run_runner("r.toml --threads 2", straight.path()).exit_code, 0);
    const auto expected = checkpoint_values(straight / "runs" / "run" / "last.safetensors");
    int kills = 0;
    for (int op = 1; op < 100; ++op) {
        TempDir dir;
        fs::copy(start.dir.path(), dir.path(), fs::copy_options::recursive);
        const RunResult r =
            run_shell("cd '" + dir.path().string() + "' && TESSERA_KILL_AT_FILE_OP=" + std::to_string(op) + " '" +
                      fs::absolute(runner_path()).string() + "' r.toml --threads 2 2>&1");
        if (r.exit_code == 0) break;  // the save has fewer operations: every one was a kill point
        ++kills;                      // only a save's file operations are counted: the kill came within it
        const RunResult resumed = run_runner("r.toml --threads 2", dir.path());
        ASSERT_EQ(resumed.exit_code, 0) << "killed at file operation " << op << ", the run does not resume:\n"
                                        << resumed.output;
        EXPECT_TRUE(checkpoint_values(dir / "runs" / "run" / "last.safetensors") == expected)
            << "killed at file operation " << op << ", the resumed run ends elsewhere:\n"
            << resumed.output;
    }
    std::printf("killed at each of the save's %d file operations; every run resumed to the straight run's weights\n",
                kills);
    EXPECT_GE(kills, 10) << "a save of best.safetensors and a checkpoint set has more file operations than that";
}

TEST(Faults, APluginThatThrowsIsNamedAndTheCheckpointKept) {
    const std::string plugins = "[run]\nplugin_path = '" + fs::absolute(binary_dir()).string() + "'\n";
    std::string faulty = recipe;
    faulty.replace(faulty.find("[scheduler]"), 11, "[optimizer]\nplugin = \"faulty\"\nthrow_at_step = 12\n[scheduler]");
    faulty.replace(faulty.find("seed = 2\n"), 9,
                   "seed = 2\nplugin_path = '" + fs::absolute(binary_dir()).string() + "'\n");
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
