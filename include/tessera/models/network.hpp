#pragma once
// Network<B>: a bound model behind a small virtual interface, so that `runner` can choose the
// architecture from a recipe at run time while each model's composition stays a compile-time type.
//
// All trainable parameters live in one contiguous buffer, their gradients in a second, the
// non-trainable buffers (BN running statistics) in a third; layers hold pointers into them. So an
// all-reduce, an optimizer step or a checkpoint is one pass over one buffer.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "tessera/backend/backend.hpp"
#include "tessera/layers/graph.hpp"

namespace tessera::models {

using layers::Role;

/// One named tensor inside a flat buffer.
struct ParamEntry {
    std::string name;                // torchvision state_dict name
    std::vector<std::int64_t> dims;  // PyTorch layout (conv weights OIHW)
    Role role;
    std::size_t offset = 0, size = 0;  // in floats, within its buffer
};

class ParamStore {
public:
    std::vector<float> values, grads, buffers;
    std::vector<ParamEntry> params, buffer_entries;

    /// Registers every parameter and buffer of `net`, allocates the flat host buffers and points the
    /// layers into them.
    template <class Layer>
    void bind(Layer& net) {
        Collector collect(*this, Collector::Mode::count, {});
        net.visit(collect);
        values.assign(collect.param_floats, 0.f);
        grads.assign(collect.param_floats, 0.f);
        buffers.assign(collect.buffer_floats, 0.f);
        point(net, host());
    }

    /// Three flat buffers of the same layout: host memory, or a device's copy.
    struct Memory {
        float *values, *grads, *buffers;
    };
    Memory host() { return {values.data(), grads.data(), buffers.data()}; }

    /// Points the layers of `net` into `memory`.
    template <class Layer>
    void point(Layer& net, Memory memory) {
        Collector assign(*this, Collector::Mode::assign, memory);
        net.visit(assign);
    }

    void zero_grad() { std::fill(grads.begin(), grads.end(), 0.f); }

    /// Every tensor of the state_dict, parameters first, as PyTorch's `state_dict()` would list it
    /// (order within each group is the network's order).
    const ParamEntry* find(const std::string& name, bool& is_buffer) const {
        for (auto& e : params)
            if (e.name == name) return is_buffer = false, &e;
        for (auto& e : buffer_entries)
            if (e.name == name) return is_buffer = true, &e;
        return nullptr;
    }

private:
    class Collector : public layers::ParamVisitor {
    public:
        enum class Mode { count, assign };
        Collector(ParamStore& store, Mode mode, Memory memory) : store_(store), mode_(mode), memory_(memory) {}
        std::size_t param_floats = 0, buffer_floats = 0;

    protected:
        void on_param(const std::string& name, const std::vector<std::int64_t>& dims, Role role, float*& value,
                      float*& grad) override {
            const std::size_t size = elements(dims);
            if (mode_ == Mode::count) {
                store_.params.push_back({name, dims, role, param_floats, size});
            } else {
                value = memory_.values + param_floats;
                grad = memory_.grads + param_floats;
            }
            param_floats += size;
        }
        void on_buffer(const std::string& name, const std::vector<std::int64_t>& dims, Role role,
                       float*& value) override {
            const std::size_t size = elements(dims);
            if (mode_ == Mode::count)
                store_.buffer_entries.push_back({name, dims, role, buffer_floats, size});
            else
                value = memory_.buffers + buffer_floats;
            buffer_floats += size;
        }

    private:
        static std::size_t elements(const std::vector<std::int64_t>& dims) {
            std::size_t n = 1;
            for (auto d : dims) n *= std::size_t(d);
            return n;
        }
        ParamStore& store_;
        Mode mode_;
        Memory memory_;
    };
};

/// A network on backend B. Its parameters always have a host copy (ParamStore), which checkpoints
/// and initialisation use; on a backend with memory of its own (CUDA) the layers work on a device
/// copy, and upload() / download() move values and statistics between the two.
template <LayerBackend B>
class Network {
public:
    using Context = typename B::Context;
    virtual ~Network() = default;

    /// The buffers the layers compute with: the host's on the CPU, the device's on CUDA.
    ParamStore::Memory working() {
        if constexpr (B::has_device_memory)
            return work_->template memory<ParamStore::Memory>();
        else
            return params_.host();
    }
    /// Host values and statistics -> working memory (after loading or initialising).
    void upload() {
        if constexpr (B::has_device_memory) work_->upload(params_.values.data(), params_.buffers.data());
    }
    /// Working memory -> host (before saving). Gradients too, for whoever inspects them.
    void download() {
        if constexpr (B::has_device_memory)
            work_->download(params_.values.data(), params_.grads.data(), params_.buffers.data());
    }
    void zero_grad(Context& ctx) { B::fill_zero(ctx, working().grads, params_.grads.size()); }

