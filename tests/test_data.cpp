// Images and the imagefolder plugin: decoded pixels and resized crops match PIL and torchvision on
// images made by tests/image_reference.py; crop boxes follow torchvision's distribution; batches do
// not depend on the number of workers; damaged files are reported, counted and replaced.
#include <turbojpeg.h>

#include <cmath>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>

#include "helpers.hpp"
#include "tessera/data/idx.hpp"
#include "tessera/data/image_folder.hpp"
#include "tessera/data/loader.hpp"
#include "tessera/data/shards.hpp"
#include "tessera/data/transform.hpp"
#include "tessera/plugin/registry.hpp"

namespace tessera::test {
namespace {

using data::ImageDecoder;
using plugin::Split;

std::vector<std::uint8_t> read_all(const fs::path& p) {
    std::vector<std::uint8_t> bytes;
    EXPECT_TRUE(data::read_bytes(p.string(), bytes)) << p;
    return bytes;
}

/// The references of tests/image_reference.py, made once per test run; null where PIL is missing.
const fs::path* reference() {
    static std::unique_ptr<TempDir> dir;
    static bool tried = false;
    if (!tried) {
        tried = true;
        if (std::system("/usr/bin/python3 -c 'import numpy, PIL' >/dev/null 2>&1") != 0) return nullptr;
        dir = std::make_unique<TempDir>();
        const std::string command = "/usr/bin/python3 '" + (source_root() / "tests" / "image_reference.py").string() +
                                    "' '" + dir->path().string() + "'";
        if (std::system(command.c_str()) != 0) ADD_FAILURE() << "tests/image_reference.py failed";
    }
    return dir ? &dir->path() : nullptr;
}

#define NEED_REFERENCE(file)                                                                                      \
    const fs::path* ref = reference();                                                                            \
    if (!ref)                                                                                                     \
        GTEST_SKIP() << "PIL is not installed (apt install python3-pil python3-numpy); scripts/test installs it"; \
    if (!fs::exists(*ref / file)) GTEST_SKIP() << file << " needs torchvision (apt install python3-torchvision)"

struct Difference {
    int max = 0;
    double mean = 0;
};

Difference compare(const std::uint8_t* a, const std::vector<std::uint8_t>& b) {
    Difference d;
    for (std::size_t i = 0; i < b.size(); ++i) {
        const int diff = std::abs(int(a[i]) - int(b[i]));
        d.max = std::max(d.max, diff);
        d.mean += diff;
    }
    d.mean /= double(std::max<std::size_t>(b.size(), 1));
    return d;
}

TEST(Image, DecodesAsPil) {
    NEED_REFERENCE("decode.txt");
    std::ifstream manifest(*ref / "decode.txt");
    std::string line;
    int good = 0, bad = 0;
    ImageDecoder decoder;
    data::Image image;
    while (std::getline(manifest, line)) {
        std::istringstream in(line);
        std::string name, status;
        in >> name >> status;
        const auto bytes = read_all(*ref / "images" / name);
        if (status == "bad") {
            EXPECT_THROW(decoder.decode(bytes, image), data::DecodeError) << name;
            ++bad;
            continue;
        }
        int width = 0, height = 0;
        in >> width >> height;
        decoder.decode(bytes, image);
        ASSERT_EQ(image.width, width) << name;
        ASSERT_EQ(image.height, height) << name;
        const auto expected = read_all(*ref / "images" / (name + ".rgb"));
        ASSERT_GE(image.pixels.size(), expected.size()) << name;
        EXPECT_LE(compare(image.pixels.data(), expected).max, 1) << name;
        ++good;
    }
    EXPECT_EQ(good, 13);
    EXPECT_EQ(bad, 5);
}

TEST(Image, FormatComesFromTheBytes) {
    const std::uint8_t png[] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n', 0, 0};
    const std::uint8_t jpeg[] = {0xFF, 0xD8, 0xFF, 0xE0};
    const std::uint8_t text[] = {'h', 'e', 'l', 'l', 'o'};
    EXPECT_EQ(data::sniff_format(png), data::ImageFormat::png);
    EXPECT_EQ(data::sniff_format(jpeg), data::ImageFormat::jpeg);
    EXPECT_EQ(data::sniff_format(text), data::ImageFormat::unknown);
    ImageDecoder decoder;
    data::Image image;
    EXPECT_THROW(decoder.decode(text, image), data::DecodeError);
    EXPECT_THROW(decoder.decode(std::span<const std::uint8_t>(), image), data::DecodeError);
    EXPECT_THROW(decoder.decode(jpeg, image), data::DecodeError);
}

TEST(Resample, CropThenResizeAsPil) {
    NEED_REFERENCE("resize.txt");
    std::ifstream manifest(*ref / "resize.txt");
    ImageDecoder decoder;
    data::Resampler resampler;
    data::Image image;
    std::map<std::string, int> seen;
    std::string name;
    int x, y, w, h, ow, oh, cases = 0;
    while (manifest >> name >> x >> y >> w >> h >> ow >> oh) {
        decoder.decode(read_all(*ref / "images" / name), image);
        const auto expected = read_all(*ref / "images" / (name + ".crop" + std::to_string(seen[name]++) + ".rgb"));
        std::vector<std::uint8_t> out(std::size_t(ow) * oh * 3);
        const data::RgbView crop{image.pixels.data() + (std::size_t(y) * image.width + x) * 3, w, h,
                                 std::size_t(image.width) * 3};
        resampler.resize(crop, {0, 0, double(w), double(h)}, {ow, oh, 0, 0, ow, oh}, out.data(), std::size_t(ow) * 3);
        const Difference d = compare(out.data(), expected);
        EXPECT_EQ(d.max, 0) << name << " crop " << x << "," << y << " " << w << "x" << h << " to " << ow << "x" << oh;
        ++cases;
    }
    EXPECT_EQ(cases, 16);
}

TEST(Transform, ValidationAsTorchvision) {
    NEED_REFERENCE("val.txt");
    std::ifstream manifest(*ref / "val.txt");
    data::ImageTransform transform;
    std::string name;
    int resize, crop, cases = 0;
    while (manifest >> name >> resize >> crop) {
        data::TransformConfig c;
        c.val_resize = resize;
        c.val_crop = crop;
        const auto bytes = read_all(*ref / "images" / name);
        const auto expected = read_all(*ref / "images" / (name + ".val.rgb"));
        std::vector<std::uint8_t> out(std::size_t(crop) * crop * 3);
        c.fast_decode = false;
        transform.val(bytes, c, out.data());
        EXPECT_LE(compare(out.data(), expected).max, 1) << name;
        // Decoding at a reduced DCT scale first changes pixels a little, never the picture.
        c.fast_decode = true;
        transform.val(bytes, c, out.data());
        const Difference scaled = compare(out.data(), expected);
        EXPECT_LT(scaled.mean, 3.0) << name;
        ++cases;
    }
    EXPECT_EQ(cases, 5);
}

TEST(Transform, FastDecodeKeepsThePicture) {
    NEED_REFERENCE("decode.txt");
    data::ImageTransform transform;
    data::TransformConfig exact, fast;
    exact.fast_decode = false;
    std::vector<std::uint8_t> a(224 * 224 * 3), b(a.size());
    for (const char* name : {"rgb_500x375.JPEG", "rgb_4000x3000.JPEG", "progressive.JPEG", "cmyk.JPEG", "gray.JPEG"}) {
        const auto bytes = read_all(*ref / "images" / name);
        for (std::uint64_t seed = 0; seed < 8; ++seed) {
            Rng r1(seed), r2(seed);
            transform.train(bytes, exact, r1, a.data());
            transform.train(bytes, fast, r2, b.data());
            EXPECT_LT(compare(a.data(), b).mean, 3.0) << name << " seed " << seed;
        }
    }
}

// Mean and standard error of f over the samples.
template <class F>
std::pair<double, double> mean_and_error(const std::vector<data::CropBox>& boxes, F f) {
    double sum = 0, sum_sq = 0;
    for (const auto& b : boxes) {
        const double v = f(b);
        sum += v;
        sum_sq += v * v;
    }
    const double n = double(boxes.size()), mean = sum / n;
    return {mean, std::sqrt(std::max(0.0, sum_sq / n - mean * mean) / n)};
}

TEST(RandomResizedCrop, FollowsTorchvisionsDistribution) {
    NEED_REFERENCE("rrc.txt");
    std::map<std::pair<int, int>, std::vector<data::CropBox>> theirs;
    std::ifstream manifest(*ref / "rrc.txt");
    int w, h;
    data::CropBox b;
    while (manifest >> w >> h >> b.x >> b.y >> b.width >> b.height) theirs[{w, h}].push_back(b);
    ASSERT_EQ(theirs.size(), 3u);
    Rng rng(42);
    for (const auto& [size, boxes] : theirs) {
        const auto [width, height] = size;
        std::vector<data::CropBox> ours;
        for (std::size_t i = 0; i < boxes.size(); ++i) {
            ours.push_back(data::random_resized_crop(width, height, rng));
            const auto& o = ours.back();
            ASSERT_TRUE(o.x >= 0 && o.y >= 0 && o.width >= 1 && o.height >= 1 && o.x + o.width <= width &&
                        o.y + o.height <= height);
        }
        const std::function<double(const data::CropBox&)> statistics[] = {
            [&](const data::CropBox& c) { return double(c.width) * c.height / (double(width) * height); },
            [](const data::CropBox& c) { return std::log(double(c.width) / c.height); },
            [&](const data::CropBox& c) { return (c.x + c.width / 2.0) / width; },
            [&](const data::CropBox& c) { return (c.y + c.height / 2.0) / height; },
            [&](const data::CropBox& c) { return c.width == width || c.height == height ? 1.0 : 0.0; },
        };
        for (std::size_t s = 0; s < std::size(statistics); ++s) {
            const auto [m_ours, e_ours] = mean_and_error(ours, statistics[s]);
            const auto [m_theirs, e_theirs] = mean_and_error(boxes, statistics[s]);
            EXPECT_LE(std::abs(m_ours - m_theirs), 5 * std::hypot(e_ours, e_theirs) + 1e-9)
                << width << "x" << height << " statistic " << s << ": ours " << m_ours << ", torchvision " << m_theirs;
        }
    }
}

// A source whose sample i is 2x2 pixels of value i % 251, labelled i, and whose sample 13 is damaged.
struct CountingSource {
    struct Worker {};
    data::Size2 output(Split) const { return {2, 2}; }
    std::int32_t label(Split, std::int64_t i) const { return std::int32_t(i); }
    std::string name(Split, std::int64_t i) const { return "sample " + std::to_string(i); }
    void load(Worker&, Split, std::int64_t i, Rng& rng, std::uint8_t* rgb) const {
        if (i == 13) throw data::DecodeError("damaged");
        std::fill(rgb, rgb + 12, std::uint8_t(i % 251));
        rgb[0] = std::uint8_t(rng.below(256));  // the augmentation's randomness must not depend on the worker
    }
};

// The loader's contract is checked when a source is plugged in: the test source meets it, and one
// without a way to load a sample, or whose labels are not numbers, does not.
static_assert(data::SampleSource<CountingSource>);
struct SourceWithoutLoad {
    struct Worker {};
    data::Size2 output(Split) const { return {2, 2}; }
    std::int32_t label(Split, std::int64_t) const { return 0; }
    std::string name(Split, std::int64_t) const { return ""; }
};
static_assert(!data::SampleSource<SourceWithoutLoad>);
struct SourceWithTextLabels : SourceWithoutLoad {
    std::string label(Split, std::int64_t) const { return "cat"; }
    void load(Worker&, Split, std::int64_t, Rng&, std::uint8_t*) const {}
};
static_assert(!data::SampleSource<SourceWithTextLabels>);

// A worker that cannot be started, or a batch whose memory cannot be had, must stop the run with a
// message: never std::terminate from a thread or from a half-built loader.
TEST(Loader, ThreadsThatCannotStartAndBatchesThatCannotBeAllocatedStopCleanly) {
#ifdef __SANITIZE_ADDRESS__
    GTEST_SKIP()
        << "AddressSanitizer's shadow memory does not fit an address-space limit, and its allocator aborts where "
           "malloc would fail";
#endif
    CountingSource source;
    // 512 workers' stacks (8 MiB each) in 256 MiB of room: thread creation fails part way.
    EXPECT_EQ(exit_code_in_child(std::size_t(256) << 20,
                                 [&] {
                                     data::Loader<CountingSource> loader(source, 512, 2);
                                     return 0;
                                 }),
              2)
        << "a loader whose workers cannot all start";
    struct Huge : CountingSource {  // 12 GiB a sample
        data::Size2 output(Split) const { return {1 << 16, 1 << 16}; }
    } huge;
    EXPECT_EQ(exit_code_in_child(std::size_t(256) << 20,
                                 [&] {
                                     data::Loader<Huge> loader(huge, 2, 2);
                                     plugin::EpochPlan plan;
                                     plan.batch_size = 8;
                                     loader.start(Split::train, plan, 50);
                                     plugin::Batch b;
                                     loader.next(b);  // rethrows the workers' std::bad_alloc
                                     return 0;
                                 }),
              3)
        << "a batch the workers cannot allocate";
}

TEST(Loader, InlineAndThreadedGiveTheSameEpochs) {
    CountingSource source;
    auto epochs = [&](int workers) {
        std::vector<std::string> warnings;
        data::Loader<CountingSource> loader(source, workers, 2, [&](const std::string& w) { warnings.push_back(w); });
        std::vector<plugin::Batch> batches;
        for (int epoch = 1; epoch <= 2; ++epoch) {
            plugin::EpochPlan plan;
            plan.epoch = epoch;
            plan.batch_size = 8;
            loader.start(Split::train, plan, 50);
            for (plugin::Batch b; loader.next(b);) batches.push_back(b);
            EXPECT_EQ(loader.bad_samples(), 1) << workers << " workers, epoch " << epoch;
        }
        EXPECT_EQ(warnings.size(), 1u);
        return batches;
    };
    const auto inline_batches = epochs(0);
    ASSERT_EQ(inline_batches.size(), 14u);  // 50 samples in batches of 8, twice
    std::vector<int> seen(50);
    for (std::size_t b = 0; b < 7; ++b)
        for (auto label : inline_batches[b].labels) ++seen[label];
    // Every sample once in the first epoch, except the damaged one, whose place another took.
    EXPECT_EQ(seen[13], 0);
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 1), 48);
    EXPECT_EQ(std::count(seen.begin(), seen.end(), 2), 1);
    for (int workers : {1, 4}) {
        const auto threaded = epochs(workers);
        ASSERT_EQ(threaded.size(), inline_batches.size());
        for (std::size_t b = 0; b < threaded.size(); ++b) {
            EXPECT_EQ(threaded[b].labels, inline_batches[b].labels) << workers << " workers, batch " << b;
            EXPECT_EQ(threaded[b].pixels, inline_batches[b].pixels) << workers << " workers, batch " << b;
        }
    }
}

