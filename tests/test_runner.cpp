// The runner's other commands, run as a user runs them: `runner info`'s table, `runner bench` (a
// training step and the all-reduce), and how a process finds out which launcher started it.
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>

#include "helpers.hpp"
#include "tessera/core/json.hpp"
#include "tessera/parallel/communicator.hpp"

namespace tessera::test {
namespace {

/// The JSON object on the last line of `output` that starts with '{'.
json::Value last_json(const std::string& output) {
    const auto at = output.rfind("\n{", output.size() - 2);
    return json::parse(output.substr(at == std::string::npos ? output.find('{') : at + 1), "runner's --json output");
}

// ---- runner info ---------------------------------------------------------------------------------

struct InfoRow {
    int index;
    std::string name, layer, output;
    long long params;
};

std::vector<InfoRow> info_rows(const std::string& output, long long& total) {
    std::vector<InfoRow> rows;
    std::istringstream in(output);
    std::string line;
    std::getline(in, line);  // the header
    EXPECT_NE(line.find("output (N, H, W, C)"), std::string::npos) << line;
    while (std::getline(in, line)) {
        if (line.rfind("parameters: ", 0) == 0) {
            total = std::stoll(line.substr(12));
            break;
        }
        // "   3  layer1.0.conv1   Conv<64, 1, 1>   (1, 56, 56, 64)   4096": the shape holds spaces.
        InfoRow row;
        std::istringstream fields(line);
        fields >> row.index >> row.name >> row.layer;
        const auto open = line.find('('), close = line.find(')');
        row.output = line.substr(open, close - open + 1);
        row.params = std::stoll(line.substr(close + 1));
        rows.push_back(row);
    }
    return rows;
}

TEST(Info, ResNet50sTableNumbersEveryLayerAndAddsUpToTorchvisionsCount) {
    const RunResult r = run_runner("info resnet50");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    long long total = 0;
    const auto rows = info_rows(r.output, total);
    EXPECT_EQ(total, 25'557'032);  // torchvision's resnet50
    ASSERT_FALSE(rows.empty());
    long long sum = 0;
    std::map<std::string, InfoRow> by_name;
    for (std::size_t i = 0; i < rows.size(); ++i) {
        EXPECT_EQ(rows[i].index, int(i + 1));
        sum += rows[i].params;
        by_name[rows[i].name] = rows[i];
    }
    EXPECT_EQ(sum, total) << "the rows' parameters do not add up to the total";
    // The shapes a 224 px image takes through the network, and single layers' counts worked out by hand.
    ASSERT_TRUE(by_name.count("conv1"));
    EXPECT_EQ(by_name["conv1"].output, "(1, 112, 112, 64)");
    EXPECT_EQ(by_name["conv1"].params, 7 * 7 * 3 * 64);
    ASSERT_TRUE(by_name.count("layer1.0.conv1"));
    EXPECT_EQ(by_name["layer1.0.conv1"].output, "(1, 56, 56, 64)");
    EXPECT_EQ(by_name["layer1.0.conv1"].params, 64 * 64);
    ASSERT_TRUE(by_name.count("layer4.2.conv3"));
    EXPECT_EQ(by_name["layer4.2.conv3"].output, "(1, 7, 7, 2048)");
    ASSERT_TRUE(by_name.count("fc"));
    EXPECT_EQ(by_name["fc"].output, "(1, 1, 1, 1000)");
    EXPECT_EQ(by_name["fc"].params, 2048 * 1000 + 1000);
    // Other sizes and class counts change the shapes and the classifier.
    const RunResult small = run_runner("info resnet20 --num-classes 10 --image-size 32");
    ASSERT_EQ(small.exit_code, 0) << small.output;
    long long small_total = 0;
    const auto small_rows = info_rows(small.output, small_total);
    EXPECT_EQ(small_total, 272'474);
    EXPECT_EQ(small_rows.back().output, "(1, 1, 1, 10)");
    // Mistakes: exit 2, with the known architectures named.
    const RunResult unknown = run_runner("info resnet51");
    EXPECT_EQ(unknown.exit_code, 2) << unknown.output;
    EXPECT_NE(unknown.output.find("resnet50"), std::string::npos) << unknown.output;
}

// ---- runner plugins ----------------------------------------------------------------------------

TEST(Plugins, RunnerListsEveryPluginItsModuleOptionsAndDefaults) {
    const RunResult r = run_runner("plugins");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    for (const char* line : {"data      imagefolder ", "data      synthetic ", "optimizer sgd ", "optimizer lars ",
                             "scheduler onecycle ", "scheduler poly ", "logger    tensorboard ", "logger    html "})
        EXPECT_NE(r.output.find(std::string("\n") + line), std::string::npos) << line;
    EXPECT_NE(r.output.find((fs::absolute(plugin_dir()) / "tessera_sgd.so").lexically_normal().string()),
              std::string::npos)
        << r.output;
    // Options with their defaults: a number, a flag, a list.
    auto option = [&](const std::string& name, const std::string& value) {
        return r.output.find("            " + name + std::string(21 - name.size(), ' ') + "= " + value) !=
               std::string::npos;
    };
    EXPECT_TRUE(option("max_lr", "0.1")) << r.output;
    EXPECT_TRUE(option("inline", "false")) << r.output;
    EXPECT_TRUE(option("scale", "[0.080000, 1.000000]")) << r.output;
    // A folder with modules that are no plugins of this ABI: the good ones listed, the others named.
    const RunResult mixed = run_shell("TESSERA_PLUGIN_PATH='" + binary_dir().string() + "' '" +
                                      fs::absolute(runner_path()).string() + "' plugins 2>&1");
    ASSERT_EQ(mixed.exit_code, 0) << mixed.output;
    EXPECT_NE(mixed.output.find("optimizer faulty "), std::string::npos) << mixed.output;
    EXPECT_NE(mixed.output.find("skipped: "), std::string::npos) << mixed.output;
    EXPECT_NE(mixed.output.find("bad_abi.so"), std::string::npos) << mixed.output;
}

// ---- runner bench ------------------------------------------------------------------------------

TEST(Bench, TimesTrainingStepsAndReportsWhatItAllocated) {
    const RunResult r = run_runner(
        "bench --arch resnet20 --num-classes 10 --batch 8 --image-size 16 --steps 3 --warmup 1 --threads 1 --json");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto o = last_json(r.output).object();
    EXPECT_EQ(o.at("arch").string(), "resnet20");
    EXPECT_EQ(o.at("device").string(), "cpu");
    EXPECT_EQ(o.at("steps").number(), 3);
    const double step_s = o.at("step_s").number(), img_per_s = o.at("train_img_per_s").number();
    EXPECT_GT(step_s, 0);
    EXPECT_NEAR(img_per_s * step_s, 8, 8 * 0.01) << "images per second must be the batch over the step's time";
    // The weights and their gradients alone take 2 x 272,474 floats; the arena holds the activations.
    EXPECT_GE(o.at("allocated_bytes").number(), 2 * 272'474 * 4);
    EXPECT_GT(o.at("arena_bytes").number(), 0);
    EXPECT_GE(o.at("peak_mem_bytes").number(), o.at("arena_bytes").number());
    // Mistakes: exit 2 with what to change.
    EXPECT_EQ(o.at("kernels").string(), cpu::Backend::kernels(*std::make_unique<cpu::Context>(1)));
    EXPECT_NE(o.at("kernels").string().find("onednn "), std::string::npos);
    // Inference: the forward pass alone, reported under its own name, compiled unless --layers.
    const std::string infer_args = "bench --arch resnet20 --batch 8 --image-size 32 --steps 2 --inference --json";
    const RunResult infer = run_runner(infer_args);
    ASSERT_EQ(infer.exit_code, 0) << infer.output;
    EXPECT_GT(last_json(infer.output).object().at("infer_img_per_s").number(), 0) << infer.output;
    EXPECT_NE(last_json(infer.output).object().at("kernels").string().find("compiled inference"), std::string::npos);
    const RunResult layers = run_runner(infer_args + " --layers");
    ASSERT_EQ(layers.exit_code, 0) << layers.output;
    EXPECT_EQ(last_json(layers.output).object().at("kernels").string().find("compiled"), std::string::npos);
    // bf16 inference where the CPU has the instructions; elsewhere exit 2, naming them.
    const RunResult bf16_infer = run_runner(infer_args + " --precision bf16");
    if (cpu::has_bf16_instructions()) {
        EXPECT_EQ(bf16_infer.exit_code, 0) << bf16_infer.output;
        EXPECT_EQ(last_json(bf16_infer.output).object().at("precision").string(), "bf16");
    } else {
        EXPECT_EQ(bf16_infer.exit_code, 2) << bf16_infer.output;
        EXPECT_NE(bf16_infer.output.find("needs AVX512-BF16 or AMX-BF16, and this CPU has neither"), std::string::npos)
            << bf16_infer.output;
    }
    // bf16 training (mixed precision) likewise.
    const RunResult bf16 =
        run_runner("bench --arch resnet20 --precision bf16 --batch 8 --image-size 32 --steps 1 --json");
    if (cpu::has_bf16_instructions()) {
        ASSERT_EQ(bf16.exit_code, 0) << bf16.output;
        EXPECT_EQ(last_json(bf16.output).object().at("precision").string(), "bf16");
        EXPECT_GT(last_json(bf16.output).object().at("train_img_per_s").number(), 0) << bf16.output;
    } else {
        EXPECT_EQ(bf16.exit_code, 2) << bf16.output;
        EXPECT_NE(bf16.output.find("precision = \"fp32\""), std::string::npos) << bf16.output;
    }
    // Mistakes: exit 2 with what to change.
    const RunResult fp16 = run_runner("bench --arch resnet20 --precision fp16 --steps 1");
    EXPECT_EQ(fp16.exit_code, 2) << fp16.output;
    EXPECT_NE(fp16.output.find("\"bf16\" (mixed precision)"), std::string::npos) << fp16.output;
    const RunResult layers_alone = run_runner("bench --arch resnet20 --layers --steps 1");
    EXPECT_EQ(layers_alone.exit_code, 2) << layers_alone.output;
    const RunResult alone = run_runner("bench --allreduce");
    EXPECT_EQ(alone.exit_code, 2) << alone.output;
    EXPECT_NE(alone.output.find("mpirun -np 2"), std::string::npos) << alone.output;
}

bool have_mpirun() { return std::system("command -v mpirun >/dev/null 2>&1") == 0; }

TEST(Bench, AllReducesAcrossTheRanksMpirunStarted) {
    if (!have_mpirun())
        GTEST_SKIP() << "mpirun is not installed (apt install openmpi-bin libopenmpi-dev); scripts/test installs it";
    const RunResult r =
        run_shell("mpirun --allow-run-as-root --oversubscribe -np 2 '" + fs::absolute(runner_path()).string() +
                  "' bench --allreduce --floats 100000 --steps 3 --warmup 1 --json 2>&1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto o = last_json(r.output).object();
    EXPECT_EQ(o.at("communicator").string(), "MPI");
    EXPECT_EQ(o.at("ranks").number(), 2);
    EXPECT_EQ(o.at("floats").number(), 100000);
    const double seconds = o.at("seconds").number(), algbw = o.at("algbw_gb_s").number();
    EXPECT_GT(seconds, 0);
    EXPECT_NEAR(algbw, 100000 * 4 / seconds / 1e9, 0.01 * algbw + 1e-3);   // bytes over time
    EXPECT_NEAR(o.at("busbw_gb_s").number(), algbw, 0.01 * algbw + 1e-3);  // x 2 (n - 1) / n = 1 for two ranks
}

// ---- which launcher started the process ---------------------------------------------------------

/// Sets the environment variables given for its lifetime, unsetting every other launcher variable.
class LauncherEnvironment {
public:
    using Variables = std::map<std::string, std::string>;
    explicit LauncherEnvironment(Variables set) {
        for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "PMI_RANK", "MPI_LOCALNRANKS",
                              "SLURM_NTASKS", "SLURM_PROCID"}) {
            if (const char* old = std::getenv(v)) saved_[v] = old;
            ::unsetenv(v);
        }
        for (auto& [k, v] : set) ::setenv(k.c_str(), v.c_str(), 1);
        set_ = std::move(set);
    }
    LauncherEnvironment(const LauncherEnvironment&) = delete;
    ~LauncherEnvironment() {
        for (auto& [k, v] : set_) ::unsetenv(k.c_str());
        for (auto& [k, v] : saved_) ::setenv(k.c_str(), v.c_str(), 1);
    }

private:
    std::map<std::string, std::string> set_, saved_;
};

TEST(Launch, EachLaunchersVariablesAreRecognised) {
    {
        LauncherEnvironment none(LauncherEnvironment::Variables{});
        EXPECT_FALSE(parallel::launched_by_mpi());
    }
    // Open MPI's mpirun; srun --mpi=pmix (PMIx); srun --mpi=pmi2 and MPICH's Hydra (PMI); Intel MPI.
    for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_SIZE", "PMI_RANK", "MPI_LOCALNRANKS"}) {
        LauncherEnvironment one(LauncherEnvironment::Variables{{variable, "0"}});
        EXPECT_TRUE(parallel::launched_by_mpi()) << variable;
    }
    // srun without an MPI plugin sets Slurm's variables alone: not an MPI launch.
    LauncherEnvironment slurm(LauncherEnvironment::Variables{{"SLURM_NTASKS", "2"}, {"SLURM_PROCID", "0"}});
    EXPECT_FALSE(parallel::launched_by_mpi());
}

TEST(Launch, SrunWithoutMpisProcessManagementIsRefusedWithTheFix) {
    TempDir dir;
    std::ofstream(dir / "r.toml")
        << "[run]\nout_dir = 'runs'\n[model]\narch = 'resnet20'\n[data]\nplugin = 'synthetic'\nimage_size = 8\n"
           "train_size = 32\nval_size = 16\nbatch_size = 16\n[train]\nepochs = 1\n";
    // Two tasks that cannot find each other would each train alone: refused before any work.
    const RunResult two = run_shell("cd '" + dir.path().string() +
                                    "' && env -u OMPI_COMM_WORLD_SIZE -u PMIX_RANK -u PMI_SIZE -u PMI_RANK "
                                    "SLURM_NTASKS=2 SLURM_PROCID=0 '" +
                                    fs::absolute(runner_path()).string() + "' r.toml --threads 1 2>&1");
    EXPECT_EQ(two.exit_code, 2) << two.output;
    EXPECT_NE(two.output.find("srun --mpi=pmix"), std::string::npos) << two.output;
    EXPECT_FALSE(fs::exists(dir / "runs")) << "a refused run wrote its folder";
    // One task is a world of one: it trains.
    const RunResult one = run_shell("cd '" + dir.path().string() + "' && SLURM_NTASKS=1 SLURM_PROCID=0 '" +
                                    fs::absolute(runner_path()).string() + "' r.toml --threads 1 2>&1");
    EXPECT_EQ(one.exit_code, 0) << one.output;
    EXPECT_NE(one.output.find("final:"), std::string::npos) << one.output;
    EXPECT_EQ(one.output.find("data parallel"), std::string::npos) << one.output;
}

}  // namespace
}  // namespace tessera::test
