#pragma once
// runner's verbs, one file each, and the argument reader they share.
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "tessera/backend/cpu/backend.hpp"
#include "tessera/models/network.hpp"

namespace tessera::runner {

/// Command-line arguments: positionals, --flags and --key value (or --key=value).
class Args {
public:
    Args(std::vector<std::string> args, const std::vector<std::string>& flags, const std::vector<std::string>& valued,
         const std::vector<std::string>& repeated = {});
    const std::vector<std::string>& positional() const { return positional_; }
    bool flag(const std::string& name) const { return flags_.count(name) > 0; }
    std::optional<std::string> value(const std::string& name) const;
    std::vector<std::string> values(const std::string& name) const;
    int integer(const std::string& name, int fallback, int min = 1) const;

private:
    std::vector<std::string> positional_;
    std::map<std::string, int> flags_;
    std::map<std::string, std::vector<std::string>> values_;
};

/// Built once, in networks.cpp: every architecture, bound to the CPU backend.
std::unique_ptr<models::Network<cpu::Backend>> make_cpu_network(const std::string& arch, int num_classes, int in_channels);

int train(const std::vector<std::string>& args);
int info(const std::vector<std::string>& args);
int plugins(const std::vector<std::string>& args);
int bench(const std::vector<std::string>& args);

/// Threads from --threads, else TESSERA_NUM_THREADS, else every core.
int thread_count(const Args& a);

}  // namespace tessera::runner
