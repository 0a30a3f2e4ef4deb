// runner serve's connections (Session), its acceptor (Listener) and what a request becomes
// (Service): a predict request is read whole, its images are decoded on the decoder threads, run
// through the network by the batcher, and answered on the connection's strand.
#include "server.hpp"

#include <atomic>
#include <csignal>
#include <sched.h>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>  // std::exchange, which Boost 1.74's asio/awaitable.hpp uses without including it
#include <vector>

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "batcher.hpp"
#include "metrics.hpp"
#include "page.hpp"
#include "request.hpp"
#include "tessera/core/error.hpp"
#include "tessera/core/json.hpp"

namespace tessera::serve {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;
using Request = http::request<http::string_body>;
using Response = http::response<http::string_body>;
using Clock = std::chrono::steady_clock;

namespace {

/// Beast's string_view (Boost's, in 1.74) as the standard's.
std::string_view view(beast::string_view s) { return {s.data(), s.size()}; }

Response respond(unsigned version, bool keep_alive, int status, std::string body, const char* type) {
    Response r{http::int_to_status(unsigned(status)), version};
    r.set(http::field::server, "tessera");
    r.set(http::field::content_type, type);
    r.keep_alive(keep_alive);
    r.body() = std::move(body);
    r.prepare_payload();
    return r;
}

Response error_response(unsigned version, bool keep_alive, int status, const std::string& why) {
    Response r = respond(version, keep_alive, status,
                         "{\"error\": " + json::quote(why) + ", \"status\": " + std::to_string(status) + "}\n",
                         "application/json");
    if (status == 503) r.set(http::field::retry_after, "1");
    return r;
}

/// Puts the calling thread in Linux's SCHED_BATCH class: it no longer preempts a running thread
/// when it wakes, and runs when a core comes free or at the scheduler's next tick. The connections'
/// and the decoders' threads take it, so that a request's arrival does not take a core from the
/// network's OpenMP threads in the middle of a layer (its partner would spin at the next barrier
/// until it came back). Measured in one call, alternated, on the quick start's model under 64
/// connections (wrk, 10 s each): 2518, 2155 and 2288 requests/s against 2123, 2023 and 1803 without,
/// and the threads' CPU time per request 778, 901 and 853 us against 912, 950 and 1088; at 1 and 8
/// connections the latency stayed the same (p50 0.67 against 0.68-0.75 ms, 3.2-3.8 against 3.4-3.9
/// ms). Nothing changes where the class is not there.
void yield_to_the_network() {
#ifdef SCHED_BATCH
    const sched_param normal{};
    sched_setscheduler(0, SCHED_BATCH, &normal);
#endif
}

/// What each request becomes. Thread-safe: called from every I/O thread.
class Service {
public:
    using Reply = std::function<void(Response)>;

    Service(asio::io_context& io, const runner::ModelCard& card,
            std::span<const std::unique_ptr<runner::Classifier>> workers, const Options& options)
        : io_(io), card_(card), options_(options), metrics_(int(workers.size())),
          decoders_(std::size_t(options.decode_threads)),
          batcher_(workers, card, options.max_batch, options.max_wait, metrics_), model_json_(card.json() + "\n") {}

    ~Service() {
        decoders_.join();
        batcher_.stop();
    }

    Metrics& metrics() { return metrics_; }

    /// Answers `req` through `reply`, once; `reply` may be called on any thread.
    void handle(std::shared_ptr<Request> req, Reply reply) {
        const auto start = Clock::now();
        const unsigned version = req->version();
        const bool keep_alive = req->keep_alive();
        auto answer = [this, start, reply = std::move(reply)](Response r) {
            metrics_.request(int(r.result_int()), std::chrono::duration<double>(Clock::now() - start).count());
            reply(std::move(r));
        };
        const std::string path(target_path(view(req->target())));
        const bool get = req->method() == http::verb::get || req->method() == http::verb::head;
        auto only = [&](const char* allowed) {
            Response r = error_response(version, keep_alive, 405, "use " + std::string(allowed) + " " + path);
            r.set(http::field::allow, allowed);
            answer(std::move(r));
        };
        if (path == "/" || path == "/index.html") {
            if (!get) return only("GET");
            return answer(respond(version, keep_alive, 200, page_html(), "text/html; charset=utf-8"));
        }
        if (path == "/v1/model") {
            if (!get) return only("GET");
            return answer(respond(version, keep_alive, 200, model_json_, "application/json"));
        }
        if (path == "/healthz") {
            if (!get) return only("GET");
            return answer(respond(version, keep_alive, 200, "{\"status\": \"ok\"}\n", "application/json"));
        }
        if (path == "/metrics") {
            if (!get) return only("GET");
            metrics_.queue_depth(waiting_.load());
            return answer(respond(version, keep_alive, 200, metrics_.text(), "text/plain; version=0.0.4"));
        }
        if (path != "/v1/predict")
            return answer(error_response(version, keep_alive, 404,
                                         "no such path: " + path +
                                             " (see GET / for the page, POST /v1/predict, "
                                             "GET /v1/model, /healthz and /metrics)"));
        if (req->method() != http::verb::post) return only("POST");
        predict(std::move(req), std::move(answer));
    }

private:
    /// One request's images on their way through the decoders and the batcher.
    struct Pending {
        explicit Pending(asio::io_context& io) : work(asio::make_work_guard(io)) {}
        std::shared_ptr<Request> req;
        std::vector<Upload> uploads;
        int topk = 5;
        std::function<void(Response)> answer;
        std::vector<std::string> results;
        Clock::time_point start = Clock::now();
        std::atomic<int> remaining{0};
        std::mutex mutex;
        int status = 200;
        std::string error;
        asio::executor_work_guard<asio::io_context::executor_type> work;  // keeps run() until answered
    };

