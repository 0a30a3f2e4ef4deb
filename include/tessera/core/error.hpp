#pragma once
// tessera::Error: what went wrong, where, and what to do about it.
//
// Two kinds: a user's mistake (a bad recipe, a missing file; runner exits 2) and an internal fault
// (a broken invariant; runner exits 1). Both carry a location ("recipe.toml:3:7", a path, a layer)
// and an optional hint that tells the user what to change.
#include <stdexcept>
#include <string>

namespace tessera {

class Error : public std::runtime_error {
public:
    enum class Kind { user, internal };

    Error(Kind kind, std::string where, std::string what, std::string hint = {})
        : std::runtime_error(format(where, what, hint)), kind_(kind), where_(std::move(where)), what_(std::move(what)),
          hint_(std::move(hint)) {}

    Kind kind() const noexcept { return kind_; }
    bool is_user_error() const noexcept { return kind_ == Kind::user; }
    const std::string& where() const noexcept { return where_; }
    const std::string& message() const noexcept { return what_; }
    const std::string& hint() const noexcept { return hint_; }

private:
    static std::string format(const std::string& where, const std::string& what, const std::string& hint) {
        std::string s = where.empty() ? what : where + ": " + what;
        if (!hint.empty()) s += "\n  hint: " + hint;
        return s;
    }
    Kind kind_;
    std::string where_, what_, hint_;
};

/// A mistake in what the user gave us: a file, an option, a recipe value.
inline Error user_error(std::string where, std::string what, std::string hint = {}) {
    return Error(Error::Kind::user, std::move(where), std::move(what), std::move(hint));
}

/// A broken invariant inside tessera.
inline Error internal_error(std::string where, std::string what) {
    return Error(Error::Kind::internal, std::move(where), std::move(what));
}

}  // namespace tessera

/// Checks an internal invariant; throws an internal Error naming the file and line.
#define TESSERA_CHECK(cond, msg)                                                                    \
    do {                                                                                            \
        if (!(cond))                                                                                \
            throw ::tessera::internal_error(std::string(__FILE__) + ":" + std::to_string(__LINE__), \
                                            std::string("check failed: " #cond ": ") + (msg));      \
    } while (0)
