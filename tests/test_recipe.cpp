// Recipe and command-line mistakes: each exits with code 2 and a message that says where and what.
#include <cmath>
#include <fstream>
#include <variant>
#include <sstream>
#include <set>
#include <regex>
#include <map>

#include "helpers.hpp"
#include "tessera/recipe/run_spec.hpp"
#include "tessera/recipe/recipe.hpp"

namespace tessera::test {
namespace {

// A small valid recipe on synthetic data; each case below breaks one thing.
const std::string valid = R"([run]
name = "t"
out_dir = "OUT"

[model]
arch = "resnet20"

[data]
plugin = "synthetic"
image_size = 8
train_size = 64
val_size = 32
batch_size = 16

[scheduler]
plugin = "constant"
lr = 0.05

[train]
epochs = 1
)";

struct Case {
    const char* name;
    std::string recipe;
    std::vector<std::string> expected;  // substrings of the message
};

std::string replace(std::string text, const std::string& from, const std::string& to) {
    text.replace(text.find(from), from.size(), to);
    return text;
}

class RecipeErrors : public ::testing::Test {
protected:
    RunResult run(const std::string& recipe, const std::string& extra = "") {
        const bool has_out = recipe.find("OUT") != std::string::npos;
        std::ofstream(dir / "r.toml") << (has_out ? replace(recipe, "OUT", (dir / "runs").string()) : recipe);
        return run_runner("'" + (dir / "r.toml").string() + "' " + extra);
    }
    TempDir dir;
};

TEST_F(RecipeErrors, ValidRecipeTrains) {
    RunResult r = run(valid);
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("final: epoch=1 val_top1="), std::string::npos) << r.output;
    EXPECT_TRUE(fs::exists(dir / "runs" / "t" / "recipe.toml"));
    EXPECT_TRUE(fs::exists(dir / "runs" / "t" / "last.safetensors"));
    std::ifstream csv(dir / "runs" / "t" / "metrics.csv");
    std::string header;
    std::getline(csv, header);
    EXPECT_EQ(header, "epoch,lr,train_loss,train_top1,val_loss,val_top1,val_top5,img_per_s,time_s,bad_samples");
}

TEST_F(RecipeErrors, EachMistakeIsLocatedAndExitsTwo) {
    const std::vector<Case> cases = {
        {"syntax", replace(valid, "epochs = 1", "epochs = = 1"), {"r.toml:20:"}},
        {"not toml", "this is not a recipe\n", {"r.toml:1:", "TOML"}},
        {"wrong type",
         replace(valid, "epochs = 1", "epochs = \"one\""),
         {"r.toml:20:10", "train.epochs must be an integer"}},
        {"unknown key",
         replace(valid, "epochs = 1", "epoch = 1"),
         {"r.toml:20:1", "unknown key 'epoch'", "did you mean 'epochs'"}},
        {"unknown plugin key",
         replace(valid, "lr = 0.05", "max_lr = 0.05"),
         {"r.toml:17:1", "unknown key 'max_lr'", "known keys: plugin, lr"}},
        {"unknown section", replace(valid, "[train]", "[trian]"), {"r.toml:19:", "unknown section [trian]", "'train'"}},
        {"unknown plugin",
         replace(valid, "plugin = \"constant\"", "plugin = \"constnt\""),
         {"r.toml:16:10", "unknown scheduler plugin \"constnt\"", "constant"}},
        {"unknown arch", replace(valid, "resnet20", "resnet21"), {"unknown architecture \"resnet21\"", "resnet20"}},
        {"bad value",
         replace(valid, "batch_size = 16", "batch_size = 0"),
         {"data.batch_size must be in [1, 65536], not 0"}},
    };
    for (auto& c : cases) {
        RunResult r = run(c.recipe);
        EXPECT_EQ(r.exit_code, 2) << c.name << "\n" << r.output;
        for (auto& e : c.expected)
            EXPECT_NE(r.output.find(e), std::string::npos) << c.name << ": no '" << e << "' in\n" << r.output;
        EXPECT_EQ(r.output.find("terminate called"), std::string::npos) << c.name;
    }
}