    void predict(std::shared_ptr<Request> req, std::function<void(Response)> answer) {
        const unsigned version = req->version();
        const bool keep_alive = req->keep_alive();
        std::vector<Upload> uploads;
        int topk = 0;
        try {
            topk = read_topk(view(req->target()), card_.classes);
            uploads = read_uploads(view((*req)[http::field::content_type]), req->body());
        } catch (const HttpError& e) {
            return answer(error_response(version, keep_alive, e.status, e.what()));
        }
        const int n = int(uploads.size());
        if (waiting_.fetch_add(n) + n > options_.max_queue) {
            waiting_ -= n;
            return answer(error_response(version, keep_alive, 503,
                                         "the server is busy: more than " + std::to_string(options_.max_queue) +
                                             " images are waiting (--max-queue); try again"));
        }
        auto p = std::make_shared<Pending>(io_);
        p->req = std::move(req);
        p->uploads = std::move(uploads);
        p->topk = topk;
        p->answer = std::move(answer);
        p->results.resize(std::size_t(n));
        p->remaining = n;
        for (int i = 0; i < n; ++i) asio::post(decoders_, [this, p, i] { decode(p, i); });
    }

    /// Runs on a decoder thread: the image's pixels to the batcher, or the reason it has none.
    void decode(const std::shared_ptr<Pending>& p, int i) {
        thread_local std::optional<runner::Preprocessor> preprocess;
        if (!preprocess) {
            yield_to_the_network();
            preprocess.emplace(card_);
        }
        const Upload& upload = p->uploads[std::size_t(i)];
        const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(upload.bytes.data()),
                                                  upload.bytes.size());
        Batcher::Job job;
        try {
            data::ImageHeader h;
            try {
                h = preprocess->header(bytes);
            } catch (const data::ImageTooLarge& e) {
                return finish(p, i, 413, "\"" + upload.name + "\": " + e.what());
            } catch (const data::DecodeError& e) {
                return finish(p, i, 415, "\"" + upload.name + "\" is not an image tessera can read: " + e.what());
            }
            if (std::int64_t(h.width) * h.height > options_.max_pixels)
                return finish(p, i, 413,
                              "\"" + upload.name + "\" is " + std::to_string(h.width) + "x" + std::to_string(h.height) +
                                  ", more than the " + std::to_string(options_.max_pixels) +
                                  " pixels this server decodes (--max-pixels)");
            job.pixels.resize(card_.input_bytes());
            (*preprocess)(bytes, job.pixels.data());
        } catch (const data::DecodeError& e) {
            return finish(p, i, 400, "\"" + upload.name + "\" is damaged: " + e.what());
        }
        job.done = [this, p, i](std::span<const double> probs) {
            p->results[std::size_t(i)] =
                runner::prediction_json(card_, p->uploads[std::size_t(i)].name, probs, p->topk);
            finish(p, i, 200, {});
        };
        job.failed = [this, p, i](const std::string& why) { finish(p, i, 500, "the network failed: " + why); };
        batcher_.submit(std::move(job));
    }

    /// Image i is done (status 200) or failed; the last one answers the request.
    void finish(const std::shared_ptr<Pending>& p, int, int status, const std::string& why) {
        --waiting_;
        if (status != 200) {
            std::lock_guard lock(p->mutex);
            if (p->status == 200) {
                p->status = status;
                p->error = why;
            }
        }
        if (--p->remaining > 0) return;
        const unsigned version = p->req->version();
        const bool keep_alive = p->req->keep_alive();
        if (p->status != 200) return p->answer(error_response(version, keep_alive, p->status, p->error));
        std::string body = "[";
        for (std::size_t j = 0; j < p->results.size(); ++j) body += (j ? ", " : "") + p->results[j];
        Response r = respond(version, keep_alive, 200, body + "]\n", "application/json");
        char timing[64];  // decoding, waiting for the batch and the network, as the page shows it
        std::snprintf(timing, sizeof timing, "predict;dur=%.3f",
                      std::chrono::duration<double, std::milli>(Clock::now() - p->start).count());
        r.set("Server-Timing", timing);
        p->answer(std::move(r));
    }

