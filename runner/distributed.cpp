// The world this runner belongs to: the launcher's (mpirun, srun) when one started it, else a
// world of one that never touches MPI.
#include <cstdio>

#include "runner.hpp"
#ifdef TESSERA_WITH_MPI
#include "tessera/parallel/mpi.hpp"
#endif
#ifdef TESSERA_WITH_NCCL
#include "tessera/parallel/nccl.hpp"
#endif

namespace tessera::runner {

namespace {
parallel::Communicator* joined = nullptr;  // for abort_world(): main's error handler has no other way to it
}  // namespace

World::World() {
    if (parallel::launched_by_mpi()) {
#ifdef TESSERA_WITH_MPI
        comm_ = std::make_unique<parallel::MpiCommunicator>();
#else
        throw user_error("runner", "was started by an MPI launcher, but this build has no MPI",
                         "install libopenmpi-dev and rebuild (meson setup -Dmpi=enabled), or run without mpirun");
#endif
    } else if (const char* tasks = std::getenv("SLURM_NTASKS");
               tasks && std::atoi(tasks) > 1 && std::getenv("SLURM_PROCID")) {
        throw user_error("runner", "srun started " + std::string(tasks) + " tasks without MPI's process management",
                         "run it as srun --mpi=pmix runner … (or pmi2), so that the tasks can find each other");
    } else {
        comm_ = std::make_unique<parallel::Single>();
    }
    joined = comm_.get();
}

World::~World() { joined = nullptr; }

std::unique_ptr<parallel::Communicator> gpu_world(const parallel::Communicator& world) {
#ifdef TESSERA_WITH_NCCL
    return std::make_unique<parallel::NcclCommunicator>(world, world.local_rank());
#else
    (void)world;
    throw user_error("[train] device = \"cuda\"", "training on several GPUs needs NCCL, and this build has none",
                     "install NCCL next to nvcc and rebuild (meson reports nccl: true), or run a single GPU process");
#endif
}

void abort_world(int code) {
    if (joined && joined->size() > 1) {
        std::fprintf(stderr, "rank %d of %d failed: stopping every rank\n", joined->rank(), joined->size());
        std::fflush(stderr);
        joined->abort(code);
    }
}

}  // namespace tessera::runner
