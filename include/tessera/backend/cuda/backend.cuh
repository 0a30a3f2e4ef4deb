#pragma once
// Definitions of tessera::cuda::Backend (declared in backend.hpp), one file per kind of operation, as
// backend/cpu/ is. Convolutions go to cuDNN, the classifier to cuBLAS, the rest to kernels of our own.
// Include from exactly one .cu file of a program.
#include "tessera/backend/cuda/kernels.cuh"
#include "tessera/backend/cuda/context.cuh"
#include "tessera/backend/cuda/vector.cuh"
#include "tessera/backend/cuda/elementwise.cuh"
#include "tessera/backend/cuda/conv.cuh"
#include "tessera/backend/cuda/batchnorm.cuh"
#include "tessera/backend/cuda/pool.cuh"
#include "tessera/backend/cuda/linear.cuh"
#include "tessera/backend/cuda/input.cuh"
#include "tessera/backend/cuda/loss.cuh"

#undef TESSERA_LAUNCH
