// Short training runs that must learn: a Fashion-MNIST subset far above chance, and synthetic data.
#include <fstream>

#include "helpers.hpp"

namespace tessera::test {
namespace {

double final_value(const std::string& output, const std::string& key) {
    const auto at = output.find("final: ");
    if (at == std::string::npos) return -1;
    const auto k = output.find(key + "=", at);
    return k == std::string::npos ? -1 : std::stod(output.substr(k + key.size() + 1));
}

TEST(Training, FashionMnistSubsetBeatsChanceByFar) {
    const fs::path data = "/usr/share/datasets/fashion-mnist";
    if (!fs::exists(data / "train-images-idx3-ubyte.gz"))
        GTEST_SKIP() << "Fashion-MNIST is not installed (apt install dataset-fashion-mnist); scripts/test installs it";
    TempDir dir;
    const RunResult r = run_runner("'" + (source_root() / "recipes" / "quickstart.toml").string() + "' --set run.out_dir='" +
                             (dir / "runs").string() + "' --set data.limit_train=6144 --set data.limit_val=1000 " +
                             "--set data.batch_size=64 --set train.epochs=2 --set logger.0.mode=lines");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const double top1 = final_value(r.output, "val_top1");
    EXPECT_GT(top1, 0.65) << r.output;  // chance is 0.10
    EXPECT_TRUE(fs::exists(dir / "runs" / "quickstart" / "last.safetensors"));
}

// The learning-rate range test on the quick start's recipe suggests a rate where that training
// works (its OneCycle peaks at 0.2), writes its curve, and saves no weights.
TEST(LrFind, SuggestsARateWhereTheQuickStartTrains) {
    const fs::path data = "/usr/share/datasets/fashion-mnist";
    if (!fs::exists(data / "train-images-idx3-ubyte.gz"))
        GTEST_SKIP() << "Fashion-MNIST is not installed (apt install dataset-fashion-mnist); scripts/test installs it";
    TempDir dir;
    const RunResult r = run_runner("lr-find '" + (source_root() / "recipes" / "quickstart.toml").string() + "' --iters 60 --set run.out_dir='" +
                                   (dir / "runs").string() + "' --set data.limit_train=8000");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const auto at = r.output.find("suggested learning rate: ");
    ASSERT_NE(at, std::string::npos) << r.output;
    const double lr = std::stod(r.output.substr(at + 25));
    EXPECT_GE(lr, 1e-3) << r.output;
    EXPECT_LE(lr, 1.0) << r.output;
    EXPECT_TRUE(fs::exists(dir / "runs" / "quickstart" / "lr_find.csv"));
    EXPECT_TRUE(fs::exists(dir / "runs" / "quickstart" / "lr_find.svg"));
    EXPECT_FALSE(fs::exists(dir / "runs" / "quickstart" / "last.safetensors"));
}

TEST(Training, SameSeedSameResult) {
    TempDir dir;
    std::ofstream(dir / "r.toml") << "[run]\nout_dir = '" << (dir / "runs").string() << "'\n"
                                  << "[model]\narch = 'resnet20'\n"
                                  << "[data]\nplugin = 'synthetic'\nimage_size = 8\ntrain_size = 1024\nval_size = 128\nbatch_size = 32\n"
                                  << "[scheduler]\nplugin = 'onecycle'\nmax_lr = 0.1\n[train]\nepochs = 3\n";
    const RunResult a = run_runner("'" + (dir / "r.toml").string() + "' --set run.name=a");
    const RunResult b = run_runner("'" + (dir / "r.toml").string() + "' --set run.name=b");
    ASSERT_EQ(a.exit_code, 0) << a.output;
    ASSERT_EQ(b.exit_code, 0) << b.output;
    EXPECT_GT(final_value(a.output, "val_top1"), 0.9) << a.output;  // the classes differ in brightness
    EXPECT_EQ(final_value(a.output, "val_loss"), final_value(b.output, "val_loss"));
}

}  // namespace
}  // namespace tessera::test