// ---- the imagefolder plugin on images made here ------------------------------------------------

void write_jpeg(const fs::path& path, int width, int height, int shade) {
    std::vector<std::uint8_t> rgb(std::size_t(width) * height * 3);
    for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x)
            for (int c = 0; c < 3; ++c)
                rgb[(std::size_t(y) * width + x) * 3 + c] = std::uint8_t((shade * 40 + x * (c + 1) + y * 3) % 256);
    tjhandle tj = tjInitCompress();
    unsigned char* jpeg = nullptr;
    unsigned long size = 0;
    ASSERT_EQ(tjCompress2(tj, rgb.data(), width, 0, height, TJPF_RGB, &jpeg, &size, TJSAMP_420, 90, 0), 0);
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(jpeg), std::streamsize(size));
    tjFree(jpeg);
    tjDestroy(tj);
}

/// train/{a,b,c} with 7, 6 and 5 images (b's partly in a subfolder), val/{a,b,c} with 2 each.
void make_image_folder(const fs::path& root) {
    int shade = 0;
    for (auto [cls, count] : {std::pair{"a", 7}, {"b", 6}, {"c", 5}}) {
        fs::create_directories(root / "train" / cls / "more");
        fs::create_directories(root / "val" / cls);
        for (int i = 0; i < count; ++i)
            write_jpeg(root / "train" / cls / (i % 3 == 2 && std::string(cls) == "b" ? "more" : "") /
                           ("img" + std::to_string(i) + ".JPEG"),
                       40 + 13 * i, 30 + 7 * (i % 4), shade++);
        for (int i = 0; i < 2; ++i)
            write_jpeg(root / "val" / cls / ("v" + std::to_string(i) + ".jpg"), 50 + 9 * i, 41, shade++);
    }
    std::ofstream(root / "train" / "a" / "readme.txt") << "not an image, and not named like one: ignored\n";
}

