// runner eval's reader of int8 ONNX models (onnx_model.cpp's read_qdq) on any bytes: protobuf's
// parse, then the initializers and scales it trusts. Each input must load, or be refused with
// tessera::Error; nothing else. Built with onnx_model.cpp and ONNX's libraries (scripts/fuzz).
#include "../runner/onnx_model.hpp"
#include "common.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto file = tessera_fuzz::as_file("model.onnx", data, size);
    try {
        tessera::runner::onnx_model::read_qdq(file);
    } catch (const tessera::Error&) {}
    return 0;
}
