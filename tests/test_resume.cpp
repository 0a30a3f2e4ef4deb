// Checkpoints and resume, as a user meets them through runner: a run stopped (mid-epoch) and
// resumed ends with the very weights of a run that was never stopped; SIGTERM finishes the step,
// saves and says how to resume; a damaged checkpoint is refused and nothing is overwritten.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <fstream>
#include <tuple>
#include <thread>

#include "helpers.hpp"
#include "runner.hpp"
#include "tessera/train/checkpoint.hpp"
#include "tessera/train/run_folder.hpp"

namespace tessera::test {
namespace {

const char* recipe = R"([run]
name = "run"
out_dir = "runs"
seed = 5
[model]
arch = "resnet20"
[data]
plugin = "synthetic"
image_size = 16
channels = 3
num_classes = 4
train_size = 128
val_size = 32
batch_size = 16
[optimizer]
plugin = "sgd"
momentum = 0.9
weight_decay = 5e-4
nesterov = true
[scheduler]
plugin = "onecycle"
max_lr = 0.1
[train]
epochs = 2
[[logger]]
plugin = "console"
mode = "lines"
)";

TEST(Resume, AStoppedAndResumedRunEndsWithTheWeightsOfAStraightOne) {
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    const RunResult straight = run_runner("r.toml --threads 2 --set run.name=straight", dir.path());
    ASSERT_EQ(straight.exit_code, 0) << straight.output;
    // 8 steps an epoch: stop after 11, in the middle of the second epoch, then resume to the end.
    RunResult r = run_runner("r.toml --threads 2 --set run.name=split --stop-after-steps 11", dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("stopped as asked at epoch 2, step 3"), std::string::npos) << r.output;
    EXPECT_EQ(r.output.find("final:"), std::string::npos) << r.output;
    r = run_runner("r.toml --threads 2 --set run.name=split", dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("resuming from runs/split/last.safetensors: epoch 2, step 3 of 8"), std::string::npos)
        << r.output;
    EXPECT_TRUE(checkpoint_values(dir / "runs" / "straight" / "last.safetensors") ==
                checkpoint_values(dir / "runs" / "split" / "last.safetensors"))
        << "the resumed run's weights differ from the straight run's";
    EXPECT_TRUE(fs::exists(dir / "runs" / "split" / "best.safetensors"));
    // A finished run, started again, says so and leaves its weights alone.
    r = run_runner("r.toml --threads 2 --set run.name=split", dir.path());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("the run has done all of its 2 epochs"), std::string::npos) << r.output;
}

// A run is a function of its recipe: the same recipe under another run name (which moves every heap
// allocation after it) trains to the same bits. Ten classes and 32 images a batch, so the classifier's
// bias gradient is wide and long enough for a vectorized sum, the path where an alignment-dependent
// order once made the name change the weights.
TEST(Resume, TheRunNameDoesNotChangeTheWeights) {
    TempDir dir;
    std::string ten_classes = recipe;
    ten_classes.replace(ten_classes.find("num_classes = 4"), 15, "num_classes = 10");
    ten_classes.replace(ten_classes.find("batch_size = 16"), 15, "batch_size = 32");
    std::ofstream(dir / "r.toml") << ten_classes;
    const std::string long_name(100, 'n');
    for (const std::string& name : {std::string("a"), long_name}) {
        const RunResult r = run_runner("r.toml --threads 2 --stop-after-steps 3 --set run.name=" + name, dir.path());
        ASSERT_EQ(r.exit_code, 0) << r.output;
        // The first line names the device and the kernels that run.
        EXPECT_NE(r.output.find("batch 32, cpu (onednn "), std::string::npos) << r.output;
    }
    EXPECT_TRUE(checkpoint_values(dir / "runs" / "a" / "last.safetensors", "resnet20", 10) ==
                checkpoint_values(dir / "runs" / long_name / "last.safetensors", "resnet20", 10))
        << "the same recipe under two run names trained to different weights";
}