    asio::io_context& io_;
    const runner::ModelCard& card_;
    const Options& options_;
    Metrics metrics_;
    asio::thread_pool decoders_;
    Batcher batcher_;
    std::atomic<int> waiting_{0};
    const std::string model_json_;
};

class Listener;

/// One connection: read a request (headers, then the body, each within the idle timeout), answer
/// it, and read the next while the client keeps the connection alive.
class Session : public std::enable_shared_from_this<Session> {
public:
    Session(tcp::socket&& socket, Service& service, const Options& options, std::atomic<bool>& stopping)
        : stream_(std::move(socket)), service_(service), options_(options), stopping_(stopping) {}

    void start() {
        asio::dispatch(stream_.get_executor(), beast::bind_front_handler(&Session::read_header, shared_from_this()));
    }

    /// On shutdown: a connection waiting for its next request is closed; one with a request in
    /// flight answers it first (with Connection: close).
    void stop() {
        asio::dispatch(stream_.get_executor(), [self = shared_from_this()] {
            if (self->idle_) self->close();
        });
    }

private:
    void read_header() {
        if (stopping_) return close();
        idle_ = true;
        parser_.emplace();
        parser_->body_limit(options_.max_bytes);
        parser_->header_limit(16 * 1024);
        stream_.expires_after(options_.idle_timeout);
        http::async_read_header(stream_, buffer_, *parser_,
                                beast::bind_front_handler(&Session::on_header, shared_from_this()));
    }

    void on_header(beast::error_code ec, std::size_t) {
        idle_ = false;
        if (ec) return refuse(ec);
        if (parser_->content_length() && *parser_->content_length() > options_.max_bytes)
            return reject(413, "the body is " + std::to_string(*parser_->content_length()) + " bytes, more than the " +
                                   std::to_string(options_.max_bytes) + " this server takes (--max-bytes)");
        if (beast::iequals(parser_->get()[http::field::expect], "100-continue")) {
            auto go =
                std::make_shared<http::response<http::empty_body>>(http::status::continue_, parser_->get().version());
            return http::async_write(stream_, *go, [self = shared_from_this(), go](beast::error_code e, std::size_t) {
                if (e) return self->close();
                self->read_body();
            });
        }
        read_body();
    }

    void read_body() {
        stream_.expires_after(options_.idle_timeout);
        http::async_read(stream_, buffer_, *parser_, beast::bind_front_handler(&Session::on_body, shared_from_this()));
    }

    void on_body(beast::error_code ec, std::size_t) {
        if (ec) return refuse(ec);
        stream_.expires_never();  // the network's time is not the client's
        auto req = std::make_shared<Request>(parser_->release());
        service_.handle(std::move(req), [self = shared_from_this()](Response r) {
            asio::post(self->stream_.get_executor(),
                       [self, r = std::make_shared<Response>(std::move(r))]() mutable { self->send(std::move(*r)); });
        });
    }

    /// A read that failed: closed, timed out or malformed. A malformed request gets its 4xx.
    void refuse(beast::error_code ec) {
        if (ec == http::error::end_of_stream || ec == beast::error::timeout || ec == asio::error::operation_aborted ||
            ec == asio::error::connection_reset || ec == asio::error::eof)
            return close();
        if (ec == http::error::body_limit)
            return reject(413, "the body is larger than the " + std::to_string(options_.max_bytes) +
                                   " bytes this server takes (--max-bytes)");
        if (ec == http::error::header_limit) return reject(431, "the request's headers are larger than 16 KiB");
        reject(400, "a malformed HTTP request: " + ec.message());
    }

    /// A request refused before it was read whole: answered, counted, and the connection closed
    /// (what is left of the body is not read).
    void reject(int status, const std::string& why) {
        const unsigned version = parser_ && parser_->is_header_done() ? parser_->get().version() : 11;
        service_.metrics().request(status, 0);
        send(error_response(version, false, status, why));
    }

    void send(Response r) {
        if (stopping_) r.keep_alive(false);
        response_ = std::make_shared<Response>(std::move(r));
        stream_.expires_after(options_.idle_timeout);
        http::async_write(stream_, *response_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
            const bool again = !ec && self->response_->keep_alive();
            self->response_.reset();
            if (again) return self->read_header();
            self->close();
        });
    }

    void close() {
        beast::error_code ignored;
        stream_.socket().shutdown(tcp::socket::shutdown_both, ignored);
        stream_.close();
    }

