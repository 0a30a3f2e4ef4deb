#pragma once
// TESSERA_CPU_CLONES: a hot loop compiled three times, for x86-64-v4 (AVX-512), x86-64-v3 (AVX2,
// FMA) and the baseline, and the copy run chosen by cpuid when the program loads (GCC's
// target_clones, resolved through an ifunc). The default build targets the baseline so that it runs
// on every x86-64 CPU; without this its loops would be SSE2 on every one of them. oneDNN and
// OpenBLAS dispatch the same way inside, so one binary is fast everywhere.
//
// Put it on a function that does the loop itself, with its data as __restrict pointers: a lambda
// handed to the thread pool is a function of its own and gets no clones, so the lambda calls the
// cloned function for its range. Where the compiler cannot clone (another compiler, another
// architecture), the function is compiled once, as before.
//
// The copies differ in speed only: the project builds with -ffp-contract=off (meson.build), so no
// copy fuses a * b + c into an FMA, and each computes the baseline's bits, in the same order.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 12
#define TESSERA_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define TESSERA_CPU_CLONES
#endif

// TESSERA_CPU_INLINE: a function (or lambda: after its parameter list) that a cloned loop calls,
// inlined into each clone so that it is compiled for that clone's instruction set. Without it a
// lambda holding the loop body is a function of its own, compiled once for the baseline (SSE2).
#if defined(__GNUC__)
#define TESSERA_CPU_INLINE __attribute__((always_inline))
#else
#define TESSERA_CPU_INLINE
#endif
