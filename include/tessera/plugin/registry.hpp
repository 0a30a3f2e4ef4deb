#pragma once
// Registry: finds plugin modules, checks them, and creates plugins by kind and name.
//
// Modules (*.so) are looked for, in this order, in: the recipe's plugin_path, $TESSERA_PLUGIN_PATH
// (colon-separated), the folder of the running binary and its plugins/ and ../plugins/ (a build
// tree), the plugin folder of an installed tree relative to the binary (bin/../lib/…/tessera/plugins,
// so a staged or moved install works), and the install prefix's plugin folder. The first module to
// provide a (kind, name) wins. Modules stay loaded until the program ends.
#ifndef BOOST_DLL_USE_STD_FS
#define BOOST_DLL_USE_STD_FS
#endif
#include <boost/dll/import.hpp>
#include <boost/dll/runtime_symbol_info.hpp>
#include <boost/dll/shared_library.hpp>

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "tessera/plugin/api.hpp"
#include "tessera/plugin/guard.hpp"

// Where `meson install` puts the plugins: the absolute folder, and the same relative to the prefix
// (tessera/config.hpp, which the build generates and installs beside the headers).
#if __has_include("tessera/config.hpp")
#include "tessera/config.hpp"
#endif
#ifndef TESSERA_PLUGIN_INSTALL_DIR
#define TESSERA_PLUGIN_INSTALL_DIR ""
#endif
#ifndef TESSERA_PLUGIN_RELATIVE_DIR
#define TESSERA_PLUGIN_RELATIVE_DIR "lib/tessera/plugins"
#endif

namespace tessera::plugin {

namespace fs = std::filesystem;

class Registry {
public:
    struct Entry {
        Info info;
        fs::path path;
        std::shared_ptr<boost::dll::shared_library> library;
    };

    /// Scans the folders; `extra` (the recipe's plugin_path) comes first.
    explicit Registry(const std::vector<fs::path>& extra = {}) {
        for (auto& dir : search_path(extra)) scan(dir);
    }

    static std::vector<fs::path> search_path(const std::vector<fs::path>& extra) {
        std::vector<fs::path> dirs = extra;
        if (const char* env = std::getenv("TESSERA_PLUGIN_PATH")) {
            std::string list = env;
            for (std::size_t begin = 0, end; begin <= list.size(); begin = end + 1) {
                end = std::min(list.find(':', begin), list.size());
                if (end > begin) dirs.emplace_back(list.substr(begin, end - begin));
            }
        }
        const fs::path exe_dir = boost::dll::program_location().parent_path();
        for (const char* sub : {"plugins", "../plugins"}) dirs.push_back(exe_dir / sub);
        dirs.push_back(exe_dir / ".." / TESSERA_PLUGIN_RELATIVE_DIR);
        if (*TESSERA_PLUGIN_INSTALL_DIR) dirs.emplace_back(TESSERA_PLUGIN_INSTALL_DIR);
        return dirs;
    }

    /// Loads one module, checking that it is a tessera plugin of this ABI. Throws a user error
    /// naming the file otherwise.
    static Entry load(const fs::path& path) {
        auto library = std::make_shared<boost::dll::shared_library>();
        boost::dll::fs::error_code ec;
        // RTLD_NODELETE: a module stays mapped after its last user lets go, so an exception a plugin
        // threw (its vtable and what() live in the module) can still be read wherever it is caught.
        const auto mode = boost::dll::load_mode::rtld_local | boost::dll::load_mode::rtld_now |
                          static_cast<boost::dll::load_mode::type>(RTLD_NODELETE);
        library->load(path, ec, mode);
        if (ec)
            throw user_error(path.string(), "cannot load plugin module: " + ec.message(),
                             "is it a shared library built for this machine?");
        if (!library->has("tessera_plugin_abi") || !library->has("tessera_plugin_info") ||
            !library->has("tessera_plugin_create"))
            throw user_error(path.string(), "not a tessera plugin (it exports no tessera_plugin_abi/info/create)",
                             "build it with TESSERA_PLUGIN(...) from tessera/plugin/api.hpp");
        const int abi = library->get_alias<int()>("tessera_plugin_abi")();
        if (abi != abi_version)
            throw user_error(path.string(),
                             "plugin ABI version " + std::to_string(abi) + " does not match tessera's " +
                                 std::to_string(abi_version),
                             "rebuild the plugin against this version of tessera's headers");
        Entry entry{library->get_alias<Info()>("tessera_plugin_info")(), path, library};
        return entry;
    }

