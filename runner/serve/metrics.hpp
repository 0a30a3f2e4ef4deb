#pragma once
// The server's counters in Prometheus's text exposition format (version 0.0.4): requests by status
// code, a latency histogram, the batch-size and forward-pass histograms, images served (in all and by
// each worker) and their rate over the last ten seconds, and the requests waiting. Thread-safe: the
// I/O threads and the batcher's workers record.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace tessera::serve {

/// A cumulative histogram over fixed upper bounds, as Prometheus's `le` buckets (+Inf implied).
class Histogram {
public:
    explicit Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1) {}
    void add(double v) {
        std::size_t i = 0;
        while (i < bounds_.size() && v > bounds_[i]) ++i;
        ++counts_[i];
        sum_ += v;
        ++count_;
    }
    double mean() const { return count_ ? sum_ / double(count_) : 0; }
    std::string text(const std::string& name) const {
        std::string out;
        unsigned long long cumulative = 0;
        for (std::size_t i = 0; i <= bounds_.size(); ++i) {
            cumulative += counts_[i];
            char line[160];
            if (i < bounds_.size())
                std::snprintf(line, sizeof line, "%s_bucket{le=\"%g\"} %llu\n", name.c_str(), bounds_[i], cumulative);
            else
                std::snprintf(line, sizeof line, "%s_bucket{le=\"+Inf\"} %llu\n", name.c_str(), cumulative);
            out += line;
        }
        char tail[160];
        std::snprintf(tail, sizeof tail, "%s_sum %.9g\n%s_count %llu\n", name.c_str(), sum_, name.c_str(), count_);
        return out + tail;
    }

private:
    std::vector<double> bounds_;
    std::vector<unsigned long long> counts_;
    double sum_ = 0;
    unsigned long long count_ = 0;
};

class Metrics {
public:
    using Clock = std::chrono::steady_clock;

    explicit Metrics(int workers) : worker_images_(std::size_t(workers)) {}

    void request(int status, double seconds) {
        std::lock_guard lock(mutex_);
        ++requests_[status];
        latency_.add(seconds);
    }
    /// A forward pass of `images` that took `seconds` (the network alone, without decoding) on the
    /// batcher's worker number `worker`.
    void batch(int images, double seconds, int worker) {
        std::lock_guard lock(mutex_);
        batch_size_.add(images);
        forward_.add(seconds);
        images_ += unsigned(images);
        worker_images_.at(std::size_t(worker)) += unsigned(images);
        const auto now = Clock::now();
        recent_.push_back({now, images});
        while (!recent_.empty() && now - recent_.front().first > window) recent_.pop_front();
    }
    void queue_depth(int depth) {
        std::lock_guard lock(mutex_);
        queue_depth_ = depth;
    }
    double mean_batch() {
        std::lock_guard lock(mutex_);
        return batch_size_.mean();
    }

    std::string text() {
        std::lock_guard lock(mutex_);
        std::string out =
            "# HELP tessera_http_requests_total HTTP requests answered, by status code.\n"
            "# TYPE tessera_http_requests_total counter\n";
        for (auto& [code, n] : requests_)
            out += "tessera_http_requests_total{code=\"" + std::to_string(code) + "\"} " + std::to_string(n) + "\n";
        out +=
            "# HELP tessera_request_duration_seconds Time from a request's last byte to its answer.\n"
            "# TYPE tessera_request_duration_seconds histogram\n" +
            latency_.text("tessera_request_duration_seconds");
        out +=
            "# HELP tessera_batch_size Images per forward pass of the network.\n"
            "# TYPE tessera_batch_size histogram\n" +
            batch_size_.text("tessera_batch_size");
        out +=
            "# HELP tessera_forward_duration_seconds Time of one forward pass of the network, a whole batch.\n"
            "# TYPE tessera_forward_duration_seconds histogram\n" +
            forward_.text("tessera_forward_duration_seconds");
        const auto now = Clock::now();
        while (!recent_.empty() && now - recent_.front().first > window) recent_.pop_front();
        long long recent_images = 0;
        for (auto& r : recent_) recent_images += r.second;
        const double span = std::min(std::chrono::duration<double>(window).count(),
                                     std::chrono::duration<double>(now - started_).count());
        char rate[64];
        std::snprintf(rate, sizeof rate, "%.3f", span > 0 ? double(recent_images) / span : 0.0);
        out +=
            "# HELP tessera_images_total Images classified.\n# TYPE tessera_images_total counter\n"
            "tessera_images_total " +
            std::to_string(images_) + "\n";
        out +=
            "# HELP tessera_worker_images_total Images classified by each of the batcher's workers (--workers).\n"
            "# TYPE tessera_worker_images_total counter\n";
        for (std::size_t w = 0; w < worker_images_.size(); ++w)
            out += "tessera_worker_images_total{worker=\"" + std::to_string(w) + "\"} " +
                   std::to_string(worker_images_[w]) + "\n";
        out +=
            "# HELP tessera_images_per_second Images classified per second over the last 10 s.\n"
            "# TYPE tessera_images_per_second gauge\ntessera_images_per_second " +
            std::string(rate) + "\n";
        out +=
            "# HELP tessera_queue_depth Requests accepted and not yet answered.\n"
            "# TYPE tessera_queue_depth gauge\ntessera_queue_depth " +
            std::to_string(queue_depth_) + "\n";
        return out;
    }

private:
    static constexpr std::chrono::seconds window{10};
    std::mutex mutex_;
    std::map<int, unsigned long long> requests_;
    Histogram latency_{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};
    Histogram batch_size_{{1, 2, 4, 8, 16, 32, 64, 128, 256}};
    Histogram forward_{{0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}};
    unsigned long long images_ = 0;
    std::vector<unsigned long long> worker_images_;  // by worker
    std::deque<std::pair<Clock::time_point, int>> recent_;
    int queue_depth_ = 0;
    const Clock::time_point started_ = Clock::now();
};

}  // namespace tessera::serve
