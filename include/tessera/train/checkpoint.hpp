#pragma once
// Weights in safetensors (https://github.com/huggingface/safetensors), with torchvision's state_dict
// names and layouts: a file PyTorch wrote with save_file(model.state_dict()) loads here, and a file
// written here loads in PyTorch.
//
// File: u64 little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the data.
// Conv weights are OHWI in memory and OIHW in the file; num_batches_tracked is I64 in the file.
// Writes go to a temporary file that is renamed over the target, so a crash never leaves a
// half-written file under the real name.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <cstdlib>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/layout.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/core/json.hpp"
#include "tessera/models/network.hpp"

namespace tessera::checkpoint {

using models::ParamEntry;
using models::ParamStore;

inline constexpr std::uint64_t max_header_bytes = 100u << 20;  // as the safetensors reference reader

namespace detail {

inline std::size_t elements(const std::vector<std::int64_t>& dims) {
    std::size_t n = 1;
    for (auto d : dims) n *= std::size_t(d);
    return n;
}

// OIHW (file) <-> OHWI (memory) for conv weights (core/layout.hpp); other tensors are stored as they are.
using tessera::ohwi_to_oihw;
using tessera::oihw_to_ohwi;

inline std::string dims_str(const std::vector<std::int64_t>& dims) { return number_list(dims); }

struct Record {
    const ParamEntry* entry;
    const float* source;
};

// "__metadata__":{...}, the first entry of a header (none without metadata).
inline std::string metadata_json(const std::map<std::string, std::string>& metadata) {
    if (metadata.empty()) return "";
    std::vector<std::string> entries;
    for (auto& [k, v] : metadata) entries.push_back(json::quote(k) + ":" + json::quote(v));
    std::string out = "\"__metadata__\":{";
    out += join(entries, ",");
    out += '}';
    return out;
}

// Flushes `path` (a file, or a folder's entries) to the disk, so that a power cut after a rename
// finds whole files. Best effort: some filesystems refuse fsync on a folder.
inline void sync_to_disk(const std::filesystem::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY);
    if (fd < 0) return;
    ::fsync(fd);
    ::close(fd);
}

// Counts file operations, and raises SIGKILL before the one TESSERA_KILL_AT_FILE_OP names (from 1):
// how the fault tests stop a save between any two of its operations, as a power cut would. Unset,
// it costs a comparison.
inline void file_operation() {
    static const long kill_at = [] {
        const char* v = std::getenv("TESSERA_KILL_AT_FILE_OP");
        return v ? std::atol(v) : 0L;
    }();
    static long done = 0;
    if (kill_at > 0 && ++done == kill_at) std::raise(SIGKILL);
}

}  // namespace detail

/// Files written whole under temporary names, renamed over the real ones only once all are written:
/// a failure (disk full, a folder that cannot be written) while writing leaves every previous file
/// as it was, and the temporaries are removed.
class FileSet {
public:
    FileSet() = default;
    FileSet(const FileSet&) = delete;
    FileSet& operator=(const FileSet&) = delete;
    ~FileSet() {
        std::error_code ignored;
        for (auto& [tmp, path] : pending_) std::filesystem::remove(tmp, ignored);
    }

    /// Writes the 8-byte length, `header` (padded so that the data starts 8-byte aligned), then
    /// what `body` writes, to path.tmp.
    template <class Body>
    void add(const std::filesystem::path& path, std::string header, Body body) {
        header.append((8 - header.size() % 8) % 8, ' ');
        const std::filesystem::path tmp = path.string() + ".tmp";
        pending_.emplace_back(tmp, path);
        detail::file_operation();
        std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
        if (!out)
            throw user_error(tmp.string(), "cannot open for writing", "check that the folder exists and is writable");
        const std::uint64_t length = header.size();
        unsigned char le[8];
        for (int b = 0; b < 8; ++b) le[b] = (length >> (8 * b)) & 0xFF;
        out.write(reinterpret_cast<const char*>(le), 8);
        out.write(header.data(), std::streamsize(header.size()));
        body(out);
        out.flush();
        if (!out) throw user_error(tmp.string(), "write failed (disk full?)", "free some space and try again");
        out.close();
        detail::sync_to_disk(tmp);
    }

    /// Renames every file into place, in the order added.
    void commit() {
        for (auto& [tmp, path] : pending_) {
            std::error_code ec;
            detail::file_operation();
            std::filesystem::rename(tmp, path, ec);
            if (ec) throw user_error(path.string(), "cannot replace the checkpoint: " + ec.message());
            detail::sync_to_disk(path.parent_path().empty() ? "." : path.parent_path());
        }
        pending_.clear();
    }

private:
    std::vector<std::pair<std::filesystem::path, std::filesystem::path>> pending_;
};

