// runner serve: what a request carries (ServeRequest, in-process), and the server itself as a user
// starts it (Serve, ServePage): answers equal to runner predict's, batching, every refusal with its
// status while good requests keep being answered, memory that does not grow, idle clients that hold
// nothing, a clean shutdown on SIGTERM, and the page driven in Chromium.
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <regex>
#include <thread>
#include <utility>  // std::exchange, which Boost 1.74's asio uses without including it

#include <boost/asio/connect.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <stb_image_write.h>
#include <turbojpeg.h>

#include "../runner/serve/request.hpp"
#include "helpers.hpp"
#include "tessera/core/json.hpp"

namespace tessera::test {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using serve::HttpError;
using serve::read_topk;
using serve::read_uploads;

// ---- What a request carries -------------------------------------------------------------------

int refusal(std::string_view type, std::string_view body) {
    try {
        read_uploads(type, body);
    } catch (const HttpError& e) {
        return e.status;
    }
    return 0;
}

TEST(ServeRequest, AnImageBodyIsOneUpload) {
    const auto u = read_uploads("image/png", "\x89PNG...");
    ASSERT_EQ(u.size(), 1u);
    EXPECT_EQ(u[0].name, "body");
    EXPECT_EQ(u[0].bytes, "\x89PNG...");
    EXPECT_EQ(read_uploads("IMAGE/JPEG; charset=binary", "x").size(), 1u);
}

TEST(ServeRequest, MultipartGivesEachFileFieldAndSkipsTextFields) {
    const std::string body =
        "preamble\r\n--b0undary\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nhello\r\n"
        "--b0undary\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: "
        "image/png\r\n\r\n"
        "PNG\r\nBYTES\r\n--b0undary\r\ncontent-disposition: form-data; name=\"b\"; filename=\"b b.jpg\"\r\n\r\nJPEG"
        "\r\n--b0undary--\r\n";
    const auto u = read_uploads("multipart/form-data; boundary=\"b0undary\"", body);
    ASSERT_EQ(u.size(), 2u);
    EXPECT_EQ(u[0].name, "a.png");
    EXPECT_EQ(u[0].bytes, "PNG\r\nBYTES");  // a CRLF inside the file is the file's
    EXPECT_EQ(u[1].name, "b b.jpg");
    EXPECT_EQ(u[1].bytes, "JPEG");
}

TEST(ServeRequest, WhatIsNotAnImageRequestIsRefusedWithItsStatus) {
    EXPECT_EQ(refusal("text/plain", "hello"), 415);
    EXPECT_EQ(refusal("", "hello"), 415);
    EXPECT_EQ(refusal("image/png", ""), 400);
    EXPECT_EQ(refusal("multipart/form-data", "--x\r\n"), 400);               // no boundary
    EXPECT_EQ(refusal("multipart/form-data; boundary=x", "no parts"), 400);  // no boundary line
    EXPECT_EQ(refusal("multipart/form-data; boundary=x",
                      "--x\r\nContent-Disposition: form-data; "
                      "name=\"f\"; filename=\"a\"\r\n\r\ntruncated"),
              400);
    EXPECT_EQ(refusal("multipart/form-data; boundary=x",
                      "--x\r\nContent-Disposition: form-data; name=\"t\"\r\n\r\n"
                      "text\r\n--x--"),
              400);  // a form without a file
    EXPECT_EQ(refusal("multipart/form-data; boundary=x",
                      "--x\r\nContent-Disposition: form-data; name=\"f\"; "
                      "filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\n"
                      "text\r\n--x--"),
              415);
}

TEST(ServeRequest, TopkComesFromTheQuery) {
    EXPECT_EQ(read_topk("/v1/predict", 10), 5);
    EXPECT_EQ(read_topk("/v1/predict", 3), 3);
    EXPECT_EQ(read_topk("/v1/predict?x=1&topk=7", 10), 7);
    for (const char* bad : {"/v1/predict?topk=0", "/v1/predict?topk=11", "/v1/predict?topk=2x", "/v1/predict?topk=-1"})
        EXPECT_THROW(read_topk(bad, 10), HttpError) << bad;
}

// ---- The server, as a user starts it ----------------------------------------------------------

struct Reply {
    int status = 0;  // 0: the connection failed or closed without an answer
    std::string body;
    std::map<std::string, std::string> headers;
};

/// One request on a connection of its own.
Reply request(int port, http::verb verb, const std::string& target, const std::string& body = {},
              const std::string& type = {}) {
    Reply reply;
    try {
        asio::io_context io;
        beast::tcp_stream stream(io);
        stream.connect(asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), std::uint16_t(port)));
        stream.expires_after(std::chrono::seconds(60));
        http::request<http::string_body> req{verb, target, 11};
        req.set(http::field::host, "127.0.0.1");
        if (!type.empty()) req.set(http::field::content_type, type);
        req.body() = body;
        req.prepare_payload();
        http::write(stream, req);
        beast::flat_buffer buffer;
        http::response_parser<http::string_body> parser;
        parser.body_limit(64 << 20);
        http::read(stream, buffer, parser);
        reply.status = int(parser.get().result_int());
        reply.body = parser.get().body();
        for (auto& field : parser.get()) reply.headers[std::string(field.name_string())] = std::string(field.value());
    } catch (const std::exception&) {}
    return reply;
}
Reply get(int port, const std::string& target) { return request(port, http::verb::get, target); }
Reply post(int port, const std::string& body, const std::string& type, const std::string& target = "/v1/predict") {
    return request(port, http::verb::post, target, body, type);
}