// Every key and plugin option has a declared range, checked in one place before anything is
// written: each value below was once taken as it was (2^31 epochs narrowed to a negative int and
// finished at once with exit 0; 75.9 as a target never fired; nan and inf passed every "< 0").
TEST_F(RecipeErrors, EveryValueOutsideItsRangeExitsTwoNamingItAndWritesNothing) {
    const std::string imagefolder =
        replace(valid, "plugin = \"synthetic\"\nimage_size = 8\ntrain_size = 64\nval_size = 32",
                "plugin = \"imagefolder\"\ntrain = \"nowhere\"");
    const std::string idx = replace(valid, "plugin = \"synthetic\"\nimage_size = 8\ntrain_size = 64\nval_size = 32",
                                    "plugin = \"idx\"\npath = \"nowhere\"");
    struct Value {
        std::string recipe, set, expected;
    };
    const std::vector<Value> cases = {
        {valid, "train.epochs=2147483648", "train.epochs must be in [1, 100000], not 2147483648"},
        {valid, "train.epochs=0", "train.epochs must be in [1, 100000], not 0"},
        {valid, "data.batch_size=4294967312", "data.batch_size must be in [1, 65536], not 4294967312"},
        {valid, "train.label_smoothing=1.5", "train.label_smoothing must be in [0, 1], not 1.5"},
        {valid, "train.target_top1=75.9", "train.target_top1 must be in [0, 1], not 75.9"},
        {valid, "scheduler.lr=-0.1", "scheduler.lr must be at least 0, not -0.1"},
        {valid, "scheduler.lr=nan", "scheduler.lr must be at least 0, not nan"},
        {valid, "scheduler.lr=inf", "scheduler.lr must be at least 0, not inf"},
        {valid, "train.mixup_alpha=inf", "train.mixup_alpha must be in [0, 1000], not inf"},
        {valid, "train.cutmix_alpha=-nan", "train.cutmix_alpha must be in [0, 1000], not nan"},
        {valid, "train.ema=1.0", "train.ema must be in [0, 1), not 1"},
        {valid, "train.threads=-1", "train.threads must be in [0, 4096], not -1"},
        {valid, "optimizer.plugin=sgd --set optimizer.momentum=1.5", "optimizer.momentum must be in [0, 1), not 1.5"},
        {valid, "scheduler.plugin=multistep --set scheduler.gamma=0", "scheduler.gamma must be in (0, 1], not 0"},
        {valid, "checkpoint.on_failure=ignore", "checkpoint.on_failure must be one of stop, continue, not \"ignore\""},
        {valid, "train.device=gpu", "train.device must be one of cpu, cuda, not \"gpu\""},
        {imagefolder, "'data.std=[0.2,0.0,0.2]'", "data.std must be above 0, not 0 (in the list)"},
        {imagefolder, "data.workers=-2", "data.workers must be in [0, 4096], not -2"},
        {imagefolder, "data.limit_train=-5", "data.limit_train must be at least 0, not -5"},
        {idx, "data.limit_val=-1", "data.limit_val must be at least 0, not -1"},
        {valid, "logger.x.mode=bar", "\"x\" is not an index into logger"},
    };
    for (auto& c : cases) {
        const std::string recipe =
            c.set.rfind("logger.", 0) == 0 ? c.recipe + "[[logger]]\nplugin = \"console\"\n" : c.recipe;
        const RunResult r = run(recipe, "--set " + c.set);
        EXPECT_EQ(r.exit_code, 2) << c.set << "\n" << r.output;
        EXPECT_NE(r.output.find(c.expected), std::string::npos) << c.set << ": no '" << c.expected << "' in\n"
                                                                << r.output;
        if (c.set.rfind("logger.", 0) != 0) {
            EXPECT_NE(r.output.find("r.toml"), std::string::npos) << c.set << ": the file is not named\n" << r.output;
        }
        EXPECT_FALSE(fs::exists(dir / "runs")) << c.set << ": a refused recipe wrote its run folder";
    }
    // In the file, the value's line and column.
    const RunResult r = run(replace(valid, "epochs = 1", "epochs = 2147483648"));
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("r.toml:20:10: train.epochs must be in [1, 100000], not 2147483648"), std::string::npos)
        << r.output;
    EXPECT_FALSE(fs::exists(dir / "runs"));
}

TEST_F(RecipeErrors, MissingRecipeFileAndBadArguments) {
    RunResult r = run_runner("'" + (dir / "nope.toml").string() + "'");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("nope.toml: no such recipe file"), std::string::npos) << r.output;
    r = run_runner("frobnicate");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("unknown command"), std::string::npos) << r.output;
    r = run_runner("bench --batch zero");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("--batch zero"), std::string::npos) << r.output;
    r = run_runner("info resnet50 --colour");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("--colour: unknown option"), std::string::npos) << r.output;
}

