#pragma once
// runner's verbs, one file each, and the argument reader they share.
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <type_traits>

#include "tessera/backend/cpu/backend.hpp"
#ifdef TESSERA_WITH_CUDA
#include "cuda_networks.hpp"  // make_cuda_network, built once in cuda_networks.cu
#endif
#include "tessera/core/error.hpp"
#include "tessera/parallel/communicator.hpp"
#include "tessera/models/network.hpp"

namespace tessera::runner {

/// Command-line arguments: positionals, --flags and --key value (or --key=value).
class Args {
public:
    Args(std::vector<std::string> args, const std::vector<std::string>& flags, const std::vector<std::string>& valued,
         const std::vector<std::string>& repeated = {});
    const std::vector<std::string>& positional() const { return positional_; }
    bool flag(const std::string& name) const { return flags_.count(name) > 0; }
    std::optional<std::string> value(const std::string& name) const;
    std::vector<std::string> values(const std::string& name) const;
    int integer(const std::string& name, int fallback, int min = 1) const;

private:
    std::vector<std::string> positional_;
    std::map<std::string, int> flags_;
    std::map<std::string, std::vector<std::string>> values_;
};

/// Built once, in networks.cpp: every architecture, bound to the CPU backend.
std::unique_ptr<models::Network<cpu::Backend>> make_cpu_network(const std::string& arch, int num_classes,
                                                                int in_channels);

/// The network for `device` ("cpu" or "cuda"), or a user error saying what this build offers.
template <class B>
std::unique_ptr<models::Network<B>> make_network(const std::string& arch, int num_classes, int in_channels) {
#ifdef TESSERA_WITH_CUDA
    if constexpr (std::is_same_v<B, cuda::Backend>)
        return make_cuda_network(arch, num_classes, in_channels);
    else
#endif
        return make_cpu_network(arch, num_classes, in_channels);
}

/// The backend's context for `threads` CPU threads and `precision` (on GPU `device`), or a user
/// error naming what this backend computes in.
template <class B>
std::unique_ptr<typename B::Context> make_context(int threads, const std::string& precision, const std::string& where,
                                                  [[maybe_unused]] int device = 0) {  // unused without CUDA
    if constexpr (std::is_same_v<B, cpu::Backend>) {
        if (precision == "bf16" && !cpu::has_bf16_instructions())
            throw user_error(where,
                             "\"bf16\" on the CPU needs AVX512-BF16 or AMX-BF16, and this CPU has neither (oneDNN "
                             "finds " +
                                 cpu::onednn_isa() + ")",
                             "use precision = \"fp32\" on this CPU; bf16 runs on device = \"cuda\"");
        if (precision != "fp32" && precision != "bf16")
            throw user_error(where, "\"" + precision + "\" is not a precision of the CPU backend",
                             "use precision = \"fp32\", or \"bf16\" (mixed precision) where the CPU has "
                             "AVX512-BF16 or AMX; tf32 and fp16 are for device = \"cuda\"");
        return std::make_unique<cpu::Context>(threads, precision == "bf16" ? DType::bf16 : DType::f32);
    }
#ifdef TESSERA_WITH_CUDA
    else {
        if (precision != "fp32" && precision != "tf32" && precision != "bf16" && precision != "fp16")
            throw user_error(
                where, "\"" + precision + "\" is not a precision of the CUDA backend",
                "use \"bf16\" or \"fp16\" (mixed precision), \"tf32\" (fp32 on TF32 tensor cores) or \"fp32\"");
        cuda::Settings settings;
        settings.device = device;
        settings.tf32 = precision == "tf32";
        settings.compute = precision == "bf16" ? DType::bf16 : precision == "fp16" ? DType::f16 : DType::f32;
        return std::make_unique<cuda::Context>(settings);
    }
#endif
}

/// Calls run.template operator()<B>() with the backend `device` names; the CPU's always exists.
template <class Run>
int on_device(const std::string& device, const std::string& where, Run&& run) {
    if (device == "cpu") return run.template operator()<cpu::Backend>();
#ifdef TESSERA_WITH_CUDA
    if (device == "cuda") return run.template operator()<cuda::Backend>();
    throw user_error(where, "device \"" + device + "\" is not one of cpu, cuda");
#else
    throw user_error(
        where, "device \"" + device + "\" is not available: this build has no CUDA backend",
        device == "cuda" ? "use device = \"cpu\", or rebuild with meson setup -Dcuda=enabled" : "use device = \"cpu\"");
#endif
}

int train(const std::vector<std::string>& args);
int info(const std::vector<std::string>& args);
int plugins(const std::vector<std::string>& args);
int bench(const std::vector<std::string>& args);
int prepare(const std::vector<std::string>& args);
int eval(const std::vector<std::string>& args);
int predict(const std::vector<std::string>& args);
int serve(const std::vector<std::string>& args);
int export_onnx(const std::vector<std::string>& args);
int quantize(const std::vector<std::string>& args);
int lr_find(const std::vector<std::string>& args);
int parity(const std::vector<std::string>& args);
int prepare_val(const std::vector<std::string>& args);

/// Threads from --threads, else TESSERA_NUM_THREADS, else every core.
int thread_count(const Args& a);

/// The launcher's world when mpirun or srun started this process, else a world of one. While it
/// lives, abort_world(code) ends every rank when this one fails (main's error handler); it stops
/// doing so before the world goes, so that no error afterwards calls into a finalised MPI.
class World {
public:
    World();
    ~World();
    World(const World&) = delete;
    World& operator=(const World&) = delete;
    parallel::Communicator& operator*() const { return *comm_; }
    parallel::Communicator* operator->() const { return comm_.get(); }
    parallel::Communicator* get() const { return comm_.get(); }

private:
    std::unique_ptr<parallel::Communicator> comm_;
};
void abort_world(int code);
/// The GPU ranks of `world`, one GPU each (its local rank): NCCL, or a user error where this build
/// has none.
std::unique_ptr<parallel::Communicator> gpu_world(const parallel::Communicator& world);

}  // namespace tessera::runner
