#pragma once
// Guarded plugins: what the registry hands out. Each call into a plugin goes through a proxy that
// turns an exception other than tessera::Error (a plugin's bug: std::out_of_range, a bad_alloc of
// its own, anything thrown) into an Error that names the plugin, its module and the call, so a run
// stops with a message that says whose fault it was, and its last checkpoint as it was. A plugin's
// own tessera::Error (a user's mistake it reports) passes through unchanged.
#include <filesystem>
#include <memory>
#include <new>
#include <string>

#include "tessera/plugin/api.hpp"

namespace tessera::plugin {

namespace detail {

template <class Call>
decltype(auto) guarded(const std::string& who, const char* call, Call&& c) {
    try {
        return c();
    } catch (const Error&) {
        throw;
    } catch (const std::bad_alloc&) {
        throw;  // out of memory is the machine's, not the plugin's
    } catch (const std::exception& e) {
        throw internal_error(who, std::string("failed in ") + call + ": " + e.what());
    } catch (...) {
        throw internal_error(who, std::string("failed in ") + call + ": it threw something that is not an exception");
    }
}

}  // namespace detail

#define TESSERA_GUARDED(call, ...) detail::guarded(who_, call, [&]() -> decltype(auto) { return __VA_ARGS__; })

class GuardedScheduler final : public Scheduler {
public:
    GuardedScheduler(std::shared_ptr<Scheduler> inner, std::string who)
        : inner_(std::move(inner)), who_(std::move(who)) {}
    double lr(const Clock& c) const override { return TESSERA_GUARDED("lr()", inner_->lr(c)); }
    std::optional<double> momentum(const Clock& c) const override {
        return TESSERA_GUARDED("momentum()", inner_->momentum(c));
    }

private:
    std::shared_ptr<Scheduler> inner_;
    std::string who_;
};

class GuardedOptimizer final : public Optimizer {
public:
    GuardedOptimizer(std::shared_ptr<Optimizer> inner, std::string who)
        : inner_(std::move(inner)), who_(std::move(who)) {}
    void step(const Parameters& p, const StepRates& r) override { TESSERA_GUARDED("step()", inner_->step(p, r)); }
    OptimizerState state() const override { return TESSERA_GUARDED("state()", inner_->state()); }
    void load_state(const OptimizerState& s) override { TESSERA_GUARDED("load_state()", inner_->load_state(s)); }

private:
    std::shared_ptr<Optimizer> inner_;
    std::string who_;
};

class GuardedDataSource final : public DataSource {
public:
    GuardedDataSource(std::shared_ptr<DataSource> inner, std::string who)
        : inner_(std::move(inner)), who_(std::move(who)) {}
    DatasetInfo info() const override { return TESSERA_GUARDED("info()", inner_->info()); }
    std::int64_t num_batches(Split s, const EpochPlan& p) const override {
        return TESSERA_GUARDED("num_batches()", inner_->num_batches(s, p));
    }
    void start_epoch(Split s, const EpochPlan& p) override {
        TESSERA_GUARDED("start_epoch()", inner_->start_epoch(s, p));
    }
    bool next(Batch& b) override { return TESSERA_GUARDED("next()", inner_->next(b)); }
    std::int64_t bad_samples() const override { return TESSERA_GUARDED("bad_samples()", inner_->bad_samples()); }

private:
    std::shared_ptr<DataSource> inner_;
    std::string who_;
};

class GuardedLogger final : public Logger {
public:
    GuardedLogger(std::shared_ptr<Logger> inner, std::string who) : inner_(std::move(inner)), who_(std::move(who)) {}
    void on_run_begin(const RunInfo& r) override { TESSERA_GUARDED("on_run_begin()", inner_->on_run_begin(r)); }
    void on_step(const StepStats& s) override { TESSERA_GUARDED("on_step()", inner_->on_step(s)); }
    void on_epoch(const EpochStats& e) override { TESSERA_GUARDED("on_epoch()", inner_->on_epoch(e)); }
    void on_run_end() override { TESSERA_GUARDED("on_run_end()", inner_->on_run_end()); }

private:
    std::shared_ptr<Logger> inner_;
    std::string who_;
};

#undef TESSERA_GUARDED

template <class Kind>
struct Guarded;
template <>
struct Guarded<Scheduler> {
    using type = GuardedScheduler;
};
template <>
struct Guarded<Optimizer> {
    using type = GuardedOptimizer;
};
template <>
struct Guarded<DataSource> {
    using type = GuardedDataSource;
};
template <>
struct Guarded<Logger> {
    using type = GuardedLogger;
};

/// `object`, each of its calls guarded; `who` names it in messages.
template <class Kind>
std::shared_ptr<Kind> guard(std::shared_ptr<Kind> object, std::string who) {
    return std::make_shared<typename Guarded<Kind>::type>(std::move(object), std::move(who));
}

}  // namespace tessera::plugin