TEST(Resume, EveryTrainingFeatureResumesExactly) {
    // Two batches a step, mixup and cutmix, clipping, the weights' average: 4 steps an epoch.
    TempDir dir;
    std::string features = recipe;
    features.replace(features.find("epochs = 2\n"), 11,
                     "epochs = 2\naccumulate = 2\nmixup_alpha = 0.2\ncutmix_alpha = 1.0\ngrad_clip = 0.5\nema = 0.9\n");
    std::ofstream(dir / "r.toml") << features;
    const RunResult straight = run_runner("r.toml --threads 2 --set run.name=straight", dir.path());
    ASSERT_EQ(straight.exit_code, 0) << straight.output;
    EXPECT_NE(straight.output.find("moving average of the weights: val loss"), std::string::npos) << straight.output;
    RunResult r = run_runner("r.toml --threads 2 --set run.name=split --stop-after-steps 5", dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("stopped as asked at epoch 2, step 1"), std::string::npos) << r.output;
    r = run_runner("r.toml --threads 2 --set run.name=split", dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("epoch 2, step 1 of 4"), std::string::npos) << r.output;
    for (const char* file : {"last.safetensors", "last.ema.safetensors"})
        EXPECT_TRUE(checkpoint_values(dir / "runs" / "straight" / file) ==
                    checkpoint_values(dir / "runs" / "split" / file))
            << file << " differs";
    EXPECT_FALSE(checkpoint_values(dir / "runs" / "split" / "last.safetensors") ==
                 checkpoint_values(dir / "runs" / "split" / "last.ema.safetensors"));
    // Resuming with another accumulate is refused: the saved position is no whole step of it.
    r = run_runner("r.toml --threads 2 --set run.name=odd --stop-after-steps 5 --set train.accumulate=1", dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    r = run_runner("r.toml --threads 2 --set run.name=odd", dir.path());
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("no whole step of train.accumulate = 2"), std::string::npos) << r.output;
}

TEST(Resume, SigtermFinishesTheStepSavesAndSaysHowToResume) {
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    const pid_t child = fork();
    ASSERT_GE(child, 0);
    if (child == 0) {
        const std::string out = (dir / "out.txt").string();
        freopen(out.c_str(), "w", stdout);
        dup2(fileno(stdout), 2);
        if (chdir(dir.path().c_str()) != 0) _exit(127);
        const std::string runner = fs::absolute(runner_path()).string();
        execl(runner.c_str(), runner.c_str(), "r.toml", "--threads", "1", "--set", "train.epochs=1000",
              static_cast<char*>(nullptr));
        _exit(127);
    }
    // Once it has trained a little, as a spot instance's notice would.
    for (int i = 0; i < 300 && !fs::exists(dir / "runs" / "run" / "last.safetensors"); ++i)
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    kill(child, SIGTERM);
    int status = 0;
    waitpid(child, &status, 0);
    ASSERT_TRUE(WIFEXITED(status)) << "killed by the signal instead of stopping";
    EXPECT_EQ(WEXITSTATUS(status), 143);
    std::ifstream out(dir / "out.txt");
    const std::string output((std::istreambuf_iterator<char>(out)), {});
    EXPECT_NE(output.find("interrupted (SIGTERM) at epoch"), std::string::npos) << output;
    EXPECT_NE(output.find("resume with: runner r.toml --set train.epochs=1000\n"), std::string::npos) << output;
    EXPECT_NO_THROW(checkpoint_values(dir / "runs" / "run" / "last.safetensors"));
    const RunResult r = run_runner("r.toml --threads 1 --set train.epochs=1000 --stop-after-steps 1", dir.path());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("resuming from runs/run/last.safetensors"), std::string::npos) << r.output;
}

