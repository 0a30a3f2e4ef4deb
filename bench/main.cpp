#include <benchmark/benchmark.h>

#include "tessera/backend/cpu/select_cpu_kernels.hpp"

int main(int argc, char** argv) {
    tessera::cpu::select_cpu_kernels(argv);
    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 2;
    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