struct FolderRun {
    std::vector<std::vector<std::uint8_t>> pixels;
    std::vector<std::vector<std::int32_t>> labels;
    std::vector<std::int64_t> bad;
};

std::shared_ptr<plugin::DataSource> make_imagefolder(const fs::path& root,
                                                     std::map<std::string, plugin::Value> options) {
    plugin::Registry registry({plugin_dir()});
    const auto* entry = registry.find("data", "imagefolder");
    if (!entry) throw std::runtime_error("the imagefolder plugin was not built");
    options.emplace("train", (root / "train").string());
    options.emplace("val", (root / "val").string());
    options.emplace("image_size", std::int64_t(32));
    options.emplace("val_resize", std::int64_t(36));
    options.emplace("val_crop", std::int64_t(32));
    return registry.create<plugin::DataSource>(*entry, plugin::Registry::with_defaults(*entry, options));
}

FolderRun run_epochs(plugin::DataSource& source, int epochs, int batch_size, int rank = 0, int world = 1) {
    FolderRun run;
    plugin::Batch batch;
    for (int epoch = 1; epoch <= epochs; ++epoch)
        for (Split split : {Split::train, Split::val}) {
            plugin::EpochPlan plan;
            plan.epoch = epoch;
            plan.seed = 7;
            plan.batch_size = batch_size;
            plan.rank = rank;
            plan.world_size = world;
            source.start_epoch(split, plan);
            while (source.next(batch)) {
                run.pixels.emplace_back(batch.pixels.begin(), batch.pixels.end());
                run.labels.emplace_back(batch.labels.begin(), batch.labels.end());
            }
            run.bad.push_back(source.bad_samples());
        }
    return run;
}