namespace detail {

// One file written atomically: a FileSet of one.
template <class Body>
void write_atomically(const std::filesystem::path& path, std::string header, Body body, FileSet* set) {
    if (set) return set->add(path, std::move(header), body);
    FileSet one;
    one.add(path, std::move(header), body);
    one.commit();
}

// A safetensors file's parsed header, `in` left at the start of the data.
struct Header {
    json::Value root;
    std::uint64_t length = 0, data_size = 0;
};

inline Header read_header(std::ifstream& in, const std::string& where) {
    if (!in) throw user_error(where, "cannot open the checkpoint", "check the path");
    in.seekg(0, std::ios::end);
    const std::uint64_t file_size = std::uint64_t(in.tellg());
    in.seekg(0);
    unsigned char le[8];
    if (file_size < 8 || !in.read(reinterpret_cast<char*>(le), 8))
        throw user_error(where, "not a safetensors file: shorter than its 8-byte header length");
    Header h;
    for (int b = 0; b < 8; ++b) h.length |= std::uint64_t(le[b]) << (8 * b);
    if (h.length > max_header_bytes || h.length > file_size - 8)
        throw user_error(where, "not a safetensors file: its header claims " + std::to_string(h.length) +
                                    " bytes but the file has " + std::to_string(file_size) + " in all");
    std::string text(h.length, '\0');
    in.read(text.data(), std::streamsize(h.length));
    h.root = json::parse(text, where);
    if (!h.root.is_object()) throw user_error(where, "the safetensors header is not a JSON object");
    h.data_size = file_size - 8 - h.length;
    return h;
}

}  // namespace detail

/// Writes the model's state_dict (parameters and buffers) to `path`, atomically; with `set`, as one
/// of the set's files, in place at its commit().
inline void save(const ParamStore& store, const std::filesystem::path& path,
                 const std::map<std::string, std::string>& metadata = {}, FileSet* set = nullptr) {
    using namespace detail;
    std::vector<Record> records;
    for (auto& e : store.params) records.push_back({&e, store.values.data() + e.offset});
    for (auto& e : store.buffer_entries) records.push_back({&e, store.buffers.data() + e.offset});
    // As the reference writer: larger alignment first (I64 before F32), then by name.
    std::sort(records.begin(), records.end(), [](const Record& a, const Record& b) {
        const bool a64 = a.entry->role == layers::Role::num_batches_tracked;
        const bool b64 = b.entry->role == layers::Role::num_batches_tracked;
        return a64 != b64 ? a64 : a.entry->name < b.entry->name;
    });

    std::string header = "{";
    header += metadata_json(metadata);
    std::size_t offset = 0;
    for (std::size_t r = 0; r < records.size(); ++r) {
        const ParamEntry& e = *records[r].entry;
        const bool is_i64 = e.role == layers::Role::num_batches_tracked;
        const std::size_t bytes = e.size * (is_i64 ? 8 : 4);
        if (header.size() > 1) header += ',';
        header += json::quote(e.name) + ":{\"dtype\":\"" + (is_i64 ? "I64" : "F32") +
                  "\",\"shape\":" + dims_str(e.dims) + ",\"data_offsets\":[" + std::to_string(offset) + "," +
                  std::to_string(offset + bytes) + "]}";
        offset += bytes;
    }
    write_atomically(
        path, header + "}",
        [&](std::ofstream& out) {
            std::vector<float> scratch;
            for (auto& [entry, source] : records) {
                if (entry->role == layers::Role::num_batches_tracked) {
                    const std::int64_t count = std::int64_t(*source);
                    out.write(reinterpret_cast<const char*>(&count), 8);
                } else if (entry->role == layers::Role::conv_weight) {
                    scratch.resize(entry->size);
                    ohwi_to_oihw(source, scratch.data(), entry->dims);
                    out.write(reinterpret_cast<const char*>(scratch.data()), std::streamsize(entry->size * 4));
                } else {
                    out.write(reinterpret_cast<const char*>(source), std::streamsize(entry->size * 4));
                }
            }
        },
        set);
}

