#pragma once
// What runner's train and eval start from (kept out of runner.hpp, which nvcc compiles too).
#include <memory>
#include <string>
#include <vector>

#include "tessera/plugin/registry.hpp"
#include "tessera/recipe/recipe.hpp"

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

}  // namespace tessera::runner