TEST(ImageFolder, ClassesImagesAndSizes) {
    TempDir dir;
    make_image_folder(dir.path());
    auto source = make_imagefolder(dir.path(), {});
    const plugin::DatasetInfo info = source->info();
    EXPECT_EQ(info.num_classes, 3);
    EXPECT_EQ(info.train_size, 18);
    EXPECT_EQ(info.val_size, 6);
    EXPECT_EQ(info.class_names, (std::vector<std::string>{"a", "b", "c"}));
    EXPECT_EQ(info.height, 32);
    EXPECT_EQ(info.channels, 3);
    const FolderRun run = run_epochs(*source, 1, 4);
    // Training: 18 images in batches of 4; validation: each of the 6 images once, in order.
    ASSERT_EQ(run.labels.size(), 5u + 2u);
    std::vector<int> per_class(3);
    for (std::size_t b = 0; b < 5; ++b)
        for (auto l : run.labels[b]) ++per_class[l];
    EXPECT_EQ(per_class, (std::vector<int>{7, 6, 5}));
    EXPECT_EQ(run.labels[5], (std::vector<std::int32_t>{0, 0, 1, 1}));
    EXPECT_EQ(run.labels[6], (std::vector<std::int32_t>{2, 2}));
    EXPECT_EQ(run.pixels[0].size(), 4u * 32 * 32 * 3);
}