/// `runner serve …` started in the background; its first line says the port.
class Server {
public:
    explicit Server(const std::string& args) {
        int out[2];
        EXPECT_EQ(pipe(out), 0);
        pid_ = fork();
        if (pid_ == 0) {
            dup2(out[1], 1);
            dup2(out[1], 2);
            close(out[0]);
            execl("/bin/sh", "sh", "-c", ("exec '" + fs::absolute(runner_path()).string() + "' serve " + args).c_str(),
                  nullptr);
            _exit(127);
        }
        close(out[1]);
        output_ = fdopen(out[0], "r");
        char line[4096];
        while (std::fgets(line, sizeof line, output_)) {
            log_ += line;
            std::smatch m;
            const std::string text = line;
            if (std::regex_search(text, m, std::regex("http://[0-9.]+:([0-9]+)/"))) {
                port_ = std::stoi(m[1]);
                break;
            }
        }
    }
    ~Server() {
        if (pid_ > 0 && !exited_) {
            kill(pid_, SIGKILL);
            waitpid(pid_, nullptr, 0);
        }
        if (output_) fclose(output_);
    }
    int port() const { return port_; }
    const std::string& log() const { return log_; }
    pid_t pid() const { return pid_; }
    /// The resident memory, kB (VmRSS).
    long rss_kb() const {
        const std::string status = read_file("/proc/" + std::to_string(pid_) + "/status");
        std::smatch m;
        return std::regex_search(status, m, std::regex("VmRSS:\\s+([0-9]+)")) ? std::stol(m[1]) : -1;
    }
    /// SIGTERM, then the exit code and what it printed after the first line.
    int terminate(std::string& rest) {
        kill(pid_, SIGTERM);
        char line[4096];
        while (std::fgets(line, sizeof line, output_)) rest += line;
        int status = 0;
        waitpid(pid_, &status, 0);
        exited_ = true;
        return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    }

private:
    pid_t pid_ = -1;
    FILE* output_ = nullptr;
    int port_ = 0;
    bool exited_ = false;
    std::string log_;
};

/// A test image: a gradient with a shade, as PNG (RGB or grey) or JPEG.
void write_image(const fs::path& path, int width, int height, int shade, bool grey = false) {
    const int channels = grey ? 1 : 3;
    std::vector<unsigned char> px(std::size_t(width) * height * channels);
    for (int y = 0; y < height; ++y)
        for (int x = 0; x < width; ++x)
            for (int c = 0; c < channels; ++c)
                px[(std::size_t(y) * width + x) * channels + c] =
                    static_cast<unsigned char>((x * 255 / width + y * 97 / height + shade * (c + 1)) % 256);
    if (path.extension() == ".png") {
        ASSERT_NE(stbi_write_png(path.c_str(), width, height, channels, px.data(), width * channels), 0);
        return;
    }
    tjhandle tj = tjInitCompress();
    unsigned char* jpeg = nullptr;
    unsigned long size = 0;
    ASSERT_EQ(tjCompress2(tj, px.data(), width, 0, height, grey ? TJPF_GRAY : TJPF_RGB, &jpeg, &size,
                          grey ? TJSAMP_GRAY : TJSAMP_420, 90, 0),
              0);
    std::ofstream(path, std::ios::binary).write(reinterpret_cast<const char*>(jpeg), std::streamsize(size));
    tjFree(jpeg);
    tjDestroy(tj);
}

