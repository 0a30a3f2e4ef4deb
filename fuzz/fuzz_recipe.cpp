// Recipes on any bytes: the TOML parser, the core sections' checks and the plugins' options (from
// the plugins of a build, when TESSERA_PLUGIN_PATH names them). Each recipe must load or be refused
// with tessera::Error.
#include "common.hpp"
#include "tessera/recipe/recipe.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static tessera::plugin::Registry registry;
    const auto file = tessera_fuzz::as_file("recipe.toml", data, size);
    try {
        tessera::recipe::Recipe r = tessera::recipe::load(file, {});
        tessera::recipe::resolve(r, registry);
    } catch (const tessera::Error&) {}
    return 0;
}