TEST(ImageFolder, SamplesDoNotDependOnTheWorkers) {
    TempDir dir;
    make_image_folder(dir.path());
    // Decoded in the test's own thread (inline: no worker thread at all), then by 1, 2 and 5 workers.
    auto threads = [] {  // this process's threads, as the kernel counts them
        std::ifstream status("/proc/self/status");
        for (std::string line; std::getline(status, line);)
            if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
        return -1;
    };
    const int before = threads();
    auto inline_source = make_imagefolder(dir.path(), {{"inline", true}});
    EXPECT_EQ(threads(), before) << "inline decoding started threads";
    const FolderRun inline_run = run_epochs(*inline_source, 2, 4);
    for (std::int64_t workers : {1, 2, 5}) {
        const FolderRun run = run_epochs(*make_imagefolder(dir.path(), {{"workers", workers}}), 2, 4);
        EXPECT_EQ(run.labels, inline_run.labels) << workers << " workers";
        EXPECT_TRUE(run.pixels == inline_run.pixels) << workers << " workers";
    }
    // Another epoch is another order and other crops.
    EXPECT_FALSE(inline_run.pixels[0] == inline_run.pixels[7]);
}

TEST(ImageFolder, RanksShareTheEpoch) {
    TempDir dir;
    make_image_folder(dir.path());
    auto source = make_imagefolder(dir.path(), {{"workers", std::int64_t(2)}});
    std::vector<int> val_per_class(3);
    for (int rank = 0; rank < 2; ++rank) {
        const FolderRun run = run_epochs(*source, 1, 3, rank, 2);
        ASSERT_EQ(run.labels.size(), 3u + 1u);  // 9 training samples each, 3 validation samples each
        for (auto l : run.labels.back()) ++val_per_class[l];
    }
    EXPECT_EQ(val_per_class, (std::vector<int>{2, 2, 2}));
}

TEST(ImageFolder, DamagedFilesAreReportedOnceAndReplaced) {
    TempDir dir;
    make_image_folder(dir.path());
    const auto good = read_all(dir.path() / "train" / "a" / "img3.JPEG");
    std::ofstream(dir.path() / "train" / "b" / "truncated.JPEG", std::ios::binary)
        .write(reinterpret_cast<const char*>(good.data()), std::streamsize(good.size() / 2));
    std::ofstream(dir.path() / "train" / "c" / "empty.jpg");
    std::ofstream(dir.path() / "train" / "c" / "notes.jpg") << "a text file named like an image\n";
    std::ofstream(dir.path() / "val" / "a" / "bad.png") << "neither";
    testing::internal::CaptureStderr();
    const FolderRun run = run_epochs(*make_imagefolder(dir.path(), {{"workers", std::int64_t(2)}}), 2, 3);
    const std::string warnings = testing::internal::GetCapturedStderr();
    EXPECT_EQ(run.bad, (std::vector<std::int64_t>{3, 1, 3, 1}));  // train and val of each epoch
    for (const char* name : {"truncated.JPEG", "empty.jpg", "notes.jpg", "bad.png"}) {
        const auto first = warnings.find(name);
        EXPECT_NE(first, std::string::npos) << name << " not reported:\n" << warnings;
        EXPECT_EQ(warnings.find(name, first + 1), std::string::npos) << name << " reported twice:\n" << warnings;
    }
    std::size_t train_samples = 0;
    for (std::size_t b = 0; b < 7; ++b) train_samples += run.labels[b].size();
    EXPECT_EQ(train_samples, 21u);  // the epoch is still full
}

TEST(ImageFolder, ClearErrorsBeforeTraining) {
    TempDir dir;
    make_image_folder(dir.path());
    auto expect_error = [&](const std::string& fragment, const std::function<void()>& f) {
        try {
            f();
            ADD_FAILURE() << "no error; expected one mentioning " << fragment;
        } catch (const Error& e) {
            EXPECT_TRUE(e.is_user_error());
            EXPECT_NE(std::string(e.what()).find(fragment), std::string::npos) << e.what();
        }
    };
    expect_error((dir.path() / "nowhere").string(), [&] { make_imagefolder(dir.path() / "nowhere", {}); });
    fs::create_directories(dir.path() / "val" / "zebra");
    write_jpeg(dir.path() / "val" / "zebra" / "z.jpg", 20, 20, 1);
    expect_error((dir.path() / "val" / "zebra").string(), [&] { make_imagefolder(dir.path(), {}); });
    fs::remove_all(dir.path() / "val" / "zebra");
    fs::create_directories(dir.path() / "train" / "empty_class");
    expect_error((dir.path() / "train" / "empty_class").string() + ": is a class folder with no images",
                 [&] { make_imagefolder(dir.path(), {}); });
}

