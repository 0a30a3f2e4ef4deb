#pragma once
// What the file loggers share: opening a file of the run folder with a message that says what to
// do, and keeping what an earlier process of the same run wrote before a resume.
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "tessera/plugin/api.hpp"

namespace tessera::plugins::loggers {

namespace fs = std::filesystem;

/// The lines of `file` that `keep` accepts; none when the run starts afresh or the file is absent.
inline std::vector<std::string> kept_lines(const fs::path& file, const tessera::plugin::RunInfo& run,
                                           const std::function<bool(const std::string&)>& keep) {
    std::vector<std::string> lines;
    if (run.first_epoch == 1 && run.first_step == 0) return lines;
    std::ifstream in(file);
    for (std::string line; std::getline(in, line);)
        if (keep(line)) lines.push_back(line);
    return lines;
}

/// `file` opened for writing from its start, or a user error that names it.
inline std::ofstream open_for_writing(const fs::path& file) {
    std::ofstream out(file, std::ios::trunc);
    if (!out)
        throw tessera::user_error(file.string(), "cannot write", "check that the run folder is writable and has space");
    return out;
}

}  // namespace tessera::plugins::loggers
