// safetensors: round trip, refusal of damaged files, and interchange with PyTorch in both directions.
#include <fstream>
#include <sstream>

#include "helpers.hpp"
#include "tessera/core/json.hpp"
#include "runner.hpp"  // the zoo, compiled once in the runner's library
#include "tessera/train/checkpoint.hpp"

namespace tessera::test {
namespace {

using Net = models::Network<cpu::Backend>;

std::unique_ptr<Net> make(const std::string& arch, int classes, std::uint64_t seed) {
    auto net = runner::make_cpu_network(arch, classes, 3);
    net->init(seed, {});
    return net;
}

TEST(Checkpoint, RoundTripRestoresEveryTensor) {
    TempDir dir;
    auto a = make("resnet20", 10, 1), b = make("resnet20", 10, 2);
    a->params().buffers[a->params().buffer_entries[0].offset] = 0.25f;  // a running mean
    a->params().buffers[a->params().buffer_entries[2].offset] = 17.f;   // num_batches_tracked
    checkpoint::save(a->params(), dir / "w.safetensors");
    EXPECT_FALSE(fs::exists(dir / "w.safetensors.tmp"));
    ASSERT_NE(a->params().values, b->params().values);
    checkpoint::load(b->params(), dir / "w.safetensors");
    EXPECT_EQ(a->params().values, b->params().values);
    EXPECT_EQ(a->params().buffers, b->params().buffers);
}

// A training state holds metadata, tensors, both or neither (an optimizer without state, such as
// SGD without momentum, saves no tensors): each is a valid header.
TEST(Checkpoint, TrainingStatesWithAndWithoutTensorsRoundTrip) {
    TempDir dir;
    for (bool metadata : {false, true})
        for (bool tensors : {false, true}) {
            checkpoint::TrainingState state;
            if (metadata) state.metadata = {{"epoch", "3"}, {"loss_scale", "32768"}};
            if (tensors) state.tensors = {{"momentum", {1.f, -2.f}}, {"step", {4.f}}};
            checkpoint::save_state(state, dir / "s.safetensors");
            const auto back = checkpoint::load_state(dir / "s.safetensors");
            EXPECT_EQ(back.metadata, state.metadata) << metadata << tensors;
            EXPECT_EQ(back.tensors, state.tensors) << metadata << tensors;
        }
}

TEST(Checkpoint, DamagedOrMismatchedFilesAreRefusedAndChangeNothing) {
    TempDir dir;
    auto a = make("resnet20", 10, 1), b = make("resnet20", 10, 2), other = make("resnet20", 100, 3);
    checkpoint::save(a->params(), dir / "w.safetensors");
    checkpoint::save(other->params(), dir / "other.safetensors");
    const auto bytes = fs::file_size(dir / "w.safetensors");
    fs::copy_file(dir / "w.safetensors", dir / "short.safetensors");
    fs::resize_file(dir / "short.safetensors", bytes - 100);
    std::ofstream(dir / "garbage.safetensors") << "this is not a safetensors file at all";
    std::ofstream(dir / "huge.safetensors", std::ios::binary).write("\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10);
    const auto before = b->params().values;
    for (const char* name :
         {"short.safetensors", "garbage.safetensors", "huge.safetensors", "other.safetensors", "missing.safetensors"}) {
        try {
            checkpoint::load(b->params(), dir / name);
            ADD_FAILURE() << name << " loaded";
        } catch (const Error& e) {
            EXPECT_TRUE(e.is_user_error()) << e.what();
            EXPECT_NE(std::string(e.what()).find(name), std::string::npos) << e.what();
        }
        EXPECT_EQ(b->params().values, before) << name;
    }
}

// PyTorch (Debian's python3-torch) writes a torchvision ResNet's state_dict, an input batch and its
// logits; tessera loads the weights and must give the same logits, in eval and in training mode.
// Then tessera writes its weights and PyTorch loads them with strict=True.
TEST(Checkpoint, InterchangeWithPyTorch) {
    const fs::path script = source_root() / "tests" / "torch_interchange.py";
    if (std::system("/usr/bin/python3 -c 'import torch, torchvision' >/dev/null 2>&1") != 0)
        GTEST_SKIP()
            << "PyTorch is not installed (apt install python3-torch python3-torchvision); scripts/test installs it";
    TempDir dir;
    for (const char* arch : {"resnet18", "resnet50"}) {
        const fs::path folder = dir / arch;
        fs::create_directories(folder);
        ASSERT_EQ(
            std::system(
                ("/usr/bin/python3 '" + script.string() + "' export " + arch + " '" + folder.string() + "'").c_str()),
            0);
        auto net = runner::make_cpu_network(arch, 1000, 3);
        checkpoint::load(net->params(), folder / "weights.safetensors");
        checkpoint::save(net->params(),
                         folder / "from_tessera.safetensors");  // before training mode moves the statistics
        std::ifstream meta(folder / "shape.txt");
        int n, h, w, c;
        meta >> n >> h >> w >> c;
        std::vector<float> x(std::size_t(n) * h * w * c), eval_logits(n * 1000), train_logits(n * 1000);
        std::ifstream(folder / "input.f32", std::ios::binary).read(reinterpret_cast<char*>(x.data()), x.size() * 4);
        std::ifstream(folder / "logits_eval.f32", std::ios::binary)
            .read(reinterpret_cast<char*>(eval_logits.data()), eval_logits.size() * 4);
        std::ifstream(folder / "logits_train.f32", std::ios::binary)
            .read(reinterpret_cast<char*>(train_logits.data()), train_logits.size() * 4);
        cpu::Context ctx(2);
        for (bool training : {false, true}) {
            ctx.arena.reset();
            ctx.training = training;
            const Tensor y = net->forward(ctx, Tensor{x.data(), {n, h, w, c}});
            const auto& expected = training ? train_logits : eval_logits;
            double worst = 0, scale = 0;
            for (std::size_t i = 0; i < expected.size(); ++i) {
                worst = std::max(worst, double(std::abs(y.data[i] - expected[i])));
                scale = std::max(scale, double(std::abs(expected[i])));
            }
            EXPECT_LT(worst, 1e-3 * std::max(1.0, scale))
                << arch << (training ? " train" : " eval") << " max |diff| " << worst;
        }
        EXPECT_EQ(
            std::system(
                ("/usr/bin/python3 '" + script.string() + "' import " + arch + " '" + folder.string() + "'").c_str()),
            0);
    }
}

}  // namespace
}  // namespace tessera::test

namespace tessera::test {
namespace {

// runner predict on torchvision's resnet50 (random weights, exported by PyTorch) and three
// photographs: the same class probabilities as torchvision's Resize, CenterCrop, ToTensor and
// Normalize followed by the model, within 1e-4.
TEST(Predict, AgreesWithTorchvision) {
    const fs::path script = source_root() / "tests" / "torch_interchange.py";
    if (std::system("/usr/bin/python3 -c 'import torch, torchvision, PIL, numpy' >/dev/null 2>&1") != 0)
        GTEST_SKIP() << "PyTorch or PIL is not installed (apt install python3-torch python3-torchvision python3-pil); "
                        "scripts/test installs them";
    TempDir dir;
    ASSERT_EQ(
        std::system(
            ("/usr/bin/python3 '" + script.string() + "' predict resnet50 '" + dir.path().string() + "'").c_str()),
        0);
    const RunResult r = run_runner(
        "predict --checkpoint weights.safetensors --arch resnet50 --labels imagenet --topk 5 --json wide.jpg tall.jpg "
        "square.jpg",
        dir.path());
    ASSERT_EQ(r.exit_code, 0) << r.output;
    std::ifstream file(dir / "expected.json");
    const std::string expected_text((std::istreambuf_iterator<char>(file)), {});
    const json::Value expected = json::parse(expected_text, "expected.json");
    const json::Value got = json::parse(r.output.substr(r.output.find('[')), "runner predict --json");
    ASSERT_EQ(got.array().size(), 3u);
    // --labels imagenet: the class names tessera installs, which are torchvision's.
    const RunResult torchvision_names = run_shell(
        "/usr/bin/python3 -c 'from torchvision.models import ResNet50_Weights as W; "
        "print(chr(10).join(W.IMAGENET1K_V1.meta[\"categories\"]))'");
    ASSERT_EQ(torchvision_names.exit_code, 0) << torchvision_names.output;
    std::vector<std::string> imagenet;
    std::stringstream names(torchvision_names.output);
    for (std::string line; std::getline(names, line);) imagenet.push_back(line);
    ASSERT_EQ(imagenet.size(), 1000u);
    std::ifstream bundled(source_root() / "share" / "imagenet_classes.txt");
    std::size_t k = 0;
    for (std::string line; std::getline(bundled, line); ++k)
        ASSERT_EQ(line, imagenet.at(k)) << "share/imagenet_classes.txt line " << k + 1;
    EXPECT_EQ(k, 1000u);
    for (const auto& image : got.array()) {
        const std::string name = image.object().at("image").string();
        const auto& probs = expected.object().at(name).array();
        const auto& top = image.object().at("top").array();
        ASSERT_EQ(top.size(), 5u) << name;
        double best = 0;
        for (const auto& p : probs) best = std::max(best, p.number());
        EXPECT_NEAR(top[0].object().at("prob").number(), best, 1e-4) << name << ": the most probable class";
        for (const auto& t : top) {
            const int k = int(t.object().at("class").number());
            EXPECT_NEAR(t.object().at("prob").number(), probs[std::size_t(k)].number(), 1e-4) << name << " class " << k;
            EXPECT_EQ(t.object().at("label").string(), imagenet[std::size_t(k)]) << name << " class " << k;
        }
    }
}

}  // namespace
}  // namespace tessera::test