TEST(Resume, ADamagedCheckpointIsRefusedAndNeverOverwritten) {
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    ASSERT_EQ(run_runner("r.toml --threads 2 --stop-after-steps 3", dir.path()).exit_code, 0);
    const fs::path state = dir / "runs" / "run" / "last.state.safetensors",
                   last = dir / "runs" / "run" / "last.safetensors";
    fs::resize_file(state, fs::file_size(state) / 2);
    const auto before = checkpoint_values(last);
    const auto state_size = fs::file_size(state);
    RunResult r = run_runner("r.toml --threads 2", dir.path());
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("state.safetensors: tensor \"momentum_buffer\" lies outside the file"), std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("--fresh"), std::string::npos) << r.output;
    EXPECT_TRUE(checkpoint_values(last) == before);
    EXPECT_EQ(fs::file_size(state), state_size);
    // --fresh starts over.
    r = run_runner("r.toml --threads 2 --fresh --stop-after-steps 2", dir.path());
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_EQ(r.output.find("resuming"), std::string::npos) << r.output;
    // A checkpoint of another network is refused by name, and the run folder is left as it was:
    // its recipe.toml still says what the run is.
    const auto saved_recipe = read_file(dir / "runs" / "run" / "recipe.toml");
    r = run_runner("r.toml --threads 2 --set model.arch=resnet32", dir.path());
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("holds a resnet20, but the recipe builds a resnet32"), std::string::npos) << r.output;
    EXPECT_EQ(read_file(dir / "runs" / "run" / "recipe.toml"), saved_recipe) << "a refused run rewrote the recipe";
}

// A training state is a file like any other: its numbers may be missing or damaged. Refused by
// name, with exit 2, never std::stod's exception.
TEST(Resume, AStateWhoseNumbersAreMissingOrDamagedIsRefused) {
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    ASSERT_EQ(run_runner("r.toml --threads 2 --stop-after-steps 3", dir.path()).exit_code, 0);
    const fs::path weights = *train::RunFolder(dir / "runs" / "run").latest(),
                   state = train::RunFolder::state_file(weights);
    const checkpoint::TrainingState whole = checkpoint::load_state(state);
    for (const auto& [key, value, expected] : std::vector<std::tuple<std::string, std::string, std::string>>{
             {"best_top1", "x", "\"best_top1\" in its metadata is \"x\", not a number"},
             {"epoch", "1e300", "holds no position a run can be at"},
             {"loss_sum", "", "has no \"loss_sum\" in its metadata"}}) {
        checkpoint::TrainingState damaged = whole;
        if (value.empty())
            damaged.metadata.erase(key);
        else
            damaged.metadata[key] = value;
        auto net = runner::make_cpu_network("resnet20", 4, 3);
        checkpoint::load(net->params(), weights);
        const auto meta = checkpoint::read_metadata(weights);
        if (key == "epoch") {  // the weights must agree, or the mismatch is found first
            auto moved = meta;
            moved["epoch"] = value;
            checkpoint::save(net->params(), weights, moved);
        }
        checkpoint::save_state(damaged, state);
        const RunResult r = run_runner("r.toml --threads 2", dir.path());
        EXPECT_EQ(r.exit_code, 2) << key << "\n" << r.output;
        EXPECT_NE(r.output.find(expected), std::string::npos) << key << "\n" << r.output;
        EXPECT_NE(r.output.find("model.state.safetensors"), std::string::npos) << r.output;
        checkpoint::save_state(whole, state);
        checkpoint::save(net->params(), weights, meta);
    }
}

// Another batch size gives the epochs other batches: the saved position would be a different
// place in the data. Refused, naming both, with nothing written.
TEST(Resume, AnotherBatchSizeIsRefused) {
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    ASSERT_EQ(run_runner("r.toml --threads 2 --stop-after-steps 3", dir.path()).exit_code, 0);
    const auto saved_recipe = read_file(dir / "runs" / "run" / "recipe.toml");
    const auto saved = checkpoint_values(dir / "runs" / "run" / "last.safetensors");
    const RunResult r = run_runner("r.toml --threads 2 --set data.batch_size=8", dir.path());
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("was saved by 1 process(es) of batch 16, and this run has 1 of batch 8"), std::string::npos)
        << r.output;
    EXPECT_EQ(read_file(dir / "runs" / "run" / "recipe.toml"), saved_recipe);
    EXPECT_TRUE(checkpoint_values(dir / "runs" / "run" / "last.safetensors") == saved);
}

