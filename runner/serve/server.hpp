#pragma once
// runner serve's HTTP server: Boost.Beast over Asio, asynchronous, so that a connection that sends
// nothing holds a timer and a socket, never a thread. The routes:
//   GET  /            the page (page.hpp): choose or drop an image, see the top-5 as bars
//   POST /v1/predict  the image as the body (image/jpeg, image/png, …) or multipart file fields;
//                     answers runner predict --json's array, one object per image (?topk=K)
//   GET  /v1/model    the model card: architecture, classes, input size, normalisation
//   GET  /healthz     {"status": "ok"}
//   GET  /metrics     Prometheus's text format (metrics.hpp)
#include <chrono>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include "../classifier.hpp"

namespace tessera::serve {

struct Options {
    std::string host = "127.0.0.1";
    int port = 8080;                        // 0: any free port (the first line says which)
    std::size_t max_bytes = 20u << 20;      // a larger body: 413
    std::int64_t max_pixels = 40'000'000;   // an image whose header claims more: 413
    int max_queue = 256;                    // more images accepted and not yet answered: 503
    int max_batch = 32;                     // images per forward pass, at most
    std::chrono::microseconds max_wait{0};  // the longest the first image of a batch waits for more (0: none)
    std::chrono::seconds idle_timeout{10};  // a request's headers and body must arrive within it
    int decode_threads = 2;                 // images decoded in parallel
    int io_threads = 1;                     // threads running the connections (see serve_forever)
};

/// Serves the model with one batcher worker per classifier in `workers` (each its own copy of the
/// network) until SIGTERM or SIGINT: then it stops accepting, answers the requests in flight, closes
/// idle connections and returns 0.
int serve_forever(const runner::ModelCard& card, std::span<const std::unique_ptr<runner::Classifier>> workers,
                  const Options& options);

}  // namespace tessera::serve