/// A small trained model, made once for the suite: resnet20 on synthetic 16 px images, 10 classes,
/// with a labels file of one name per class.
class ServeFixture : public ::testing::Test {
protected:
    static void SetUpTestSuite() {
        dir_ = new TempDir;
        std::ofstream(*dir_ / "r.toml")
            << "[run]\nname = \"m\"\nout_dir = \"runs\"\n[model]\narch = \"resnet20\"\n"
               "[data]\nplugin = \"synthetic\"\nimage_size = 16\ntrain_size = 64\nval_size = 16\nbatch_size = 16\n"
               "[train]\nepochs = 1\n";
        const RunResult r = run_runner("r.toml --threads 2", dir_->path());
        ASSERT_EQ(r.exit_code, 0) << r.output;
        std::ofstream labels(*dir_ / "labels.txt");
        for (const char* name : {"tench", "goldfish", "great white shark", "tiger shark", "hammerhead", "electric ray",
                                 "stingray", "cock", "hen", "ostrich"})
            labels << name << "\n";
    }
    static void TearDownTestSuite() { delete dir_; }
    static fs::path checkpoint() { return dir_->path() / "runs" / "m" / "last.safetensors"; }
    static fs::path labels() { return dir_->path() / "labels.txt"; }
    static fs::path dir() { return dir_->path(); }
    static std::string model_args() {
        return "--checkpoint '" + checkpoint().string() + "' --labels '" + labels().string() + "' --port 0 ";
    }
    /// runner predict --json's answer for `files`, parsed.
    static json::Value predict_json(const std::vector<fs::path>& files, int topk) {
        std::string args = "predict --checkpoint '" + checkpoint().string() + "' --labels '" + labels().string() +
                           "' --threads 1 --topk " + std::to_string(topk) + " --json";
        for (auto& f : files) args += " '" + f.string() + "'";
        const RunResult r = run_shell("'" + fs::absolute(runner_path()).string() + "' " + args);
        EXPECT_EQ(r.exit_code, 0) << r.output;
        return json::parse(r.output, "runner predict --json");
    }
    static TempDir* dir_;
};
TempDir* ServeFixture::dir_ = nullptr;

using Serve = ServeFixture;
using ServePage = ServeFixture;

/// The classes and probabilities of one answer object: {"image": …, "top": [{"class", "label", "prob"}…]}.
void expect_same_answer(const json::Value& served, const json::Value& predicted, const std::string& what) {
    const auto& a = served.at("top").array();
    const auto& b = predicted.at("top").array();
    ASSERT_EQ(a.size(), b.size()) << what;
    for (std::size_t j = 0; j < a.size(); ++j) {
        EXPECT_EQ(a[j].at("class").number(), b[j].at("class").number()) << what << ", rank " << j;
        EXPECT_EQ(a[j].at("label").string(), b[j].at("label").string()) << what << ", rank " << j;
        // 1e-5, not exact: the compiled forward runs a 3x3 convolution by Winograd only where the batch
        // has enough tiles (winograd::pays), and Winograd rounds differently from oneDNN's direct kernel,
        // so an image served in a batch of 4 and predicted in one of 16 differ (1.2e-6 measured).
        EXPECT_NEAR(a[j].at("prob").number(), b[j].at("prob").number(), 1e-5) << what << ", rank " << j;
    }
}

/// Each file posted at once, from a client thread of its own, with ?topk=K; the replies in file order.
std::vector<Reply> post_at_once(int port, const std::vector<fs::path>& files, int topk) {
    std::vector<Reply> replies(files.size());
    std::vector<std::thread> clients;
    for (std::size_t i = 0; i < files.size(); ++i)
        clients.emplace_back([&, i] {
            replies[i] = post(port, read_file(files[i]), files[i].extension() == ".png" ? "image/png" : "image/jpeg",
                              "/v1/predict?topk=" + std::to_string(topk));
        });
    for (auto& c : clients) c.join();
    return replies;
}

