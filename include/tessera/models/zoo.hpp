#pragma once
// The architectures a recipe can name, from "resnet18" to "resnet110".
#include <memory>
#include <string>
#include <vector>

#include "tessera/core/error.hpp"
#include "tessera/core/strings.hpp"
#include "tessera/models/network.hpp"
#include "tessera/models/resnet.hpp"

namespace tessera::models {

struct NetworkOptions {
    int num_classes = 1000;
    int in_channels = 3;  // 3 for RGB, 1 for grayscale (MNIST)
};

inline const std::vector<std::string>& arch_names() {
    static const std::vector<std::string> names = {
        "resnet18",       "resnet34",       "resnet50",       "resnet101",       "resnet152",
        "resnet18_small", "resnet34_small", "resnet50_small", "resnet101_small", "resnet152_small",
        "resnet20",       "resnet32",       "resnet44",       "resnet56",        "resnet110"};
    return names;
}

namespace detail {
template <class Spec, class B>
std::unique_ptr<Network<B>> make_for_channels(const std::string& arch, const NetworkOptions& o) {
    switch (o.in_channels) {
        case 1:
            return std::make_unique<Model<Spec, 1, B>>(arch, o.num_classes);
        case 3:
            return std::make_unique<Model<Spec, 3, B>>(arch, o.num_classes);
        default:
            throw user_error("model", "in_channels = " + std::to_string(o.in_channels) + " is not supported",
                             "use 1 (grayscale) or 3 (RGB)");
    }
}
}  // namespace detail

/// Builds `arch`; an unknown name is a user error that lists the known ones.
template <class B>
std::unique_ptr<Network<B>> make_network(const std::string& arch, const NetworkOptions& o) {
    if (o.num_classes < 1) throw user_error("model", "num_classes must be at least 1");
    using detail::make_for_channels;
    if (arch == "resnet18") return make_for_channels<ResNet18, B>(arch, o);
    if (arch == "resnet34") return make_for_channels<ResNet34, B>(arch, o);
    if (arch == "resnet50") return make_for_channels<ResNet50, B>(arch, o);
    if (arch == "resnet101") return make_for_channels<ResNet101, B>(arch, o);
    if (arch == "resnet152") return make_for_channels<ResNet152, B>(arch, o);
    if (arch == "resnet18_small") return make_for_channels<ResNet18Small, B>(arch, o);
    if (arch == "resnet34_small") return make_for_channels<ResNet34Small, B>(arch, o);
    if (arch == "resnet50_small") return make_for_channels<ResNet50Small, B>(arch, o);
    if (arch == "resnet101_small") return make_for_channels<ResNet101Small, B>(arch, o);
    if (arch == "resnet152_small") return make_for_channels<ResNet152Small, B>(arch, o);
    if (arch == "resnet20") return make_for_channels<ResNet20, B>(arch, o);
    if (arch == "resnet32") return make_for_channels<ResNet32, B>(arch, o);
    if (arch == "resnet44") return make_for_channels<ResNet44, B>(arch, o);
    if (arch == "resnet56") return make_for_channels<ResNet56, B>(arch, o);
    if (arch == "resnet110") return make_for_channels<ResNet110, B>(arch, o);
    throw user_error("model", "unknown architecture \"" + arch + "\"", "choose one of: " + join(arch_names()));
}

}  // namespace tessera::models