    beast::tcp_stream stream_;
    beast::flat_buffer buffer_;
    Service& service_;
    const Options& options_;
    std::atomic<bool>& stopping_;
    std::optional<http::request_parser<http::string_body>> parser_;
    std::shared_ptr<Response> response_;
    bool idle_ = false;  // waiting for the next request's headers (read on the strand only)
};

/// Accepts connections, each on a strand of its own, and keeps track of them for shutdown.
class Listener : public std::enable_shared_from_this<Listener> {
public:
    Listener(asio::io_context& io, const tcp::endpoint& at, Service& service, const Options& options)
        : io_(io), acceptor_(asio::make_strand(io)), service_(service), options_(options) {
        beast::error_code ec;
        acceptor_.open(at.protocol(), ec);
        if (!ec) acceptor_.set_option(asio::socket_base::reuse_address(true), ec);
        if (!ec) acceptor_.bind(at, ec);
        if (!ec) acceptor_.listen(asio::socket_base::max_listen_connections, ec);
        if (ec)
            throw user_error("--host " + at.address().to_string() + " --port " + std::to_string(at.port()),
                             "cannot listen there: " + ec.message(),
                             "choose another --port (0: any free one), or stop what listens there");
    }

    int port() const { return acceptor_.local_endpoint().port(); }

    void start() { accept(); }

    void stop() {
        stopping_ = true;
        asio::dispatch(acceptor_.get_executor(), [self = shared_from_this()] {
            beast::error_code ignored;
            self->acceptor_.close(ignored);
        });
        std::lock_guard lock(mutex_);
        for (auto& weak : sessions_)
            if (auto s = weak.lock()) s->stop();
    }

private:
    void accept() {
        acceptor_.async_accept(asio::make_strand(io_),
                               beast::bind_front_handler(&Listener::on_accept, shared_from_this()));
    }

    void on_accept(beast::error_code ec, tcp::socket socket) {
        if (!acceptor_.is_open()) return;
        if (!ec) {
            auto session = std::make_shared<Session>(std::move(socket), service_, options_, stopping_);
            {
                std::lock_guard lock(mutex_);
                std::erase_if(sessions_, [](const std::weak_ptr<Session>& w) { return w.expired(); });
                sessions_.push_back(session);
            }
            session->start();
        }
        accept();
    }

    asio::io_context& io_;
    tcp::acceptor acceptor_;
    Service& service_;
    const Options& options_;
    std::atomic<bool> stopping_{false};
    std::mutex mutex_;
    std::vector<std::weak_ptr<Session>> sessions_;
};

}  // namespace

int serve_forever(const runner::ModelCard& card, std::span<const std::unique_ptr<runner::Classifier>> workers,
                  const Options& options) {
    // One thread runs the connections by default: they only parse and write (the decoders decode),
    // and one thread needs no locks between handlers. Measured under 64 connections on the quick
    // start's model (wrk as in bench/serve_load.sh, CPU time per thread from /proc), the connections
    // and the decoders took 8.1% of the process's CPU time with one thread (two runs: 154 and 162 of
    // 1951 and 1943 ticks), 10.3% with two (200 and 198 of 1935 and 1935), which pass the strands'
    // handlers through the scheduler's lock and wake each other.
    asio::io_context io(options.io_threads);
    beast::error_code ec;
    const auto address = asio::ip::make_address(options.host, ec);
    if (ec)
        throw user_error("--host " + options.host, "is not an IP address",
                         "give one, e.g. --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every interface)");
    Service service(io, card, workers, options);
    auto listener =
        std::make_shared<Listener>(io, tcp::endpoint(address, std::uint16_t(options.port)), service, options);
    listener->start();
    asio::signal_set signals(io, SIGINT, SIGTERM);
    signals.async_wait([&](beast::error_code e, int signal) {
        if (e) return;
        std::printf("serve: %s: no new connections; answering the requests in flight\n",
                    signal == SIGINT ? "SIGINT" : "SIGTERM");
        std::fflush(stdout);
        listener->stop();
    });
    const std::string with = workers.size() == 1
                                 ? workers[0]->device()
                                 : std::to_string(workers.size()) + " workers, each " + workers[0]->device();
    std::printf(
        "serving %s (%d classes, %dx%d) on http://%s:%d/ with %s; batches of up to %d, waiting at most %.1f ms\n",
        card.arch.c_str(), card.classes, card.crop, card.crop, options.host.c_str(), listener->port(), with.c_str(),
        options.max_batch, double(options.max_wait.count()) / 1000);
    std::fflush(stdout);
    std::vector<std::thread> threads;
    for (int i = 1; i < options.io_threads; ++i)
        threads.emplace_back([&] {
            yield_to_the_network();
            io.run();
        });
    yield_to_the_network();
    io.run();
    for (auto& t : threads) t.join();
    std::printf("serve: stopped\n");
    return 0;
}

}  // namespace tessera::serve
