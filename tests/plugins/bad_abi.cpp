// A module that claims another ABI version: the registry must refuse it, naming both numbers.
#include "tessera/plugin/api.hpp"

namespace bad_abi {
inline int abi() { return tessera::plugin::abi_version + 41; }
inline tessera::plugin::Info info() { return {"scheduler", "bad_abi", "built for another ABI", {}}; }
inline std::unique_ptr<tessera::plugin::Scheduler> create(const tessera::plugin::Options&) { return nullptr; }
}  // namespace bad_abi

BOOST_DLL_ALIAS(bad_abi::abi, tessera_plugin_abi)
BOOST_DLL_ALIAS(bad_abi::info, tessera_plugin_info)
BOOST_DLL_ALIAS(bad_abi::create, tessera_plugin_create)
