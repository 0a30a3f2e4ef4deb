#pragma once
// The ImageFolder layout torchvision reads: ROOT/<class>/**/<image>, classes sorted by folder name
// and numbered from 0, images in sorted order within each class. ImageNet's train/ and val/ folders
// (after runner prepare-val) have this layout with WordNet ids (n01440764, …) as class names.
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera::data {

/// Extensions torchvision's ImageFolder takes (compared without case), and GIF, which stb reads.
inline bool has_image_extension(const std::filesystem::path& p) {
    std::string ext = p.extension().string();
    std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return char(std::tolower(c)); });
    for (const char* e : {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".gif"})
        if (ext == e) return true;
    return false;
}

struct ImageFolder {
    std::filesystem::path root;
    std::vector<std::string> classes;  // folder names, sorted
    struct Sample {
        std::string path;
        std::int32_t label = 0;
    };
    std::vector<Sample> samples;

    /// Scans `root`, which `given_as` names in messages (data.train, runner prepare's SRC). With
    /// `classes_from` (the training set's classes), the folders must be among them and keep their
    /// numbers, so a validation folder may lack classes but never add any.
    static ImageFolder scan(const std::filesystem::path& root, const std::string& given_as,
                            const std::vector<std::string>* classes_from = nullptr) {
        namespace fs = std::filesystem;
        std::error_code ec;
        if (!fs::is_directory(root, ec))
            throw user_error(
                root.string(), "no such folder (" + given_as + ")",
                "point " + given_as + " at a folder of class folders (ImageNet: .../train, .../val; see the README)");
        ImageFolder f;
        f.root = root;
        std::vector<std::string> folders;
        for (const auto& e : fs::directory_iterator(root, fs::directory_options::follow_directory_symlink, ec))
            if (e.is_directory()) folders.push_back(e.path().filename().string());
        if (ec) throw user_error(root.string(), "cannot list the folder: " + ec.message());
        std::sort(folders.begin(), folders.end());
        if (folders.empty())
            throw user_error(root.string(), "holds no class folders",
                             given_as + " must contain one folder per class, each with its images");
        f.classes = classes_from ? *classes_from : folders;
        for (const std::string& name : folders) {
            const auto it = std::lower_bound(f.classes.begin(), f.classes.end(), name);
            if (it == f.classes.end() || *it != name)
                throw user_error((root / name).string(), "is a class the training folder does not have",
                                 "the validation folder's class folders must be among the training folder's");
            const std::int32_t label = std::int32_t(it - f.classes.begin());
            std::vector<std::string> files;
            for (auto i =
                     fs::recursive_directory_iterator(root / name, fs::directory_options::follow_directory_symlink, ec);
                 !ec && i != fs::recursive_directory_iterator(); i.increment(ec))
                if (i->is_regular_file() && has_image_extension(i->path())) files.push_back(i->path().string());
            if (ec) throw user_error((root / name).string(), "cannot list the folder: " + ec.message());
            if (files.empty())
                throw user_error((root / name).string(),
                                 "is a class folder with no images (.jpg, .jpeg, .png, .ppm, .pgm, .bmp, .gif)",
                                 "remove the folder or add its images");
            std::sort(files.begin(), files.end());
            for (auto& p : files) f.samples.push_back({std::move(p), label});
        }
        return f;
    }
};

/// Display names for `classes`, from a file of lines "<class folder> <name…>" (ImageNet's
/// LOC_synset_mapping.txt: "n01440764 tench, Tinca tinca" shows "tench"), or, when no line starts
/// with a class folder's name, one name per line in class order. Classes without a line keep their
/// folder name.
inline std::vector<std::string> read_class_names(const std::filesystem::path& file,
                                                 const std::vector<std::string>& classes) {
    std::ifstream in(file);
    if (!in)
        throw user_error(file.string(), "cannot read the class names file",
                         "check data.class_names, or leave it empty");
    std::map<std::string, std::string> by_folder;
    std::vector<std::string> lines;
    std::string line;
    while (std::getline(in, line)) {
        while (!line.empty() && std::isspace(static_cast<unsigned char>(line.back()))) line.pop_back();
        if (line.empty()) continue;
        lines.push_back(line);
        const auto space = line.find_first_of(" \t");
        if (space == std::string::npos) continue;
        std::string name = line.substr(line.find_first_not_of(" \t", space));
        // "tench, Tinca tinca": the first synonym is the common name.
        by_folder[line.substr(0, space)] = name.substr(0, name.find(','));
    }
    std::vector<std::string> names = classes;
    std::size_t matched = 0;
    for (std::size_t c = 0; c < classes.size(); ++c)
        if (auto it = by_folder.find(classes[c]); it != by_folder.end()) names[c] = it->second, ++matched;
    if (matched > 0) return names;
    if (lines.size() != classes.size())
        throw user_error(
            file.string(),
            "names none of the " + std::to_string(classes.size()) + " class folders and has " +
                std::to_string(lines.size()) + " lines, not one per class",
            "use lines \"<folder> <name>\" (as ImageNet's LOC_synset_mapping.txt) or one name per class in order");
    return lines;
}

/// Reads a whole file into `bytes` (whose capacity is reused); false if it cannot be read.
inline bool read_bytes(const std::string& path, std::vector<std::uint8_t>& bytes) {
    std::FILE* f = std::fopen(path.c_str(), "rb");
    if (!f) return false;
    struct stat info {};
    std::size_t used = 0;
    if (::fstat(::fileno(f), &info) == 0 && info.st_size > 0) bytes.resize(std::size_t(info.st_size) + 1);
    for (;;) {  // to the end, whatever the size said (a file may grow, or be a pipe)
        if (used == bytes.size()) bytes.resize(std::max<std::size_t>(4096, bytes.size() * 2));
        const std::size_t got = std::fread(bytes.data() + used, 1, bytes.size() - used, f);
        used += got;
        if (got == 0) break;
    }
    const bool ok = !std::ferror(f);
    std::fclose(f);
    bytes.resize(used);
    return ok;
}

}  // namespace tessera::data
