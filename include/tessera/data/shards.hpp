#pragma once
// Packed shards: an ImageFolder's images, pre-resized and re-encoded as JPEG, in a few large files
// that are read through a memory map (the idea FFCV uses to feed eight GPUs from one machine: no
// file opened per image, no directory lookups, sequential reads the page cache likes).
//
// A shards folder holds
//   classes.txt        one class folder name per line, in label order
//   shard-00000.bin …  the images' bytes, back to back
//   index.tsv          "# tessera shards 1", then one line per image:
//                      shard <TAB> offset <TAB> size <TAB> label <TAB> path it came from
// index.tsv is written last, under a temporary name renamed into place, so a folder whose packing
// was interrupted has none and is refused with a message saying so.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera::data {

inline constexpr const char* shards_index_header = "# tessera shards 1";

inline std::string shard_file_name(std::size_t number) {
    char name[32];
    std::snprintf(name, sizeof name, "shard-%05zu.bin", number);
    return name;
}

/// Appends images to shard files of at most `shard_bytes` each; finish() writes the index.
class ShardWriter {
public:
    ShardWriter(std::filesystem::path dir, std::vector<std::string> classes, std::uint64_t shard_bytes)
        : dir_(std::move(dir)), shard_bytes_(shard_bytes) {
        std::error_code ec;
        std::filesystem::create_directories(dir_, ec);
        if (ec)
            throw user_error(dir_.string(), "cannot create the folder: " + ec.message(),
                             "choose a writable destination");
        std::filesystem::remove(dir_ / "index.tsv", ec);  // a stale index must not describe new shards
        std::ofstream names(dir_ / "classes.txt");
        for (const auto& c : classes) names << c << '\n';
        if (!names.flush()) throw user_error((dir_ / "classes.txt").string(), "cannot write", "is the disk full?");
        index_.open(dir_ / "index.tsv.tmp", std::ios::trunc);
        index_ << shards_index_header << '\n';
    }

    void add(std::span<const std::uint8_t> bytes, std::int32_t label, const std::string& source_path) {
        if (!shard_ || (offset_ > 0 && offset_ + bytes.size() > shard_bytes_)) next_shard();
        if (std::fwrite(bytes.data(), 1, bytes.size(), shard_.get()) != bytes.size())
            throw user_error((dir_ / shard_file_name(shard_number_)).string(), "write failed", "is the disk full?");
        index_ << shard_number_ << '\t' << offset_ << '\t' << bytes.size() << '\t' << label << '\t' << source_path
               << '\n';
        offset_ += bytes.size();
        ++count_;
        total_bytes_ += bytes.size();
    }

    /// Closes the last shard and puts the index in place; until then the folder has none.
    void finish() {
        if (shard_ && std::fflush(shard_.get()) != 0)
            throw user_error((dir_ / shard_file_name(shard_number_)).string(), "write failed", "is the disk full?");
        shard_.reset();
        index_.close();
        if (!index_) throw user_error((dir_ / "index.tsv.tmp").string(), "write failed", "is the disk full?");
        std::filesystem::rename(dir_ / "index.tsv.tmp", dir_ / "index.tsv");
    }

    std::size_t count() const { return count_; }
    std::size_t shards() const { return count_ ? shard_number_ + 1 : 0; }
    std::uint64_t total_bytes() const { return total_bytes_; }

private:
    struct Close {
        void operator()(std::FILE* f) const { std::fclose(f); }
    };

    void next_shard() {
        if (shard_) ++shard_number_;
        const auto path = dir_ / shard_file_name(shard_number_);
        shard_.reset(std::fopen(path.c_str(), "wb"));
        if (!shard_) throw user_error(path.string(), "cannot create", "choose a writable destination");
        offset_ = 0;
    }

    std::filesystem::path dir_;
    std::uint64_t shard_bytes_;
    std::unique_ptr<std::FILE, Close> shard_;
    std::size_t shard_number_ = 0, count_ = 0;
    std::uint64_t offset_ = 0, total_bytes_ = 0;
    std::ofstream index_;
};

/// A shards folder, mapped into memory: every image's bytes are a span into a shard.
class ShardReader {
public:
    struct Entry {
        std::uint32_t shard = 0;
        std::uint32_t size = 0;
        std::uint64_t offset = 0;
        std::int32_t label = 0;
        std::string path;
    };

