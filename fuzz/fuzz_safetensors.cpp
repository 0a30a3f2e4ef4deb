// The safetensors readers on any bytes: header length, JSON, dtypes, shapes and offsets against the
// model and the file. Each must load, or refuse with tessera::Error; nothing else.
#include "common.hpp"
#include "tessera/backend/cpu/backend.hpp"
#include "tessera/models/network.hpp"
#include "tessera/models/resnet.hpp"
#include "tessera/train/checkpoint.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    // One architecture, not the zoo: the readers check names and shapes, whichever network asks.
    static auto net =
        std::make_unique<tessera::models::Model<tessera::models::ResNet20, 3, tessera::cpu::Backend>>("resnet20", 10);
    const auto file = tessera_fuzz::as_file("checkpoint.safetensors", data, size);
    try {
        tessera::checkpoint::read_metadata(file);
        tessera::checkpoint::read_shapes(file);
    } catch (const tessera::Error&) {}
    try {
        tessera::checkpoint::load(net->params(), file);
    } catch (const tessera::Error&) {}
    try {
        tessera::checkpoint::load_state(file);
    } catch (const tessera::Error&) {}
    return 0;
}