/// Loads a state_dict into the model's host copy. Every tensor of the model must be in the file with
/// the same shape, and the file must hold nothing else (as load_state_dict(strict=True)); F32
/// tensors, and I64 or F32 for num_batches_tracked. On a GPU, call Network::upload() afterwards.
inline void load(ParamStore& store, const std::filesystem::path& path) {
    using namespace detail;
    const std::string where = path.string();
    std::ifstream in(path, std::ios::binary);
    const Header h = read_header(in, where);
    const json::Value& root = h.root;
    const std::uint64_t header_length = h.length, data_size = h.data_size;

    // Read into copies: a file that fails half-way leaves the model as it was.
    std::vector<float> values = store.values, buffers = store.buffers;
    std::vector<std::string> seen;
    std::vector<char> bytes;
    std::vector<float> scratch;
    for (auto& item : root.object()) {
        const std::string& name = item.first;  // a plain reference: lambdas below capture it
        const json::Value& info = item.second;
        if (name == "__metadata__") continue;
        bool is_buffer = false;
        const ParamEntry* e = store.find(name, is_buffer);
        if (!e)
            throw user_error(where, "unexpected tensor \"" + name + "\": the model has no such parameter",
                             "was it saved from another architecture?");
        if (!info.is_object()) throw user_error(where, "entry \"" + name + "\" is not an object");
        const auto& fields = info.object();
        auto field = [&](const char* key) -> const json::Value& {
            auto it = fields.find(key);
            if (it == fields.end()) throw user_error(where, "entry \"" + name + "\" has no " + key);
            return it->second;
        };
        const json::Value& dtype = field("dtype");
        const json::Value& shape = field("shape");
        const json::Value& offsets = field("data_offsets");
        if (!dtype.is_string() || !shape.is_array() || !offsets.is_array() || offsets.array().size() != 2)
            throw user_error(where, "entry \"" + name + "\" is malformed");
        std::vector<std::int64_t> dims;
        for (auto& d : shape.array()) {
            if (!d.is_number() || d.number() < 0 || d.number() > 1e12)
                throw user_error(where, "entry \"" + name + "\" has a bad shape");
            dims.push_back(std::int64_t(d.number()));
        }
        if (dims != e->dims)
            throw user_error(
                where,
                "tensor \"" + name + "\" has shape " + dims_str(dims) + " but the model expects " + dims_str(e->dims),
                "was it saved from another architecture or number of classes?");
        const std::string& type = dtype.string();
        const std::size_t width = type == "F32" ? 4 : type == "I64" ? 8 : 0;
        if (!width || (type == "I64" && e->role != layers::Role::num_batches_tracked))
            throw user_error(where, "tensor \"" + name + "\" has dtype " + type + "; tessera reads F32 weights",
                             "save the model in float32 (model.float()) before save_file");
        for (auto& o : offsets.array())
            if (!o.is_number() || o.number() < 0)
                throw user_error(where, "entry \"" + name + "\" has bad data_offsets");
        const std::uint64_t begin = std::uint64_t(offsets.array()[0].number());
        const std::uint64_t end = std::uint64_t(offsets.array()[1].number());
        if (end < begin || end > data_size || end - begin != e->size * width)
            throw user_error(where,
                             "tensor \"" + name + "\" has data_offsets [" + std::to_string(begin) + ", " +
                                 std::to_string(end) + "] that do not fit its shape or the file",
                             "the file is truncated or corrupt");
        bytes.resize(end - begin);
        in.seekg(std::streamoff(8 + header_length + begin));
        if (!in.read(bytes.data(), std::streamsize(bytes.size()))) throw user_error(where, "the file is truncated");

        float* target = (is_buffer ? buffers.data() : values.data()) + e->offset;
        if (type == "I64") {
            std::int64_t count;
            std::memcpy(&count, bytes.data(), 8);
            *target = float(count);
        } else if (e->role == layers::Role::conv_weight) {
            scratch.resize(e->size);
            std::memcpy(scratch.data(), bytes.data(), bytes.size());
            oihw_to_ohwi(scratch.data(), target, e->dims);
        } else {
            std::memcpy(target, bytes.data(), bytes.size());
        }
        seen.push_back(name);
    }
    std::sort(seen.begin(), seen.end());
    std::vector<std::string> missing;
    for (auto* group : {&store.params, &store.buffer_entries})
        for (auto& e : *group)
            if (!std::binary_search(seen.begin(), seen.end(), e.name)) missing.push_back(e.name);
    if (!missing.empty())
        throw user_error(where, "the checkpoint lacks " + join(missing), "was it saved from another architecture?");
    std::copy(values.begin(), values.end(), store.values.begin());  // layers point into these buffers
    std::copy(buffers.begin(), buffers.end(), store.buffers.begin());
}