    /// Maps the shards folder `dir`, which `given_as` names in messages (data.train).
    ShardReader(const std::filesystem::path& dir, const std::string& given_as) : dir_(dir) {
        std::error_code ec;
        if (!std::filesystem::is_directory(dir, ec))
            throw user_error(dir.string(), "no such folder (" + given_as + ")",
                             "make it with: runner prepare IMAGEFOLDER " + dir.string() + " --max-side 256");
        if (!std::filesystem::exists(dir / "index.tsv"))
            throw user_error(dir.string(),
                             "has no index.tsv: it is not a shards folder, or runner prepare was interrupted",
                             "run runner prepare again into it");
        std::ifstream names(dir / "classes.txt");
        for (std::string line; std::getline(names, line);) classes_.push_back(line);
        std::ifstream index(dir / "index.tsv");
        std::string line;
        if (!std::getline(index, line) || line != shards_index_header)
            throw user_error((dir / "index.tsv").string(),
                             "is not an index of this shards format (\"" + std::string(shards_index_header) + "\")",
                             "make the folder again with this version's runner prepare");
        std::size_t shards = 0;
        for (std::size_t number = 2; std::getline(index, line); ++number) {
            Entry e;
            char path[4096] = {};
            unsigned long long offset = 0;
            if (std::sscanf(line.c_str(), "%u\t%llu\t%u\t%d\t%4095[^\n]", &e.shard, &offset, &e.size, &e.label, path) <
                    4 ||
                e.label < 0 || std::size_t(e.label) >= classes_.size())
                throw user_error((dir / "index.tsv").string() + ":" + std::to_string(number), "malformed line",
                                 "make the folder again with runner prepare");
            e.offset = offset;
            e.path = path;
            if (e.shard > max_shards)
                throw user_error((dir / "index.tsv").string() + ":" + std::to_string(number),
                                 "names shard " + std::to_string(e.shard),
                                 "the index is damaged: make the folder again with runner prepare");
            shards = std::max<std::size_t>(shards, std::size_t(e.shard) + 1);
            entries_.push_back(std::move(e));
        }
        for (std::size_t s = 0; s < shards; ++s) maps_.push_back(std::make_unique<Mapping>(dir / shard_file_name(s)));
        for (std::size_t i = 0; i < entries_.size(); ++i)
            if (entries_[i].offset > maps_[entries_[i].shard]->size ||
                entries_[i].size > maps_[entries_[i].shard]->size - entries_[i].offset)
                throw user_error((dir / shard_file_name(entries_[i].shard)).string(),
                                 "is shorter than its index says (image " + std::to_string(i) + ")",
                                 "the folder is damaged: make it again with runner prepare");
    }

    std::size_t size() const { return entries_.size(); }
    const Entry& entry(std::size_t i) const { return entries_[i]; }
    const std::vector<std::string>& classes() const { return classes_; }
    std::span<const std::uint8_t> bytes(std::size_t i) const {
        const Entry& e = entries_[i];
        return {maps_[e.shard]->data + e.offset, e.size};
    }
    const std::filesystem::path& dir() const { return dir_; }

private:
    static constexpr std::uint32_t max_shards = 1u << 20;  // a petabyte of 1 GiB shards

    struct Mapping {
        const std::uint8_t* data = nullptr;
        std::size_t size = 0;
        explicit Mapping(const std::filesystem::path& path) {
            const int fd = ::open(path.c_str(), O_RDONLY);
            struct stat info {};
            if (fd < 0 || ::fstat(fd, &info) != 0) {
                if (fd >= 0) ::close(fd);
                throw user_error(path.string(), "cannot open the shard",
                                 "the folder is incomplete: make it again with runner prepare");
            }
            size = std::size_t(info.st_size);
            if (size > 0) {
                void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd, 0);
                if (p == MAP_FAILED) {
                    ::close(fd);
                    throw user_error(path.string(), "cannot map the shard into memory");
                }
                data = static_cast<const std::uint8_t*>(p);
            }
            ::close(fd);
        }
        ~Mapping() {
            if (data) ::munmap(const_cast<std::uint8_t*>(data), size);
        }
        Mapping(const Mapping&) = delete;
        Mapping& operator=(const Mapping&) = delete;
    };

    std::filesystem::path dir_;
    std::vector<std::string> classes_;
    std::vector<Entry> entries_;
    std::vector<std::unique_ptr<Mapping>> maps_;
};

}  // namespace tessera::data
