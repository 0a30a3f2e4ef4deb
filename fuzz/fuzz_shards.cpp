// A shards folder whose index.tsv is any bytes (one shard of 4 KiB, three classes): every entry must
// be refused or lie inside its shard.
#include "common.hpp"
#include "tessera/data/shards.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static const std::filesystem::path dir = [] {
        const auto d = tessera_fuzz::scratch() / "shards";
        std::filesystem::create_directories(d);
        std::ofstream(d / "classes.txt") << "a\nb\nc\n";
        std::ofstream(d / tessera::data::shard_file_name(0), std::ios::binary) << std::string(4096, 'x');
        return d;
    }();
    std::ofstream(dir / "index.tsv", std::ios::binary | std::ios::trunc)
        .write(reinterpret_cast<const char*>(data), std::streamsize(size));
    try {
        tessera::data::ShardReader reader(dir, "fuzz");
        for (std::size_t i = 0; i < reader.size(); ++i) {
            const auto bytes = reader.bytes(i);
            volatile std::uint8_t sink = bytes.empty() ? 0 : bytes.back();  // in bounds, or ASan says so
            (void)sink;
        }
    } catch (const tessera::Error&) {}
    return 0;
}