TEST(ImageFolder, ClassNamesFromAFile) {
    TempDir dir;
    make_image_folder(dir.path());
    std::ofstream(dir.path() / "names.txt") << "a apple, malus\nc cherry\nzz unused\n";
    auto source = make_imagefolder(dir.path(), {{"class_names", (dir.path() / "names.txt").string()}});
    EXPECT_EQ(source->info().class_names, (std::vector<std::string>{"apple", "b", "cherry"}));
    std::ofstream(dir.path() / "plain.txt") << "first\nsecond\nthird\n";
    source = make_imagefolder(dir.path(), {{"class_names", (dir.path() / "plain.txt").string()}});
    EXPECT_EQ(source->info().class_names, (std::vector<std::string>{"first", "second", "third"}));
}

}  // namespace
}  // namespace tessera::test

// ---- shards: runner prepare and the shards plugin ------------------------------------------------

namespace tessera::test {
namespace {

std::shared_ptr<plugin::DataSource> make_photo_data(const std::string& name, const fs::path& train, const fs::path& val,
                                                    std::map<std::string, plugin::Value> options) {
    plugin::Registry registry({plugin_dir()});
    const auto* entry = registry.find("data", name);
    if (!entry) throw std::runtime_error("the " + name + " plugin was not built");
    options.emplace("train", train.string());
    options.emplace("val", val.string());
    options.emplace("image_size", std::int64_t(32));
    options.emplace("val_resize", std::int64_t(36));
    options.emplace("val_crop", std::int64_t(32));
    return registry.create<plugin::DataSource>(*entry, plugin::Registry::with_defaults(*entry, options));
}

// Sizes an input claims are checked against the bytes it has, without overflow.
TEST(Limits, IdxHeadersThatClaimTooMuchAreRefused) {
    auto idx = [](std::vector<std::uint32_t> dims, std::size_t data) {
        std::vector<std::uint8_t> b = {0, 0, 8, std::uint8_t(dims.size())};
        for (auto d : dims)
            for (int shift : {24, 16, 8, 0}) b.push_back(std::uint8_t(d >> shift));
        b.resize(b.size() + data, 7);
        return b;
    };
    EXPECT_EQ(data::parse_idx(idx({2, 3, 4}, 24), 3, "ok").data.size(), 24u);
    // 2^32-1 cubed wraps 64 bits: a reader that multiplies blindly could accept this file.
    for (const auto& dims : {std::vector<std::uint32_t>{0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu},
                             std::vector<std::uint32_t>{0x80000000u, 0x80000000u, 4},
                             std::vector<std::uint32_t>{0, 5, 5}, std::vector<std::uint32_t>{2, 3, 5}})
        EXPECT_THROW(data::parse_idx(idx(dims, 24), 3, "claims"), Error);
    EXPECT_THROW(data::parse_idx(idx({24}, 24), 3, "wrong rank"), Error);
}

// Found by scripts/fuzz (image): a 16-bit PGM header promising 3727x3727 pixels in a 24-byte file
// made stb_image read past the end.
TEST(Limits, PnmFilesMustHoldThePixelsTheirHeaderPromises) {
    data::ImageDecoder decoder;
    data::Image image;
    for (const std::string crash :
         {"P5\n3727\n3727 4646 46462\xd2", "P5\n3727\n3737 466\n3"}) {  // both fuzzer findings
        const std::vector<std::uint8_t> bytes(crash.begin(), crash.end());
        EXPECT_THROW(decoder.decode(bytes, image), data::DecodeError) << crash;
    }
    // Whole files still decode: 8-bit and 16-bit grey, and colour, comments included.
    std::string grey16 = "P5\n# a comment\n2 1\n65535\n";
    grey16 += std::string("\xff\xff\x00\x00", 4);
    std::string colour = "P6 1 1 255\n";
    colour += std::string("\x0a\x14\x1e", 3);
    for (const std::string& file : {grey16, colour}) {
        decoder.decode(std::vector<std::uint8_t>(file.begin(), file.end()), image);
        EXPECT_GE(image.width, 1);
    }
    EXPECT_EQ(image.pixels[0], 10);
    std::string cut = colour.substr(0, colour.size() - 1);
    EXPECT_THROW(decoder.decode(std::vector<std::uint8_t>(cut.begin(), cut.end()), image), data::DecodeError);
}

TEST(Limits, ShardIndexesThatPointOutsideTheirShardsAreRefused) {
    TempDir dir;
    std::ofstream(dir / "classes.txt") << "a\nb\n";
    std::ofstream(dir / data::shard_file_name(0), std::ios::binary) << std::string(1000, 'x');
    const std::string header = std::string(data::shards_index_header) + "\n";
    for (const char* line : {"0\t900\t100\t1\tok.jpg\n", "0\t901\t100\t1\tpast-the-end.jpg\n",
                             "0\t18446744073709551615\t2\t0\twraps.jpg\n", "4294967295\t0\t1\t0\thuge-shard.jpg\n",
                             "0\t0\t1\t2\tno-such-class.jpg\n"}) {
        std::ofstream(dir / "index.tsv", std::ios::trunc) << header << line;
        if (std::string_view(line).find("ok.jpg") != std::string_view::npos)
            EXPECT_NO_THROW(data::ShardReader(dir.path(), "t")) << line;
        else
            EXPECT_THROW(data::ShardReader(dir.path(), "t"), Error) << line;
    }
}

TEST(Shards, GiveTheSamplesOfTheFolderTheyWereMadeFrom) {
    TempDir dir;
    make_image_folder(dir.path());
    // Every image is smaller than --max-side, so its bytes go into the shards unchanged.
    const RunResult r =
        run_runner("prepare '" + dir.path().string() + "' '" + (dir / "shards").string() + "' --max-side 512");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("18 images in 1 shards"), std::string::npos) << r.output;
    auto folder = make_imagefolder(dir.path(), {{"workers", std::int64_t(2)}});
    auto shards =
        make_photo_data("shards", dir / "shards" / "train", dir / "shards" / "val", {{"workers", std::int64_t(3)}});
    EXPECT_EQ(shards->info().class_names, folder->info().class_names);
    EXPECT_EQ(shards->info().train_size, folder->info().train_size);
    const FolderRun a = run_epochs(*folder, 2, 4), b = run_epochs(*shards, 2, 4);
    EXPECT_EQ(a.labels, b.labels);
    EXPECT_TRUE(a.pixels == b.pixels);
}

TEST(Shards, PrepareResizesLeavesOutDamagedFilesAndRefusesHalfMadeFolders) {
    TempDir dir;
    fs::create_directories(dir / "src" / "big");
    fs::create_directories(dir / "src" / "small");
    write_jpeg(dir / "src" / "big" / "wide.jpg", 300, 120, 1);
    write_jpeg(dir / "src" / "small" / "tiny.jpg", 20, 30, 2);
    std::ofstream(dir / "src" / "small" / "broken.jpg") << "not a JPEG";
    const RunResult r =
        run_runner("prepare '" + (dir / "src").string() + "' '" + (dir / "out").string() + "' --max-side 100");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("broken.jpg"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("1 unreadable images left out"), std::string::npos) << r.output;
    data::ShardReader reader(dir / "out", "the shards");
    ASSERT_EQ(reader.size(), 2u);
    ImageDecoder decoder;
    const data::ImageHeader wide = decoder.header(reader.bytes(0));
    EXPECT_EQ(wide.width, 100);  // the longer side is --max-side, the aspect ratio kept
    EXPECT_EQ(wide.height, 40);
    EXPECT_EQ(decoder.header(reader.bytes(1)).width, 20);
    EXPECT_EQ(reader.entry(1).label, 1);
    EXPECT_EQ(reader.entry(1).path, "small/tiny.jpg");

    fs::remove(dir / "out" / "index.tsv");  // as if prepare had been interrupted
    try {
        data::ShardReader half(dir / "out", "the shards");
        FAIL() << "read a folder without an index";
    } catch (const Error& e) {
        EXPECT_NE(std::string(e.what()).find("runner prepare was interrupted"), std::string::npos) << e.what();
    }
}

TEST(PrepareVal, MovesValidationImagesIntoClassFolders) {
    TempDir dir;
    const fs::path val = dir / "val";
    fs::create_directories(val);
    const std::vector<std::string> wnids = {"n01440764", "n01443537", "n01440764", "n01484850"};
    std::ofstream csv(dir / "LOC_val_solution.csv");
    csv << "ImageId,PredictionString\n";
    std::ofstream plain(dir / "synset_labels.txt"), ids(dir / "ground_truth.txt"), synsets(dir / "synsets.txt");
    for (std::size_t i = 0; i < wnids.size(); ++i) {
        char name[40];
        std::snprintf(name, sizeof name, "ILSVRC2012_val_%08zu", i + 1);
        write_jpeg(val / (std::string(name) + ".JPEG"), 20, 20, int(i));
        csv << name << "," << wnids[i] << " 1 2 3 4 " << wnids[i] << " 5 6 7 8\n";
        plain << wnids[i] << "\n";
        ids << (wnids[i] == "n01440764" ? 2 : wnids[i] == "n01443537" ? 1 : 3) << "\n";
    }
    csv.close(), plain.close(), ids.close();
    synsets << "n01443537 goldfish\nn01440764 tench\nn01484850 great white shark\n";
    synsets.close();
    const std::string quoted = "'" + val.string() + "' ";

    RunResult r = run_runner("prepare-val " + quoted + "'" + (dir / "LOC_val_solution.csv").string() + "'");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_TRUE(fs::exists(val / "n01440764" / "ILSVRC2012_val_00000003.JPEG"));
    EXPECT_TRUE(fs::exists(val / "n01484850" / "ILSVRC2012_val_00000004.JPEG"));
    EXPECT_FALSE(fs::exists(val / "ILSVRC2012_val_00000001.JPEG"));
    // Again, and with the other label files: nothing left to move, nothing lost.
    const std::string with_synsets = " --synsets '" + (dir / "synsets.txt").string() + "'";
    for (const auto& [labels, extra] : std::vector<std::pair<std::string, std::string>>{
             {"synset_labels.txt", ""}, {"ground_truth.txt", with_synsets}}) {
        r = run_runner("prepare-val " + quoted + "'" + (dir / labels).string() + "'" + extra);
        ASSERT_EQ(r.exit_code, 0) << r.output;
        EXPECT_NE(r.output.find("moved 0 images into class folders under " + val.string() + " (4 already in place)"),
                  std::string::npos)
            << r.output;
    }
    r = run_runner("prepare-val " + quoted + "'" + (dir / "ground_truth.txt").string() + "'");
    EXPECT_EQ(r.exit_code, 2);
    EXPECT_NE(r.output.find("--synsets"), std::string::npos) << r.output;
    r = run_runner("prepare-val " + quoted + "'" + (dir / "synsets.txt").string() + "'");
    EXPECT_EQ(r.exit_code, 2) << r.output;
}

// A file where a class folder must go: refused before any image moves.
TEST(PrepareVal, AFileWhereAClassFolderMustGoIsRefusedBeforeAnythingMoves) {
    TempDir dir;
    const fs::path val = dir / "val";
    fs::create_directories(val);
    std::ofstream labels(dir / "synset_labels.txt");
    for (int i = 1; i <= 3; ++i) {
        char name[40];
        std::snprintf(name, sizeof name, "ILSVRC2012_val_%08d.JPEG", i);
        write_jpeg(val / name, 20, 20, i);
        labels << (i == 3 ? "n01484850" : "n01440764") << "\n";
    }
    labels.close();
    std::ofstream(val / "n01484850") << "a file, not a folder";
    const RunResult r = run_runner("prepare-val '" + val.string() + "' '" + (dir / "synset_labels.txt").string() + "'");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("n01484850: is a file, where the class folder of ILSVRC2012_val_00000003.JPEG must go"),
              std::string::npos)
        << r.output;
    EXPECT_NE(r.output.find("no image has been moved"), std::string::npos) << r.output;
    for (int i = 1; i <= 3; ++i) {
        char name[40];
        std::snprintf(name, sizeof name, "ILSVRC2012_val_%08d.JPEG", i);
        EXPECT_TRUE(fs::exists(val / name)) << name << " moved";
    }
}