/// Each reply answers 200 with one object, runner predict's for its file (`expected`, in file order).
void expect_predict_answers(const std::vector<Reply>& replies, const std::vector<fs::path>& files,
                            const json::Value& expected) {
    for (std::size_t i = 0; i < files.size(); ++i) {
        ASSERT_EQ(replies[i].status, 200) << files[i] << ": " << replies[i].body;
        const json::Value got = json::parse(replies[i].body, "answer");
        ASSERT_EQ(got.array().size(), 1u);
        expect_same_answer(got.array()[0], expected.array()[i], files[i].filename().string());
    }
}

TEST_F(Serve, AnswersAsPredictDoesForEachImageOfABatch) {
    // Mixed sizes and formats, sent at once: the batcher runs them together (it waits up to 300 ms
    // for more), and each request must get its own image's answer.
    std::vector<fs::path> files;
    for (int i = 0; i < 8; ++i) {
        const bool png = i % 2 == 0;
        files.push_back(dir() / ("img" + std::to_string(i) + (png ? ".png" : ".jpg")));
        write_image(files.back(), 13 + 11 * i, 40 - 3 * i, 20 * i, /*grey=*/i == 3);
    }
    const json::Value expected = predict_json(files, 4);
    Server server(model_args() + "--threads 1 --max-batch 8 --max-wait-ms 300");
    ASSERT_GT(server.port(), 0) << server.log();
    const std::vector<Reply> replies = post_at_once(server.port(), files, 4);
    ASSERT_NO_FATAL_FAILURE(expect_predict_answers(replies, files, expected));
    for (const Reply& reply : replies) EXPECT_TRUE(reply.headers.count("Server-Timing"));
    // They ran as batches: fewer forward passes than images.
    const std::string metrics = get(server.port(), "/metrics").body;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(metrics, m, std::regex("tessera_batch_size_count ([0-9]+)"))) << metrics;
    EXPECT_LT(std::stoi(m[1]), int(files.size())) << metrics;
    EXPECT_NE(metrics.find("tessera_http_requests_total{code=\"200\"} 8"), std::string::npos) << metrics;

    // A multipart form with two files answers both, in order; the model card and health answer.
    const std::string form =
        "--Zz\r\nContent-Disposition: form-data; name=\"a\"; filename=\"one.png\"\r\n"
        "Content-Type: image/png\r\n\r\n" +
        read_file(files[0]) + "\r\n--Zz\r\nContent-Disposition: form-data; name=\"b\"; filename=\"two.jpg\"\r\n\r\n" +
        read_file(files[1]) + "\r\n--Zz--\r\n";
    const Reply both = post(server.port(), form, "multipart/form-data; boundary=Zz", "/v1/predict?topk=4");
    ASSERT_EQ(both.status, 200) << both.body;
    const json::Value two = json::parse(both.body, "multipart answer");
    ASSERT_EQ(two.array().size(), 2u);
    EXPECT_EQ(two.array()[0].at("image").string(), "one.png");
    expect_same_answer(two.array()[0], expected.array()[0], "one.png");
    expect_same_answer(two.array()[1], expected.array()[1], "two.jpg");
    const json::Value card = json::parse(get(server.port(), "/v1/model").body, "/v1/model");
    EXPECT_EQ(card.at("arch").string(), "resnet20");
    EXPECT_EQ(card.at("classes").number(), 10);
    EXPECT_EQ(card.at("input").at("height").number(), 16);
    EXPECT_EQ(card.at("labels").array()[2].string(), "great white shark");
    EXPECT_EQ(card.at("mean").array().size(), 3u);
    EXPECT_EQ(get(server.port(), "/healthz").status, 200);
    const Reply page = get(server.port(), "/");
    EXPECT_EQ(page.status, 200);
    EXPECT_NE(page.body.find("<input id=\"file\" type=\"file\""), std::string::npos);
    EXPECT_EQ(page.body.find("http"), page.body.find("http-equiv"));  // nothing fetched from elsewhere
}