TEST_F(RecipeErrors, SetOverridesAnyValueAndIsSaved) {
    RunResult r = run(valid, "--set train.epochs=2 --set run.name=overridden --set data.val_size=16");
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("final: epoch=2"), std::string::npos) << r.output;
    std::ifstream saved(dir / "runs" / "overridden" / "recipe.toml");
    std::string text((std::istreambuf_iterator<char>(saved)), {});
    EXPECT_NE(text.find("epochs = 2"), std::string::npos) << text;
    r = run(valid, "--set train.epochz=2");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("unknown key 'epochz'"), std::string::npos) << r.output;
    r = run(valid, "--set train.epochs=many");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("train.epochs must be an integer"), std::string::npos) << r.output;
}

TEST_F(RecipeErrors, MissingOrDamagedDatasetIsNamed) {
    const std::string idx = replace(valid, "plugin = \"synthetic\"\nimage_size = 8\ntrain_size = 64\nval_size = 32",
                                    "plugin = \"idx\"\npath = \"DATA\"");
    RunResult r = run(replace(idx, "DATA", (dir / "no-such-folder").string()));
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("no-such-folder: no such folder"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("dataset-fashion-mnist"), std::string::npos) << r.output;

    // A folder whose training images are cut short.
    const fs::path data = dir / "mnist";
    fs::create_directories(data);
    auto write_idx = [&](const std::string& name, std::vector<std::uint32_t> dims, std::size_t payload) {
        std::ofstream f(data / name, std::ios::binary);
        const unsigned char magic[4] = {0, 0, 8, (unsigned char)dims.size()};
        f.write(reinterpret_cast<const char*>(magic), 4);
        for (auto d : dims) {
            const unsigned char be[4] = {(unsigned char)(d >> 24), (unsigned char)(d >> 16), (unsigned char)(d >> 8),
                                         (unsigned char)d};
            f.write(reinterpret_cast<const char*>(be), 4);
        }
        f << std::string(payload, '\1');
    };
    write_idx("train-images-idx3-ubyte", {100, 28, 28}, 100 * 28 * 28 - 500);
    write_idx("train-labels-idx1-ubyte", {100}, 100);
    write_idx("t10k-images-idx3-ubyte", {10, 28, 28}, 10 * 28 * 28);
    write_idx("t10k-labels-idx1-ubyte", {10}, 10);
    r = run(replace(idx, "DATA", data.string()));
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("train-images-idx3-ubyte: truncated"), std::string::npos) << r.output;
    fs::remove(data / "t10k-labels-idx1-ubyte");
    write_idx("train-images-idx3-ubyte", {100, 28, 28}, 100 * 28 * 28);
    r = run(replace(idx, "DATA", data.string()));
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("t10k-labels-idx1-ubyte[.gz]: missing"), std::string::npos) << r.output;
}

// The README's recipe table is the users' reference: it must list every key the code declares, with
// its default, and no key the code does not have (it once documented [run] deterministic, which
// nothing read).
TEST(Recipes, TheReadmeTableListsEveryKeyWithItsDefault) {
    std::ifstream readme(source_root() / "README.md");
    std::string text((std::istreambuf_iterator<char>(readme)), {});
    const std::string opening = "## Recipes\n\n```toml\n";
    const auto start = text.find(opening) + opening.size();
    ASSERT_GT(start, opening.size()) << "README.md has no recipe table";
    const auto end = text.find("```", start);
    std::map<std::string, std::map<std::string, std::string>> table;  // section -> key -> default as written
    std::string section;
    std::stringstream lines(text.substr(start, end - start));
    const std::regex heading(R"(^\[\[?(\w+)\]\]?)"), entry(R"((\w+) = ("[^"]*"|[-\w.]+))");
    for (std::string line; std::getline(lines, line);) {
        std::smatch m;
        if (std::regex_search(line, m, heading)) section = m[1];
        for (auto it = std::sregex_iterator(line.begin(), line.end(), entry); it != std::sregex_iterator(); ++it)
            if ((*it)[1] != "plugin") table[section][(*it)[1]] = (*it)[2];
    }
    for (const auto& [name, options] : recipe::core_sections()) {
        std::set<std::string> declared, documented;
        for (const auto& o : options) {
            declared.insert(o.name);
            const auto found = table[name].find(o.name);
            if (found == table[name].end()) continue;
            const std::string written = std::visit(
                [](const auto& v) -> std::string {
                    using T = std::decay_t<decltype(v)>;
                    if constexpr (std::is_same_v<T, bool>)
                        return v ? "true" : "false";
                    else if constexpr (std::is_same_v<T, std::int64_t>)
                        return std::to_string(v);
                    else if constexpr (std::is_same_v<T, double>)
                        return shortest_decimal(v).find('.') == std::string::npos ? shortest_decimal(v) + ".0"
                                                                                  : shortest_decimal(v);
                    else if constexpr (std::is_same_v<T, std::string>)
                        return "\"" + v + "\"";
                    else
                        return "[list]";
                },
                o.default_value);
            EXPECT_EQ(found->second, written)
                << "[" << name << "] " << o.name << ": the README's default is not the code's";
        }
        for (const auto& [key, value] : table[name]) documented.insert(key);
        EXPECT_EQ(documented, declared) << "[" << name << "]: the README's keys are not the code's";
    }
}

