// Data parallelism across processes, launched by mpirun as a user would: two ranks with batch B
// make the update one process makes with batch 2B (BatchNorm synchronised, the case where they must
// agree), with the same losses and validation figures; without synchronised BatchNorm the ranks
// still average their gradients; a rank that dies ends the run on every rank. Skips itself, saying
// so, where Open MPI's mpirun is not installed.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <cmath>
#include <fstream>
#include <sstream>
#include <thread>

#include "helpers.hpp"
#include "runner.hpp"
#include "tessera/plugin/registry.hpp"
#include "tessera/train/checkpoint.hpp"

namespace tessera::test {
namespace {

bool have_mpirun() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

#define SKIP_WITHOUT_MPI() \
    if (!have_mpirun())    \
    GTEST_SKIP() << "mpirun is not installed (apt install openmpi-bin libopenmpi-dev); scripts/test installs it"

// `--oversubscribe`: CI has two cores; `--allow-run-as-root`: CI runs as root.
std::string mpirun(int ranks) {
    return "mpirun --allow-run-as-root --oversubscribe -np " + std::to_string(ranks) + " '" +
           fs::absolute(runner_path()).string() + "' ";
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
num_classes = 10
train_size = 96
val_size = 40
batch_size = 32
[optimizer]
plugin = "sgd"
momentum = 0.9
weight_decay = 1e-4
[scheduler]
plugin = "constant"
lr = 0.01
[train]
epochs = 1
sync_batchnorm = true
bucket_mb = 1
[[logger]]
plugin = "console"
mode = "lines"
[[logger]]
plugin = "csv"
)";

/// `runner ARGS` under mpirun with `ranks` processes, from `dir`.
RunResult run_ranks(int ranks, const std::string& args, const fs::path& dir) {
    return run_shell("cd '" + dir.string() + "' && " + mpirun(ranks) + args + " 2>&1");
}

/// What a run of the recipe above ended with: the change it made to the initial weights, its
/// BatchNorm statistics and its epoch's figures from metrics.csv.
struct Outcome {
    std::vector<double> update;
    std::vector<float> buffers;
    double train_loss = 0, val_loss = 0, val_top1 = 0, val_top5 = 0;
};

Outcome outcome(const fs::path& folder, bool finished = true) {
    auto initial = runner::make_cpu_network("resnet20", 10, 3), trained = runner::make_cpu_network("resnet20", 10, 3);
    initial->init(3, {false});  // the recipe's seed: the weights every rank starts from
    checkpoint::load(trained->params(), folder / "last.safetensors");
    Outcome o;
    for (std::size_t i = 0; i < initial->params().values.size(); ++i)
        o.update.push_back(double(trained->params().values[i]) - initial->params().values[i]);
    o.buffers = trained->params().buffers;
    if (!finished) return o;  // stopped within its epoch: no figures yet
    std::ifstream csv(folder / "metrics.csv");
    std::string header, row;
    std::getline(csv, header);
    std::getline(csv, row);
    std::vector<double> f;
    std::stringstream fields(row);
    for (std::string x; std::getline(fields, x, ',');) f.push_back(std::stod(x));
    EXPECT_GE(f.size(), 7u) << "metrics.csv: " << row;
    if (f.size() >= 7) o.train_loss = f[2], o.val_loss = f[4], o.val_top1 = f[5], o.val_top5 = f[6];
    return o;
}

/// |a - b| / |b| over whole vectors (L2).
template <class T>
double relative_difference(const std::vector<T>& a, const std::vector<T>& b) {
    double diff = 0, norm = 0;
    for (std::size_t i = 0; i < b.size(); ++i)
        diff += (double(a[i]) - b[i]) * (double(a[i]) - b[i]), norm += double(b[i]) * b[i];
    return std::sqrt(diff / norm);
}

/// The run of one process with batch 32, one step: the reference the test compares with. The
/// rate is small because this network on 16 px images amplifies fp32 rounding (two threads against
/// one, or two ranks' sums against one's) about fiftyfold a step at a rate of 0.05, and the
/// comparison is of the arithmetic, not of chaos.
Outcome one_process(const fs::path& dir) {
    std::ofstream(dir / "r.toml") << recipe;
    const RunResult one = run_runner("r.toml --threads 1 --set data.train_size=32", dir);
    EXPECT_EQ(one.exit_code, 0) << one.output;
    return outcome(dir / "runs" / "one");
}

TEST(DataParallel, TwoRanksOfBatchBMatchOneProcessOfBatch2B) {
    SKIP_WITHOUT_MPI();
    TempDir dir;
    const Outcome one = one_process(dir.path());
    // Two ranks of batch 16 each, BatchNorm synchronised, gradients in several buckets (bucket_mb = 1:
    // ResNet-20's 1.1 MB of gradients make two): the same step as one process of batch 32.
    const RunResult two = run_ranks(
        2, "r.toml --threads 1 --set run.name=two --set data.batch_size=16 --set data.train_size=32", dir.path());
    ASSERT_EQ(two.exit_code, 0) << two.output;
    EXPECT_NE(two.output.find("data parallel: 2 processes (MPI), batch 16 each, global batch 32"), std::string::npos)
        << two.output;
    const Outcome both = outcome(dir / "runs" / "two");
    // The updates (not the weights, which hide them) agree to fp32 rounding, summed in another order.
    // One step, so that no step amplifies the last one's rounding: the gap is 2.1e-4 on an AVX-512
    // Xeon (below 1e-5 on AVX2 EPYCs), and 0.97 with BatchNorm left unsynchronised, the mistake
    // this catches.
    const double update_gap = relative_difference(both.update, one.update),
                 statistics_gap = relative_difference(both.buffers, one.buffers);
    std::printf("two ranks against one process: update %.2e, BatchNorm statistics %.2e (relative L2)\n", update_gap,
                statistics_gap);
    EXPECT_LT(update_gap, 2e-3) << "the two runs' updates differ";
    EXPECT_LT(statistics_gap, 1e-5) << "the BatchNorm statistics differ";
    // The training loss of every image once, and validation over 10 classes counting each of the 40
    // images once across the ranks (metrics.csv prints 6 decimals).
    EXPECT_NEAR(both.train_loss, one.train_loss, 2e-6);
    EXPECT_NEAR(both.val_loss, one.val_loss, 2e-6);
    EXPECT_EQ(both.val_top1, one.val_top1);
    EXPECT_EQ(both.val_top5, one.val_top5);
    EXPECT_LT(one.val_top5, 1.0) << "top-5 of 10 classes should not be trivially 1";
}

/// DDP's first step without synchronised BatchNorm, worked out here with the library: each rank's
/// gradient on its own 16 images (BatchNorm over those alone), their average, and SGD's first step
/// from the initial weights (momentum's buffer starts as the gradient): the update it makes.
std::vector<double> first_step_of_two_ranks(const fs::path& plugins) {
    plugin::Registry registry({plugins});
    auto data = registry.create<plugin::DataSource>("synthetic", {{"image_size", std::int64_t(16)},
                                                                  {"channels", std::int64_t(3)},
                                                                  {"num_classes", std::int64_t(10)},
                                                                  {"train_size", std::int64_t(96)},
                                                                  {"val_size", std::int64_t(40)}});
    const plugin::DatasetInfo info = data->info();
    std::vector<float> mean, inv_std;
    for (int c = 0; c < 3; ++c)
        mean.push_back(float(info.mean[std::size_t(c)])), inv_std.push_back(float(1 / info.std[std::size_t(c)]));
    auto net = runner::make_cpu_network("resnet20", 10, 3);
    net->init(3, {false});
    const std::vector<float> w0 = net->params().values;
    std::vector<double> average(w0.size(), 0.0);
    cpu::Context ctx(1);
    for (int rank = 0; rank < 2; ++rank) {
        plugin::EpochPlan plan;  // as the trainer plans each rank's first epoch
        plan.epoch = 1, plan.seed = 3, plan.batch_size = 16, plan.rank = rank, plan.world_size = 2,
        plan.drop_last = true;
        data->start_epoch(plugin::Split::train, plan);
        plugin::Batch batch;
        EXPECT_TRUE(data->next(batch));
        ctx.arena.reset();
        ctx.training = true;
        net->params().zero_grad();
        const Tensor x = ctx.arena.tensor({batch.count, batch.height, batch.width, batch.channels});
        cpu::Backend::normalize_images(ctx, batch.pixels.data(), mean.data(), inv_std.data(), x);
        const Tensor logits = net->forward(ctx, x);
        const Tensor dlogits = ctx.arena.tensor(logits.shape);
        cpu::Backend::softmax_cross_entropy(ctx, logits, batch.labels.data(), 0.f, dlogits.data);
        net->backward(ctx, dlogits);
        for (std::size_t i = 0; i < average.size(); ++i) average[i] += 0.5 * net->params().grads[i];
    }
    std::vector<double> update(w0.size());
    for (std::size_t i = 0; i < update.size(); ++i)
        update[i] = -0.01 * (average[i] + 1e-4 * w0[i]);  // lr, weight_decay
    return update;
}

// Without synchronised BatchNorm (the default) each rank normalises its 16 images by their own
// statistics and DDP averages the gradients that gives: the first step must be that average's, to
// fp32 rounding. Summed gradients, or one rank's alone, are far from it.
TEST(DataParallel, TwoRanksWithoutSynchronisedBatchNormAverageTheirGradients) {
    SKIP_WITHOUT_MPI();
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    const RunResult two =
        run_ranks(2,
                  "r.toml --threads 1 --set run.name=local --set data.batch_size=16 --set train.sync_batchnorm=false "
                  "--stop-after-steps 1",
                  dir.path());
    ASSERT_EQ(two.exit_code, 0) << two.output;
    EXPECT_NE(two.output.find("data parallel: 2 processes (MPI), batch 16 each, global batch 32"), std::string::npos)
        << two.output;
    const Outcome local = outcome(dir / "runs" / "local", false);
    const std::vector<double> expected = first_step_of_two_ranks(plugin_dir());
    const double gap = relative_difference(local.update, expected);
    std::printf("two ranks without synchronised BatchNorm against the average of their gradients: %.2e (relative L2)\n",
                gap);
    EXPECT_LT(gap, 1e-4) << "the update is not the average of the ranks' gradients";
}

/// runner eval's figures for a checkpoint, in one process.
Outcome evaluated(const fs::path& dir, const std::string& checkpoint, const std::string& sets) {
    const RunResult r = run_runner("eval r.toml --json --threads 1 --checkpoint " + checkpoint + " " + sets, dir);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    Outcome o;
    auto field = [&](const std::string& key) {
        const auto at = r.output.find("\"" + key + "\": ");
        return at == std::string::npos ? NAN : std::stod(r.output.substr(at + key.size() + 4));
    };
    o.val_loss = field("loss"), o.val_top1 = field("top1"), o.val_top5 = field("top5");
    return o;
}

// With BatchNorm per rank (the default), each rank's running statistics follow its own batches.
// The figures a run reports, and those that pick best.safetensors and stop at target_top1, must be
// of the model rank 0 saves, as `runner eval` measures it: not a sum over ranks that each validate
// a model of their own.
TEST(DataParallel, PerRankBatchNormValidatesTheModelRankZeroSaves) {
    SKIP_WITHOUT_MPI();
    TempDir dir;
    std::ofstream(dir / "r.toml") << recipe;
    const std::string sets = "--set run.name=local --set data.batch_size=16 --set train.sync_batchnorm=false";
    const RunResult two = run_ranks(2, "r.toml --threads 1 " + sets, dir.path());
    ASSERT_EQ(two.exit_code, 0) << two.output;
    const Outcome reported = outcome(dir / "runs" / "local");
    const Outcome saved = evaluated(dir.path(), "runs/local/last.safetensors", sets);
    std::printf("reported: val loss %.6f, top-1 %.4f; runner eval of last.safetensors: %.6f, %.4f\n", reported.val_loss,
                reported.val_top1, saved.val_loss, saved.val_top1);
    EXPECT_NEAR(reported.val_loss, saved.val_loss, 2e-6);  // metrics.csv prints 6 decimals
    EXPECT_EQ(reported.val_top1, saved.val_top1);
    EXPECT_EQ(reported.val_top5, saved.val_top5);
}

// Rank 0 alone decides whether to resume, and reads the checkpoint: with run folders local to each
// machine, another rank's folder may be empty. Here rank 1 runs in a folder of its own with no
// run in it; the two ranks still continue together from rank 0's checkpoint, to the weights of a
// run never stopped. A checkpoint of another number of ranks is refused on every rank, without a
// hang.
TEST(DataParallel, RankZeroDecidesTheResumeAndAnotherRankCountIsRefused) {
    SKIP_WITHOUT_MPI();
    TempDir straight, stopped, elsewhere;
    for (auto* d : {&straight, &stopped, &elsewhere}) std::ofstream(*d / "r.toml") << recipe;
    const std::string sets = "--set data.batch_size=16 --set train.epochs=2";
    ASSERT_EQ(run_ranks(2, "r.toml --threads 1 " + sets, straight.path()).exit_code, 0);
    const RunResult first = run_ranks(2, "r.toml --threads 1 --stop-after-steps 2 " + sets, stopped.path());
    ASSERT_EQ(first.exit_code, 0) << first.output;
    const std::string runner = "'" + fs::absolute(runner_path()).string() + "' r.toml --threads 1 " + sets;
    const RunResult resumed =
        run_shell("timeout 120 mpirun --allow-run-as-root --oversubscribe -np 1 -wdir '" + stopped.path().string() +
                  "' " + runner + " : -np 1 -wdir '" + elsewhere.path().string() + "' " + runner + " 2>&1");
    ASSERT_EQ(resumed.exit_code, 0) << resumed.output;
    EXPECT_NE(resumed.output.find("resuming from runs/one/last.safetensors: epoch 1, step 2 of 3"), std::string::npos)
        << resumed.output;
    EXPECT_FALSE(fs::exists(elsewhere / "runs")) << "a rank other than 0 wrote a run folder";
    const double gap = relative_difference(outcome(stopped / "runs" / "one", false).update,
                                           outcome(straight / "runs" / "one", false).update);
    std::printf("two ranks stopped and resumed against two ranks straight: %.2e (relative L2)\n", gap);
    EXPECT_LT(gap, 1e-6);

    // One process cannot take over a run of two: its epochs hold other batches.
    const auto saved = read_file(stopped / "runs" / "one" / "recipe.toml");
    const RunResult alone =
        run_shell("cd '" + stopped.path().string() + "' && timeout 120 " + runner + " --set train.epochs=3 2>&1");
    EXPECT_EQ(alone.exit_code, 2) << alone.output;
    EXPECT_NE(alone.output.find("was saved by 2 process(es) of batch 16, and this run has 1 of batch 16"),
              std::string::npos)
        << alone.output;
    EXPECT_EQ(read_file(stopped / "runs" / "one" / "recipe.toml"), saved);
    // Nor three ranks, and every rank stops with exit 2 (mpirun reports it), none waits.
    const RunResult three = run_shell("cd '" + stopped.path().string() + "' && timeout 120 " + mpirun(3) +
                                      "r.toml --threads 1 " + sets + " --set train.epochs=3 2>&1");
    EXPECT_NE(three.exit_code, 0) << three.output;
    EXPECT_NE(three.exit_code, 124) << "the ranks hung:\n" << three.output;
    EXPECT_NE(three.output.find("was saved by 2 process(es) of batch 16, and this run has 3 of batch 16"),
              std::string::npos)
        << three.output;
}

// The pid of the runner that is rank `rank` of an mpirun whose arguments contain `marker`.
pid_t find_rank(const std::string& marker, int rank) {
    for (const auto& entry : fs::directory_iterator("/proc")) {
        const std::string pid = entry.path().filename();
        if (pid.find_first_not_of("0123456789") != std::string::npos) continue;
        std::ifstream cmdline(entry.path() / "cmdline"), environ(entry.path() / "environ");
        const std::string args((std::istreambuf_iterator<char>(cmdline)), {}),
            env((std::istreambuf_iterator<char>(environ)), {});
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
    const std::string command = "cd '" + dir.path().string() + "' && exec " + mpirun(2) + "r.toml --threads 1 --set " +
                                marker + " --set train.epochs=10000 --set data.batch_size=16 >out.txt 2>&1";
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