    const std::vector<Entry>& entries() const { return entries_; }
    const std::vector<std::string>& problems() const { return problems_; }

    const Entry* find(const std::string& kind, const std::string& name) const {
        for (auto& e : entries_)
            if (e.info.kind == kind && e.info.name == name) return &e;
        return nullptr;
    }

    std::vector<std::string> names(const std::string& kind) const {
        std::vector<std::string> out;
        for (auto& e : entries_)
            if (e.info.kind == kind) out.push_back(e.info.name);
        return out;
    }

    /// `given` completed with the defaults the plugin declares, for programs that set options in
    /// code rather than in a recipe. A key the plugin does not declare, or of another type, is refused.
    static Options with_defaults(const Entry& entry, const std::map<std::string, Value>& given) {
        std::map<std::string, Value> values;
        for (const auto& o : entry.info.options) values[o.name] = o.default_value;
        for (const auto& [key, value] : given) {
            auto it = values.find(key);
            if (it == values.end())
                throw user_error(entry.info.name, "has no option \"" + key + "\"",
                                 "runner plugins lists each plugin's options");
            if (it->second.index() != value.index())
                throw user_error(entry.info.name + "." + key,
                                 std::string("must be ") + type_name(it->second) + ", not " + type_name(value));
            it->second = value;
        }
        return Options(std::move(values));
    }

    /// Creates a plugin; it keeps its module loaded for as long as it lives.
    template <class Kind>
    std::shared_ptr<Kind> create(const Entry& entry, const Options& options) const {
        TESSERA_CHECK(entry.info.kind == kind_of<Kind>, "plugin kind mismatch for " + entry.info.name);
        auto factory = entry.library->get_alias<std::unique_ptr<Kind>(const Options&)>("tessera_plugin_create");
        const std::string who =
            std::string(kind_of<Kind>) + " plugin \"" + entry.info.name + "\" (" + entry.path.string() + ")";
        std::unique_ptr<Kind> object = detail::guarded(who, "its factory", [&] { return factory(options); });
        if (!object) throw user_error(entry.path.string(), "plugin factory returned nothing");
        auto library = entry.library;
        return guard(std::shared_ptr<Kind>(object.release(), [library](Kind* p) { delete p; }), who);
    }

    /// Creates the plugin of kind Kind called `name`, its options completed with their defaults:
    /// registry.create<plugin::Optimizer>("sgd", {{"momentum", 0.9}}).
    template <class Kind>
    std::shared_ptr<Kind> create(const std::string& name, const std::map<std::string, Value>& options = {}) const {
        const Entry* entry = find(kind_of<Kind>, name);
        if (!entry)
            throw user_error(name, std::string("no ") + kind_of<Kind> + " plugin of this name was found",
                             "runner plugins lists the plugins found; TESSERA_PLUGIN_PATH adds folders to search");
        return create<Kind>(*entry, with_defaults(*entry, options));
    }

private:
    void scan(const fs::path& dir) {
        std::error_code ec;
        if (!fs::is_directory(dir, ec)) return;
        std::vector<fs::path> modules;
        for (auto& f : fs::directory_iterator(dir, ec))
            if (f.path().extension() == ".so") modules.push_back(f.path());
        std::sort(modules.begin(), modules.end());
        for (auto& path : modules) {
            const fs::path canonical = fs::weakly_canonical(path, ec);
            if (std::any_of(entries_.begin(), entries_.end(), [&](const Entry& e) { return e.path == canonical; }))
                continue;
            try {
                Entry e = load(canonical);
                if (!find(e.info.kind, e.info.name)) entries_.push_back(std::move(e));
            } catch (const Error& error) {
                problems_.push_back(error.what());  // shown by `runner plugins`; a recipe naming it fails clearly
            }
        }
    }

    std::vector<Entry> entries_;
    std::vector<std::string> problems_;
};

}  // namespace tessera::plugin