// eval and predict given what they cannot use: each says what is wrong with which file, exits 2.
TEST(Resume, EvalAndPredictRefuseBadInputByName) {
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    ASSERT_EQ(run_runner("r.toml --threads 2 --stop-after-steps 2", dir.path()).exit_code, 0);
    std::ofstream(dir / "notes.jpg") << "a shopping list, not a photograph\n";
    std::ofstream(dir / "two.txt") << "cat\ndog\n";
    fs::copy_file(dir / "runs" / "run" / "last.safetensors", dir / "cut.safetensors");
    fs::resize_file(dir / "cut.safetensors", fs::file_size(dir / "cut.safetensors") - 1000);
    std::ofstream(dir / "real.ppm") << "P6\n1 1\n255\n" << char(10) << char(20) << char(30);
    std::ofstream(dir / "nodata.toml")
        << "[model]\narch = 'resnet20'\n[data]\nplugin = 'idx'\npath = 'no/such/folder'\n";
    const std::string last = "--checkpoint runs/run/last.safetensors";
    {  // the same weights, with input sizes no image has
        auto net = runner::make_cpu_network("resnet20", 4, 3);
        checkpoint::load(net->params(), dir / "runs" / "run" / "last.safetensors");
        auto meta = checkpoint::read_metadata(dir / "runs" / "run" / "last.safetensors");
        for (const char* size : {"0", "-5", "big"}) {
            meta["input_height"] = size;
            checkpoint::save(net->params(), dir / (std::string("size_") + size + ".safetensors"), meta);
        }
    }
    const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
        {"predict --checkpoint size_0.safetensors real.ppm",
         {"size_0.safetensors", "input_height is \"0\", not an image size"}},
        {"predict --checkpoint size_-5.safetensors real.ppm",
         {"input_height is \"-5\", not an image size in [1, 8192]"}},
        {"predict --checkpoint size_big.safetensors real.ppm", {"input_height is \"big\""}},
        {"predict " + last + " notes.jpg", {"notes.jpg", "not an image tessera can read"}},
        {"predict " + last + " missing.jpg", {"missing.jpg", "cannot read the file"}},
        {"predict " + last + " --labels two.txt real.ppm", {"two.txt", "has 2 names for a model of 4 classes"}},
        {"predict --checkpoint cut.safetensors real.ppm", {"cut.safetensors"}},
        {"predict --checkpoint r.toml real.ppm", {"r.toml"}},
        {"eval r.toml --checkpoint runs/run/last.safetensors --set model.arch=resnet32",
         {"holds a resnet20, but the recipe builds a resnet32"}},
        {"eval r.toml --checkpoint runs/run/last.safetensors --set model.num_classes=7",
         {"last.safetensors", "holds a model of 4 classes, but the recipe's has 7"}},
        {"eval r.toml --checkpoint nowhere.safetensors", {"nowhere.safetensors"}},
        {"eval r.toml --checkpoint cut.safetensors", {"cut.safetensors"}},
        {"eval nodata.toml --checkpoint runs/run/last.safetensors", {"no/such/folder"}},
    };
    for (const auto& [args, needles] : cases) {
        const RunResult r = run_runner(args, dir.path());
        EXPECT_EQ(r.exit_code, 2) << args << "\n" << r.output;
        EXPECT_NE(r.output.find("error: "), std::string::npos) << args << "\n" << r.output;
        for (const auto& needle : needles)
            EXPECT_NE(r.output.find(needle), std::string::npos) << args << ": no \"" << needle << "\"\n" << r.output;
    }
    // And the good case, for contrast.
    const RunResult ok = run_runner("predict " + last + " --json real.ppm", dir.path());
    EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

}  // namespace
}  // namespace tessera::test