TEST(ImageFolder, TrainsFromARecipeAndCountsDamagedFiles) {
    TempDir dir;
    make_image_folder(dir.path());
    std::ofstream(dir / "train" / "a" / "damaged.jpg") << "not an image";
    std::ofstream(dir / "r.toml")
        << "[run]\nname = \"photos\"\nout_dir = \"" << (dir / "runs").string()
        << "\"\n[model]\narch = \"resnet20\"\n[data]\nplugin = \"imagefolder\"\ntrain = \"" << (dir / "train").string()
        << "\"\nval = \"" << (dir / "val").string()
        << "\"\nimage_size = 32\nval_resize = 36\nval_crop = 32\nworkers = 2\nbatch_size = 6\n"
           "[optimizer]\nplugin = \"sgd\"\n[scheduler]\nplugin = \"constant\"\nlr = 0.01\n[train]\nepochs = 2\n"
           "[[logger]]\nplugin = \"console\"\n[[logger]]\nplugin = \"csv\"\n";
    const RunResult r = run_runner("'" + (dir / "r.toml").string() + "' --threads 1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    EXPECT_NE(r.output.find("final: epoch=2"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("1 unreadable images were skipped and replaced"), std::string::npos) << r.output;
    std::ifstream csv(dir / "runs" / "photos" / "metrics.csv");
    std::string header, first;
    std::getline(csv, header);
    std::getline(csv, first);
    EXPECT_EQ(first.substr(first.rfind(',') + 1), "1") << first;  // bad_samples of epoch 1

    // The same recipe's loader alone.
    const RunResult bench =
        run_runner("bench --data '" + (dir / "r.toml").string() + "' --threads 2 --batches 2 --warmup 1 --json");
    ASSERT_EQ(bench.exit_code, 0) << bench.output;
    EXPECT_NE(bench.output.find("\"data\": \"imagefolder\", \"threads\": 2, \"batch\": 6, \"batches\": 2"),
              std::string::npos)
        << bench.output;
    EXPECT_NE(bench.output.find("\"img_per_s\": "), std::string::npos) << bench.output;
}

}  // namespace
}  // namespace tessera::test
