// runner: train from a recipe, inspect a network, list plugins, time a training step.
#include <cstdio>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "runner.hpp"
#include "tessera/backend/cpu/select_cpu_kernels.hpp"
#include "tessera/core/error.hpp"

namespace {

constexpr const char* usage =
    R"(usage: runner RECIPE [--set section.key=value]... [--threads T]     (mpirun -np N runner …: N ranks)
       runner train RECIPE [--set …]... [--threads T] [--fresh | --resume PATH] [--stop-after-steps N]
       runner eval RECIPE --checkpoint PATH|INT8.onnx [--set …] [--threads T] [--json]
       runner predict --checkpoint PATH [--arch A] [--labels FILE|imagenet] [--topk 5] [--image-size 224]
                      [--resize 256] [--device cpu|cuda] [--precision fp32|bf16] [--json] IMAGE...
       runner serve --checkpoint PATH [--host 127.0.0.1] [--port 8080] [--device cpu|cuda] [--labels FILE|imagenet]
                    [--max-batch 32] [--max-wait-ms 0] [--max-queue 256] [--max-bytes 20971520]
                    [--max-pixels 40000000] [--idle-timeout-s 10] [--threads T] [--workers 1]
                    [--io-threads 1] [--precision fp32|bf16]
       runner export --checkpoint PATH --onnx OUT.onnx [--opset 17] [--batch 1 | --dynamic-batch] [--fold-bn]
                     [--with-preprocessing] [--nhwc] [--image-size S] [--arch A] [--labels FILE|imagenet]
       runner quantize --checkpoint PATH --recipe RECIPE --out OUT.onnx [--calibration 512]
                       [--split train|val] [--method minmax|percentile] [--percentile 99.99] [--opset 17]
                       [--batch 1 | --dynamic-batch] [--set …]
       runner lr-find RECIPE [--start 1e-7] [--end 10] [--iters 100] [--set …] [--json]
       runner parity RECIPE [--steps 50] [--every 10] [--check-steps 50] [--loss-tol 1e-4] [--weight-tol 1e-3]
                     [--mean-tol 0.02] [--eval] [--no-fp64] [--out DIR] [--keep] [--threads T] [--set …] [--json]
       runner info ARCH [--num-classes N] [--image-size S] [--in-channels C]
       runner plugins
       runner bench --arch A --batch B --image-size S [--device cpu|cuda] [--precision fp32|tf32|bf16|fp16]
                    [--inference [--layers]] [--threads T] [--steps K] [--warmup W] [--json]
       runner bench --data RECIPE [--threads T] [--batches K] [--warmup W] [--set …] [--json]
       mpirun -np N runner bench --allreduce [--device cpu|cuda] [--floats F] [--steps K] [--json]
       runner prepare SRC DEST [--max-side 512] [--quality 90] [--shard-size MiB] [--threads T]
       runner prepare-val VAL_DIR LABELS [--synsets FILE] [--dry-run]

Recipes: see recipes/quickstart.toml and the README. Exit codes: 0 done, 2 a mistake in what was
given (the message says what to change), 1 an internal error, 3 runner parity's two sides parted.
)";

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    tessera::cpu::select_cpu_kernels(argv);
    if (args.empty() || args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
        std::fputs(usage, args.empty() ? stderr : stdout);
        return args.empty() ? 2 : 0;
    }
    const std::string verb = args[0];
    const std::vector<std::string> rest(args.begin() + 1, args.end());
    try {
        if (verb == "train") return tessera::runner::train(rest);
        if (verb == "info") return tessera::runner::info(rest);
        if (verb == "plugins") return tessera::runner::plugins(rest);
        if (verb == "bench") return tessera::runner::bench(rest);
        if (verb == "prepare") return tessera::runner::prepare(rest);
        if (verb == "eval") return tessera::runner::eval(rest);
        if (verb == "predict") return tessera::runner::predict(rest);
        if (verb == "serve") return tessera::runner::serve(rest);
        if (verb == "export") return tessera::runner::export_onnx(rest);
        if (verb == "quantize") return tessera::runner::quantize(rest);
        if (verb == "lr-find") return tessera::runner::lr_find(rest);
        if (verb == "parity") return tessera::runner::parity(rest);
        if (verb == "prepare-val") return tessera::runner::prepare_val(rest);
        if (verb.size() > 5 && verb.substr(verb.size() - 5) == ".toml") return tessera::runner::train(args);
        std::fprintf(stderr, "error: unknown command '%s'\n\n%s", verb.c_str(), usage);
        return 2;
    } catch (const tessera::Error& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "\nerror: %s\n", e.what());
        tessera::runner::abort_world(e.is_user_error() ? 2 : 1);
        return e.is_user_error() ? 2 : 1;
    } catch (const std::bad_alloc&) {
        std::fflush(stdout);
        std::fprintf(stderr, "\nerror: out of memory\n  hint: use a smaller batch_size or image size\n");
        tessera::runner::abort_world(2);
        return 2;
    } catch (const std::exception& e) {
        std::fflush(stdout);
        std::fprintf(stderr, "\nerror (internal): %s\n", e.what());
        tessera::runner::abort_world(1);
        return 1;
    }
}