TEST_F(Serve, WorkersTakeTurnsAndEachAnswersAsPredictDoes) {
    // Two workers (--workers 2), each its own copy of the network on one thread: 16 images at once in
    // batches of at most 4, so that while one worker runs a batch the other forms the next. Every
    // answer must be its own image's, and both workers must have run some.
    std::vector<fs::path> files;
    for (int i = 0; i < 16; ++i) {
        files.push_back(dir() / ("w" + std::to_string(i) + (i % 2 ? ".jpg" : ".png")));
        write_image(files.back(), 20 + 3 * i, 30 - i, 15 * i);
    }
    const json::Value expected = predict_json(files, 3);
    Server server(model_args() + "--threads 2 --workers 2 --max-batch 4 --max-wait-ms 300");
    ASSERT_GT(server.port(), 0) << server.log();
    EXPECT_NE(server.log().find("2 workers, each"), std::string::npos) << server.log();
    ASSERT_NO_FATAL_FAILURE(expect_predict_answers(post_at_once(server.port(), files, 3), files, expected));
    const std::string metrics = get(server.port(), "/metrics").body;
    int total = 0;
    for (const char* worker : {"0", "1"}) {
        std::smatch m;
        ASSERT_TRUE(std::regex_search(
            metrics, m, std::regex(std::string("tessera_worker_images_total\\{worker=\"") + worker + "\"\\} ([0-9]+)")))
            << metrics;
        EXPECT_GT(std::stoi(m[1]), 0) << "worker " << worker << " ran nothing\n" << metrics;
        total += std::stoi(m[1]);
    }
    EXPECT_EQ(total, int(files.size())) << metrics;
    std::string rest;
    EXPECT_EQ(server.terminate(rest), 0) << rest;  // both workers end
}

TEST_F(Serve, RefusesBadInputWithItsStatusAndKeepsServingWithoutGrowing) {
    // Each kind of bad request, interleaved with good ones, from 8 clients: every good one answered
    // as predict answers it, every bad one with its status, and memory after 10,000 requests within
    // 10% of memory after 1,000.
    const fs::path good = dir() / "good.png", huge = dir() / "huge.png", big_body = dir() / "big.jpg";
    write_image(good, 30, 20, 7);
    write_image(huge, 3000, 2000, 1, /*grey=*/true);  // 6 Mpixel, over --max-pixels, a small file
    const std::string good_bytes = read_file(good), huge_bytes = read_file(huge);
    const std::string truncated = good_bytes.substr(0, good_bytes.size() * 2 / 3);
    const std::string oversized(300 * 1024, 'x');  // over --max-bytes
    const json::Value expected = predict_json({good}, 3).array()[0];
    Server server(model_args() + "--threads 1 --max-bytes 204800 --max-pixels 1000000 --max-wait-ms 1");
    ASSERT_GT(server.port(), 0) << server.log();
    struct Case {
        const char* what;
        int status;
        std::function<Reply(int)> send;
    };
    const std::vector<Case> cases = {
        {"good", 200, [&](int p) { return post(p, good_bytes, "image/png", "/v1/predict?topk=3"); }},
        {"body over --max-bytes", 413, [&](int p) { return post(p, oversized, "image/png"); }},
        {"image over --max-pixels", 413, [&](int p) { return post(p, huge_bytes, "image/png"); }},
        {"not an image", 415, [&](int p) { return post(p, "hello, world", "image/png"); }},
        {"truncated image", 400, [&](int p) { return post(p, truncated, "image/png"); }},
        {"wrong content type", 415, [&](int p) { return post(p, good_bytes, "text/plain"); }},
        {"bad topk", 400, [&](int p) { return post(p, good_bytes, "image/png", "/v1/predict?topk=0"); }},
        {"unknown path", 404, [&](int p) { return get(p, "/v2/nothing"); }},
        {"wrong method", 405, [&](int p) { return get(p, "/v1/predict"); }},
    };
    std::atomic<int> next{0}, wrong{0};
    std::mutex mutex;
    std::string first_wrong;
    long rss_1000 = 0;
    auto client = [&] {
        for (int i; (i = next++) < 10000;) {
            const Case& c = cases[std::size_t(i) % cases.size()];
            const Reply r = c.send(server.port());
            bool ok =
                r.status == c.status && r.body.find(c.status == 200 ? "\"top\"" : "\"error\"") != std::string::npos;
            if (ok && c.status == 200) {
                const json::Value got = json::parse(r.body, "answer").array()[0];
                ok = got.at("top").array()[0].at("class").number() ==
                         expected.at("top").array()[0].at("class").number() &&
                     std::abs(got.at("top").array()[0].at("prob").number() -
                              expected.at("top").array()[0].at("prob").number()) <= 1e-5;  // expect_same_answer's
            }
            if (!ok && wrong++ == 0) {
                std::lock_guard lock(mutex);
                first_wrong = std::string(c.what) + ": " + std::to_string(r.status) + " " + r.body;
            }
            if (i == 1000) rss_1000 = server.rss_kb();
        }
    };
    std::vector<std::thread> clients;
    for (int t = 0; t < 8; ++t) clients.emplace_back(client);
    for (auto& c : clients) c.join();
    const long rss_10000 = server.rss_kb();
    EXPECT_EQ(wrong.load(), 0) << "first: " << first_wrong;
    ASSERT_GT(rss_1000, 0);
    std::printf("resident memory after 1,000 requests: %ld kB, after 10,000: %ld kB\n", rss_1000, rss_10000);
#ifndef __SANITIZE_ADDRESS__  // AddressSanitizer holds freed memory in quarantine; LeakSanitizer checks leaks there
    EXPECT_LE(rss_10000, rss_1000 * 11 / 10)
        << "kB after 1,000 requests: " << rss_1000 << ", after 10,000: " << rss_10000;
#endif
    const std::string metrics = get(server.port(), "/metrics").body;
    for (const char* code : {"200", "400", "404", "405", "413", "415"})
        EXPECT_NE(metrics.find("tessera_http_requests_total{code=\"" + std::string(code) + "\"}"), std::string::npos)
            << code << "\n"
            << metrics;
}

