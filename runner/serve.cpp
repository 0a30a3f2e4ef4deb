// runner serve --checkpoint PATH: a web page and an HTTP API that classify images with a trained
// model (serve/server.hpp says the routes). The network, its preprocessing and its answers are
// runner predict's (classifier.hpp); requests that arrive together run as one batch, on one of
// --workers copies of the network that split --threads between them.
#include <cstdio>
#include <memory>
#include <vector>

#include "classifier.hpp"
#include "runner.hpp"
#include "serve/server.hpp"

namespace tessera::runner {

int serve(const std::vector<std::string>& raw) {
    Args args(raw, {},
              {"checkpoint", "arch", "labels", "image-size", "resize", "host", "port", "device", "threads", "max-batch",
               "max-wait-ms", "max-queue", "max-bytes", "max-pixels", "idle-timeout-s", "io-threads", "precision",
               "workers"});
    if (!args.value("checkpoint") || !args.positional().empty())
        throw user_error("runner serve", "expected --checkpoint PATH (and no other arguments)",
                         "e.g. runner serve --checkpoint runs/quickstart/best.safetensors --port 8080");
    const ModelCard card = read_model_card(args);
    serve::Options o;
    o.host = args.value("host").value_or(o.host);
    o.port = args.integer("port", o.port, 0);
    if (o.port > 65535) throw user_error("--port", "must be a port number from 0 to 65535");
    o.max_batch = args.integer("max-batch", o.max_batch);
    o.max_wait = std::chrono::milliseconds(
        args.integer("max-wait-ms", int(std::chrono::duration_cast<std::chrono::milliseconds>(o.max_wait).count()), 0));
    o.max_queue = args.integer("max-queue", o.max_queue);
    o.max_bytes = std::size_t(args.integer("max-bytes", int(o.max_bytes)));
    o.max_pixels = args.integer("max-pixels", int(o.max_pixels));
    o.idle_timeout = std::chrono::seconds(args.integer("idle-timeout-s", int(o.idle_timeout.count())));
    o.io_threads = args.integer("io-threads", o.io_threads);
    const int threads = args.value("threads") ? thread_count(args) : ThreadPool::default_threads();
    o.decode_threads = threads;
    const std::string device = args.value("device").value_or("cpu");
    const int workers = args.integer("workers", 1);
    if (workers > 1 && device != "cpu")
        throw user_error("--workers " + std::to_string(workers), "runs copies of the network on the CPU's cores",
                         "leave it out with --device " + device + " (the device runs one network at a time)");
    if (workers > threads)
        throw user_error("--workers " + std::to_string(workers),
                         "is more than --threads " + std::to_string(threads) + ": each worker needs a thread",
                         "give at most one worker per thread, e.g. --workers " + std::to_string(threads));
    // The threads split as evenly as they go: worker i gets one more while i < threads % workers.
    const std::string precision = args.value("precision").value_or("fp32");
    std::vector<std::unique_ptr<Classifier>> networks;
    for (int i = 0; i < workers; ++i)
        networks.push_back(
            Classifier::open(card, device, threads / workers + (i < threads % workers ? 1 : 0), precision));
    return serve::serve_forever(card, networks, o);
}

}  // namespace tessera::runner
