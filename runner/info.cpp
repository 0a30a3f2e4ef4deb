// runner info ARCH: a numbered table of layers with output shapes and parameters.
#include <cstdio>

#include "runner.hpp"

namespace tessera::runner {

int info(const std::vector<std::string>& raw) {
    Args args(raw, {}, {"num-classes", "image-size", "in-channels"});
    if (args.positional().size() != 1)
        throw user_error("runner info", "expected one architecture", "e.g. runner info resnet50");
    const int image = args.integer("image-size", 224);
    auto net =
        make_cpu_network(args.positional()[0], args.integer("num-classes", 1000), args.integer("in-channels", 3));
    const Shape input{1, image, image, net->in_channels()};
    std::printf("%4s  %-28s %-24s %-20s %12s\n", "#", "name", "layer", "output (N, H, W, C)", "parameters");
    int index = 0;
    for (auto& row : net->describe(input))
        std::printf("%4d  %-28s %-24s %-20s %12lld\n", ++index, row.name.c_str(), row.layer.c_str(),
                    row.output.str().c_str(), (long long)row.params);
    std::printf("parameters: %zu\n", net->params().values.size());
    return 0;
}

}  // namespace tessera::runner
