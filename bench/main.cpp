#include <benchmark/benchmark.h>

#include "tessera/backend/cpu/select_gemm_kernels.hpp"

int main(int argc, char** argv) {
    tessera::cpu::select_gemm_kernels(argv);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