TEST_F(Serve, AFullQueueAnswers503AndIdleClientsHoldNothing) {
    const fs::path good = dir() / "q.png";
    write_image(good, 20, 20, 3);
    const std::string bytes = read_file(good);
    // One image may wait, for 1.5 s: a second one meanwhile is told to come back later.
    Server server(model_args() + "--threads 1 --max-queue 1 --max-batch 2 --max-wait-ms 1500 --idle-timeout-s 1");
    ASSERT_GT(server.port(), 0) << server.log();
    Reply first;
    std::thread waiting([&] { first = post(server.port(), bytes, "image/png"); });
    std::this_thread::sleep_for(std::chrono::milliseconds(400));
    const Reply busy = post(server.port(), bytes, "image/png");
    waiting.join();
    EXPECT_EQ(first.status, 200) << first.body;
    EXPECT_EQ(busy.status, 503) << busy.body;
    EXPECT_EQ(busy.headers.at("Retry-After"), "1");

    // 200 clients connect and send nothing: a real request still gets through at once, and the
    // server closes the silent connections after the idle timeout.
    asio::io_context io;
    std::vector<std::unique_ptr<asio::ip::tcp::socket>> idle;
    for (int i = 0; i < 200; ++i) {
        idle.push_back(std::make_unique<asio::ip::tcp::socket>(io));
        idle.back()->connect({asio::ip::make_address("127.0.0.1"), std::uint16_t(server.port())});
    }
    const auto start = std::chrono::steady_clock::now();
    EXPECT_EQ(get(server.port(), "/healthz").status, 200);
    EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::milliseconds(500));
    std::this_thread::sleep_for(std::chrono::milliseconds(1800));
    int closed = 0;
    for (auto& s : idle) {
        char c;
        beast::error_code ec;
        s->non_blocking(true);
        s->read_some(asio::buffer(&c, 1), ec);
        closed += ec == asio::error::eof || ec == asio::error::connection_reset;
    }
    EXPECT_EQ(closed, 200) << "of 200 silent connections, the server closed " << closed;
}

TEST_F(Serve, SigtermFinishesTheRequestInFlightThenExitsZero) {
    const fs::path good = dir() / "t.png";
    write_image(good, 20, 20, 5);
    Server server(model_args() + "--threads 1 --max-batch 4 --max-wait-ms 1500");
    ASSERT_GT(server.port(), 0) << server.log();
    Reply answer;
    std::thread client([&] { answer = post(server.port(), read_file(good), "image/png"); });
    std::this_thread::sleep_for(std::chrono::milliseconds(400));  // the request waits in the batcher
    std::string rest;
    const int code = server.terminate(rest);
    client.join();
    EXPECT_EQ(answer.status, 200) << answer.body << "\n" << rest;
    EXPECT_EQ(code, 0) << rest;
    EXPECT_NE(rest.find("SIGTERM"), std::string::npos) << rest;
    EXPECT_EQ(get(server.port(), "/healthz").status, 0);  // no longer listening
}