/// The metadata of a safetensors file (its "__metadata__" strings).
inline std::map<std::string, std::string> read_metadata(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    const detail::Header h = detail::read_header(in, path.string());
    std::map<std::string, std::string> out;
    auto it = h.root.object().find("__metadata__");
    if (it == h.root.object().end() || !it->second.is_object()) return out;
    for (auto& [k, v] : it->second.object())
        if (v.is_string()) out[k] = v.string();
    return out;
}

/// The shape of each tensor of a safetensors file, by name: enough to tell the architecture's
/// class count and input channels before building it.
inline std::map<std::string, std::vector<std::int64_t>> read_shapes(const std::filesystem::path& path) {
    std::ifstream in(path, std::ios::binary);
    const detail::Header h = detail::read_header(in, path.string());
    std::map<std::string, std::vector<std::int64_t>> shapes;
    for (auto& [name, info] : h.root.object()) {
        if (name == "__metadata__" || !info.is_object() || !info.object().count("shape")) continue;
        const json::Value& shape = info.object().at("shape");
        if (!shape.is_array()) continue;
        auto& dims = shapes[name];
        for (auto& d : shape.array())
            if (d.is_number()) dims.push_back(std::int64_t(d.number()));
    }
    return shapes;
}

/// What a resumed run needs besides the weights: where training stood (metadata strings) and the
/// optimizer's state (named float vectors).
struct TrainingState {
    std::map<std::string, std::string> metadata;
    std::map<std::string, std::vector<float>> tensors;
};

/// Writes `state` as a safetensors file of 1-d F32 tensors, atomically (with `set`: at its commit()).
inline void save_state(const TrainingState& state, const std::filesystem::path& path, FileSet* set = nullptr) {
    std::string header = "{";
    header += detail::metadata_json(state.metadata);
    std::size_t offset = 0;
    for (auto& [name, values] : state.tensors) {
        if (header.size() > 1) header += ',';
        header += json::quote(name) + ":{\"dtype\":\"F32\",\"shape\":[" + std::to_string(values.size()) +
                  "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + values.size() * 4) +
                  "]}";
        offset += values.size() * 4;
    }
    detail::write_atomically(
        path, header + "}",
        [&](std::ofstream& out) {
            for (auto& [name, values] : state.tensors)
                out.write(reinterpret_cast<const char*>(values.data()), std::streamsize(values.size() * 4));
        },
        set);
}

/// Reads what save_state wrote; a truncated or foreign file is refused with a message.
inline TrainingState load_state(const std::filesystem::path& path) {
    const std::string where = path.string();
    std::ifstream in(path, std::ios::binary);
    const detail::Header h = detail::read_header(in, where);
    TrainingState state;
    for (auto& [name, info] : h.root.object()) {
        if (name == "__metadata__") {
            if (info.is_object())
                for (auto& [k, v] : info.object())
                    if (v.is_string()) state.metadata[k] = v.string();
            continue;
        }
        const json::Value* dtype =
            info.is_object() && info.object().count("dtype") ? &info.object().at("dtype") : nullptr;
        const json::Value* offsets =
            info.is_object() && info.object().count("data_offsets") ? &info.object().at("data_offsets") : nullptr;
        if (!dtype || !dtype->is_string() || dtype->string() != "F32" || !offsets || !offsets->is_array() ||
            offsets->array().size() != 2 || !offsets->array()[0].is_number() || !offsets->array()[1].is_number())
            throw user_error(where, "entry \"" + name + "\" is not a float32 tensor of this format",
                             "is this a tessera training state?");
        const double begin = offsets->array()[0].number(), end = offsets->array()[1].number();
        if (begin < 0 || end < begin || end > double(h.data_size) || std::fmod(end - begin, 4.0) != 0)
            throw user_error(where, "tensor \"" + name + "\" lies outside the file: it is truncated or corrupt",
                             "resume from another copy (--resume PATH), or start over with --fresh");
        std::vector<float>& values = state.tensors[name];
        values.resize(std::size_t(end - begin) / 4);
        in.seekg(std::streamoff(8 + h.length + std::uint64_t(begin)));
        if (!in.read(reinterpret_cast<char*>(values.data()), std::streamsize(values.size() * 4)))
            throw user_error(where, "the file is truncated",
                             "resume from another copy (--resume PATH), or start over with --fresh");
    }
    return state;
}

}  // namespace tessera::checkpoint