    /// logits (N, 1, 1, classes) from images (N, H, W, C). The step's arena must be reset by the caller.
    virtual Tensor forward(Context& ctx, const Tensor& x) = 0;
    /// Accumulates every parameter's gradient from dlogits (N, 1, 1, classes).
    virtual void backward(Context& ctx, const Tensor& dlogits) = 0;
    virtual Shape output_shape(Shape in) const = 0;
    virtual std::vector<layers::Describer::Row> describe(Shape in) const = 0;
    /// The inference graph (layers/graph.hpp): what `runner export` writes and quantization calibrates.
    virtual std::vector<layers::GraphNode> graph() const = 0;
    virtual void init(std::uint64_t seed, const layers::InitOptions& o) = 0;

    const std::string& arch() const { return arch_; }
    int in_channels() const { return in_channels_; }
    int num_classes() const { return num_classes_; }
    ParamStore& params() { return params_; }
    const ParamStore& params() const { return params_; }

protected:
    Network(std::string arch, int in_channels, int num_classes)
        : arch_(std::move(arch)), in_channels_(in_channels), num_classes_(num_classes) {}

    /// On a backend that keeps the weights in the compute type for a forward and its backward (CUDA
    /// in bf16 and fp16: one cast of the whole buffer, not one per layer and pass), from the start
    /// of a forward until the weights may change: the end of the backward, or of an evaluation's
    /// forward.
    void begin_weight_copies(Context& ctx) {
        if constexpr (requires { B::begin_weight_copies(ctx, working().values, std::size_t{}); })
            B::begin_weight_copies(ctx, working().values, params_.values.size());
    }
    void end_weight_copies(Context& ctx) {
        if constexpr (requires { B::end_weight_copies(ctx); }) B::end_weight_copies(ctx);
    }

    /// Gives the layers device memory when the backend has its own; call once the host store is bound.
    template <class Layer>
    void place(Layer& net) {
        if constexpr (B::has_device_memory) {
            work_ = std::make_unique<typename B::DeviceParams>(params_.values.size(), params_.buffers.size());
            params_.point(net, working());
            upload();
        }
    }

    ParamStore params_;
    std::unique_ptr<typename B::DeviceParams> work_;

private:
    std::string arch_;
    int in_channels_, num_classes_;
};

/// The Network for a spec, bound for In input channels on backend B.
template <class Spec, int In, LayerBackend B>
requires layers::LayerSpec<Spec, In, B>
class Model final : public Network<B> {
public:
    using Context = typename B::Context;
    using Layer = decltype(layers::bind_child<Spec, In, B>(layers::BindOptions{}));

    Model(std::string arch, int num_classes)
        : Network<B>(std::move(arch), In, num_classes),
          net_(layers::bind_child<Spec, In, B>(layers::BindOptions{num_classes})) {
        this->params_.bind(net_);
        this->place(net_);
    }
    Model(const Model&) = delete;  // layers point into params_: the model stays where it is built

    Tensor forward(Context& ctx, const Tensor& x) override {
        ctx.network_input = x.data;
        ctx.input_is_private = false;  // the caller's images are never overwritten
        this->begin_weight_copies(ctx);
        const Tensor logits = net_.forward(ctx, x);
        if (!ctx.training) this->end_weight_copies(ctx);
        return logits;
    }
    void backward(Context& ctx, const Tensor& dlogits) override {
        const Tensor dx = net_.backward(ctx, dlogits);  // null at the network's input, else a pooled gradient
        if (dx.data != dlogits.data) ctx.grads.release(dx);
        this->end_weight_copies(ctx);
    }
    Shape output_shape(Shape in) const override { return net_.output_shape(in); }
    std::vector<layers::Describer::Row> describe(Shape in) const override {
        layers::Describer d;
        net_.describe(d, in);
        return d.rows();
    }
    std::vector<layers::GraphNode> graph() const override {
        layers::Tracer t;
        net_.trace(t, layers::Tracer::input);
        return t.nodes();
    }
    /// Initialises on the host copy, then uploads.
    void init(std::uint64_t seed, const layers::InitOptions& o) override {
        Rng rng(seed);
        this->params_.point(net_, this->params_.host());
        net_.init(rng, o);
        this->params_.point(net_, this->working());
        this->upload();
    }
    Layer& layers() { return net_; }

private:
    Layer net_;
};

}  // namespace tessera::models