TEST_F(Serve, BadOptionsAreUserErrors) {
    RunResult r = run_runner("serve --port 8080");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--checkpoint"), std::string::npos) << r.output;
    r = run_runner("serve " + model_args() + " --host not-an-address");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--host not-an-address"), std::string::npos) << r.output;
    r = run_runner("serve --checkpoint '" + (dir() / "missing.safetensors").string() + "'");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    // More workers than threads, and workers beside a GPU, are named with what to do.
    r = run_runner("serve " + model_args() + " --threads 2 --workers 3");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--workers 3"), std::string::npos) << r.output;
    EXPECT_NE(r.output.find("--workers 2"), std::string::npos) << r.output;
    r = run_runner("serve " + model_args() + " --workers 2 --device cuda");
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("--workers 2"), std::string::npos) << r.output;
    // A port already taken is named, with what to do.
    Server first(model_args() + "--threads 1");
    ASSERT_GT(first.port(), 0);
    r = run_runner("serve --checkpoint '" + checkpoint().string() + "' --port " + std::to_string(first.port()));
    EXPECT_EQ(r.exit_code, 2) << r.output;
    EXPECT_NE(r.output.find("cannot listen there"), std::string::npos) << r.output;
}

// The page in a real browser: Chromium, driven through WebDriver (chromium-driver, Selenium),
// chooses a PNG through the file input; the top-1 label it renders must be runner predict's.
TEST_F(ServePage, ClassifiesAnUploadInChromium) {
    if (run_shell("command -v chromedriver >/dev/null && /usr/bin/python3 -c 'import selenium' 2>/dev/null").exit_code)
        GTEST_SKIP() << "no chromedriver or Selenium here (apt install chromium-driver python3-selenium); "
                        "scripts/test installs them";
    const fs::path image = dir() / "upload.png";
    write_image(image, 48, 36, 11);
    const json::Value expected = predict_json({image}, 5).array()[0];
    Server server(model_args() + "--threads 1");
    ASSERT_GT(server.port(), 0) << server.log();
    const fs::path shot = fs::path(std::getenv("TESSERA_SERVE_SCREENSHOT") ? std::getenv("TESSERA_SERVE_SCREENSHOT")
                                                                           : (dir() / "page.png").string());
    const RunResult r = run_shell("/usr/bin/python3 '" + (source_root() / "tests" / "serve_page.py").string() +
                                  "' http://127.0.0.1:" + std::to_string(server.port()) + "/ '" + image.string() +
                                  "' '" + shot.string() + "' 2>&1");
    ASSERT_EQ(r.exit_code, 0) << r.output;
    const json::Value page = json::parse(r.output.substr(r.output.rfind("{")), "serve_page.py");
    EXPECT_EQ(page.at("top1").string(), expected.at("top").array()[0].at("label").string()) << r.output;
    EXPECT_EQ(page.at("bars").number(), 5) << r.output;
    EXPECT_NE(page.at("model").string().find("resnet20, 10 classes"), std::string::npos) << r.output;
    EXPECT_NE(page.at("timing").string().find("Predicted in"), std::string::npos) << r.output;
    EXPECT_TRUE(fs::exists(shot) && fs::file_size(shot) > 1000);

    // A file the server refuses is said so on the page.
    std::ofstream(dir() / "not-an-image.png") << "hello";
    const RunResult bad = run_shell("/usr/bin/python3 '" + (source_root() / "tests" / "serve_page.py").string() +
                                    "' http://127.0.0.1:" + std::to_string(server.port()) + "/ '" +
                                    (dir() / "not-an-image.png").string() + "' '' 2>&1");
    ASSERT_EQ(bad.exit_code, 0) << bad.output;
    const json::Value refused = json::parse(bad.output.substr(bad.output.rfind("{")), "serve_page.py");
    EXPECT_NE(refused.at("error").string().find("refused not-an-image.png"), std::string::npos) << bad.output;
}

}  // namespace
}  // namespace tessera::test
