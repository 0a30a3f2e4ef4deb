#pragma once
// What runner's train and eval start from (kept out of runner.hpp, which nvcc compiles too).
#include <memory>
#include <string>
#include <vector>

#include "tessera/plugin/registry.hpp"
#include "tessera/recipe/recipe.hpp"
#include "tessera/train/loss_scale.hpp"

namespace tessera::runner {

/// A recipe loaded and checked, its plugins found, its data source made, and the class count its
/// model gets: what train and eval start from.
struct RecipeRun {
    recipe::Recipe recipe;
    std::unique_ptr<plugin::Registry> registry;
    std::shared_ptr<plugin::DataSource> data;
    plugin::DatasetInfo info;
    int num_classes = 0;
};
RecipeRun open_recipe(const std::string& file, const std::vector<std::string>& sets);

/// The recipe's loss scaling: [train] loss_scale when set, else dynamic for fp16 and none otherwise.
inline train::LossScaleConfig loss_scale_of(const recipe::Recipe& r) {
    const double fixed = r.train.number("loss_scale");
    const auto window = r.train.integer("loss_scale_window");
    if (fixed < 0) throw user_error(r.file.string() + " [train] loss_scale", "must not be negative", "0 leaves the choice to the precision");
    if (window < 1) throw user_error(r.file.string() + " [train] loss_scale_window", "must be at least 1");
    if (fixed > 0) return {fixed, false, int(window)};
    if (r.model.text("precision") == "fp16") return {train::LossScaler::dynamic_start, true, int(window)};
    return {};
}

}  // namespace tessera::runner