// Every recipe shipped in recipes/ names known keys and plugins with valid options, and says what it
// is in comments. (The ImageNet ones need data and a GPU to run; their checks stop before the data.)
TEST(Recipes, EveryShippedRecipeIsValid) {
    plugin::Registry registry({plugin_dir()});
    int count = 0;
    for (auto& entry : fs::directory_iterator(source_root() / "recipes")) {
        if (entry.path().extension() != ".toml") continue;
        ++count;
        SCOPED_TRACE(entry.path().filename().string());
        recipe::Recipe r = recipe::load(entry.path(), {});
        ASSERT_NO_THROW(recipe::resolve(r, registry));
        // What a run makes of it before it reads any data: every plugin built from its options (their
        // constructors check them), the loss scaling, and rates that stay finite and positive over the
        // whole schedule (100 steps an epoch stand in for the data's count).
        EXPECT_NO_THROW(registry.create<plugin::Optimizer>(*r.optimizer.entry, r.optimizer.options));
        for (auto& logger : r.loggers)
            EXPECT_NO_THROW(registry.create<plugin::Logger>(*logger.entry, logger.options)) << logger.entry->info.name;
        EXPECT_NO_THROW(recipe::loss_scale_of(r));
        EXPECT_GE(r.train.integer("epochs"), 1);
        EXPECT_GE(r.batch_size, 1);
        const std::string precision = r.model.text("precision"), device = r.train.text("device");
        EXPECT_TRUE(precision == "fp32" || precision == "tf32" || precision == "bf16" || precision == "fp16")
            << precision;
        EXPECT_TRUE(device == "cpu" || device == "cuda") << device;
        EXPECT_TRUE(device == "cuda" || precision == "fp32") << "the CPU computes in fp32";
        std::shared_ptr<plugin::Scheduler> scheduler;
        ASSERT_NO_THROW(scheduler = registry.create<plugin::Scheduler>(*r.scheduler.entry, r.scheduler.options));
        const std::int64_t per_epoch = 100, total = per_epoch * r.train.integer("epochs");
        for (std::int64_t step = 0; step < total; step += 7) {
            const double lr = scheduler->lr({step, total, per_epoch});
            ASSERT_TRUE(std::isfinite(lr) && lr > 0) << "lr " << lr << " at step " << step;
        }
        // The data, where it is on this machine (Fashion-MNIST, which scripts/deps installs).
        if (r.data.entry->info.name == "idx") {
            std::shared_ptr<plugin::DataSource> data;
            ASSERT_NO_THROW(data = registry.create<plugin::DataSource>(*r.data.entry, r.data.options));
            EXPECT_GE(data->info().train_size, r.batch_size);
        }
        std::ifstream in(entry.path());
        const std::string text((std::istreambuf_iterator<char>(in)), {});
        EXPECT_EQ(text.rfind("# ", 0), 0u) << "a recipe begins by saying what it trains";
    }
    EXPECT_GE(count, 5);
    // The seed's run, as it was.
    recipe::Recipe seed = recipe::load(source_root() / "recipes" / "resnet50_imagenet.toml", {});
    recipe::resolve(seed, registry);
    EXPECT_EQ(seed.model.text("arch"), "resnet50");
    EXPECT_EQ(seed.batch_size, 256);
    EXPECT_EQ(seed.train.integer("epochs"), 50);
    EXPECT_EQ(seed.scheduler.entry->info.name, "onecycle");
    EXPECT_DOUBLE_EQ(seed.scheduler.options.number("max_lr"), 0.175);
    EXPECT_DOUBLE_EQ(seed.optimizer.options.number("momentum"), 0.9);
    EXPECT_DOUBLE_EQ(seed.optimizer.options.number("weight_decay"), 1e-4);
    recipe::Recipe lars = recipe::load(source_root() / "recipes" / "resnet50_imagenet_lars.toml", {});
    recipe::resolve(lars, registry);
    EXPECT_GE(lars.batch_size * 8, 3200);
    EXPECT_EQ(lars.optimizer.entry->info.name, "lars");
}

}  // namespace
}  // namespace tessera::test
