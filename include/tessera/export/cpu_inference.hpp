#pragma once
// A trained network compiled for inference on the CPU: what `runner predict`, `eval`, `serve`,
// `bench --inference` and the trainer's validation run on the CPU backend.
//
// Training keeps every BatchNorm, ReLU and residual add as a pass of its own over memory, because
// backward needs their inputs. Inference needs none of that, so the network's inference graph
// (inference_graph.hpp) is compiled once into oneDNN primitives:
//   - each BatchNorm is folded into the convolution before it (fold_batchnorm);
//   - a ReLU after a convolution, and a residual add with its ReLU, become the convolution's
//     post-ops (oneDNN's sum and eltwise_relu): a bottleneck is three primitives, not nine passes;
//   - activations stay in the layouts oneDNN's kernels choose for themselves (blocked nChw8c or
//     nChw16c, or NHWC for its brgemm kernels) from the stem to the classifier, and the filters are
//     reordered once, where the training path reorders them at every call;
//   - the add writes in place into the shortcut's buffer, and buffers are reused once their last
//     reader has run.
// PyTorch's eager eval() does none of these (TorchScript's freeze folds BatchNorm, and its opt-in
// oneDNN Graph fuser fuses): this is where tessera's CPU inference gains on it (README, "CPU").
//
// One plan per batch size (serving meets many): primitives, with the weights' reorders shared
// between plans and the activation buffers shared too, since one forward runs at a time.
#include <dnnl.hpp>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "tessera/backend/cpu/backend.hpp"
#include "tessera/backend/cpu/winograd.hpp"
#include "tessera/core/error.hpp"
#include "tessera/export/inference_graph.hpp"
#include "tessera/models/network.hpp"

namespace tessera::deploy {

class CpuInference {
public:
    using Op = layers::GraphNode::Op;

    /// Why `graph` (folded or not) cannot be compiled, or nothing: a BatchNorm that does not follow
    /// a convolution, or a linear layer on a feature map, has no kernel here. Callers then run the
    /// network's own forward.
    static std::optional<std::string> unsupported(const InferenceGraph& graph) {
        return why_not(fold_batchnorm(graph));
    }

    /// Compiles `graph` (its BatchNorms are folded here) to compute in `precision`: fp32, or bf16
    /// (bf16 activations and filters, fp32 accumulation, biases and logits, as PyTorch's CPU autocast)
    /// on CPUs with bf16 instructions. Check unsupported() first.
    explicit CpuInference(const InferenceGraph& graph, DType precision = DType::f32)
        : CpuInference(Folded{fold_batchnorm(graph)}, precision) {}

    /// `graph` compiled, or nothing where unsupported() would say why: the graph is folded once.
    static std::optional<CpuInference> compile(const InferenceGraph& graph, DType precision) {
        Folded folded{fold_batchnorm(graph)};
        if (why_not(folded.graph)) return std::nullopt;
        return CpuInference(std::move(folded), precision);
    }

private:
    struct Folded {
        InferenceGraph graph;
    };

    CpuInference(Folded folded, DType precision)
        : graph_(std::move(folded.graph)), compute_(precision == DType::bf16 ? dt::bf16 : dt::f32) {
        if (auto why = why_not(graph_)) throw internal_error("CpuInference", *why);
        TESSERA_CHECK(precision == DType::f32 || precision == DType::bf16, "CpuInference computes in fp32 or bf16");
        TESSERA_CHECK(precision == DType::f32 || cpu::has_bf16_instructions(),
                      "CpuInference: bf16 needs AVX512-BF16 or AMX, and this CPU has neither");
        fuse();
    }

    // unsupported() of a graph already folded.
    static std::optional<std::string> why_not(const InferenceGraph& folded) {
        if (folded.nodes.empty() || folded.nodes.back().op != Op::linear)
            return std::string("the graph does not end in a linear layer");
        for (auto& n : folded.nodes) {
            if (n.op == Op::batchnorm) return "the BatchNorm " + n.name + " does not follow a convolution";
            if (n.op == Op::linear && &n != &folded.nodes.back())
                return "the linear layer " + n.name + " is not the graph's last node";
            if (n.op == Op::linear && folded.nodes[std::size_t(n.inputs[0]) - 1].op != Op::global_avg_pool)
                return "the linear layer " + n.name + " does not follow the global average pooling";
        }
        return std::nullopt;
    }

public:
    /// Logits (N, 1, 1, classes) of normalised images x (N, H, W, C, fp32 or bf16), in ctx's arena.
    Tensor forward(cpu::Context& ctx, const Tensor& x) {
        TESSERA_CHECK(x.dtype == DType::f32 || x.dtype == DType::bf16, "CpuInference takes fp32 or bf16 images");
        omp_set_num_threads(int(ctx.pool.size()));  // oneDNN's threads, on whichever thread calls
        Plan& plan = plan_for(x);
        Tensor logits = ctx.arena.tensor({x.shape.n, 1, 1, plan.classes}, DType::f32);
        plan.input.set_data_handle(x.data);
        plan.output.set_data_handle(logits.data);
        for (auto& [memory, buffer] : plan.bound) memory.set_data_handle(buffers_[std::size_t(buffer)].get());
        for (auto& step : plan.steps)
            if (step.run)
                step.run(step.args);
            else
                step.primitive.execute(stream_, step.args);
        stream_.wait();
        return logits;
    }

    /// The memory it holds: activation buffers, scratchpad and reordered weights.
    std::size_t bytes() const {
        std::size_t total = 0;
        for (std::size_t size : sizes_) total += size;
        for (auto& [name, copies] : parameters_)
            for (auto& [desc, memory] : copies) total += desc.get_size();
        for (auto& [name, u] : winograd_filters_) total += u.size() * sizeof(float);
        return total;
    }

    /// The name kernels() gives the convolutions of backend/cpu/winograd.hpp.
    static constexpr const char* winograd_kernel = "winograd F(4x4,3x3)";

    /// oneDNN's names for the convolution kernels of the plans made so far ("brg:avx512_core", …),
    /// and winograd_kernel.
    std::string kernels() const {
        std::string names;
        for (auto& [n, plan] : plans_)
            for (auto& k : plan->kernels)
                if (names.find(k) == std::string::npos) names += (names.empty() ? "" : ", ") + k;
        return names;
    }

    /// Whether a plan may run a convolution by Winograd: in fp32, not turned off, with a 3x3 convolution
    /// it computes of 64 channels and more (whether it runs also depends on the batch: winograd::pays).
    bool may_run_winograd() const {
        if (compute_ != dt::f32 || !winograd_) return false;
        return std::any_of(graph_.nodes.begin(), graph_.nodes.end(), [](const layers::GraphNode& n) {
            return n.op == Op::conv && cpu::winograd::computes(n.conv) &&
                   cpu::winograd::enough_channels(n.conv.in_channels, n.conv.out_channels);
        });
    }

    /// An fp32 activation layout as winograd::Layout: blocked nChw16c or nChw8c, or NHWC (read 8
    /// channels at a time); nothing for any other.
    static std::optional<cpu::winograd::Layout> winograd_layout(const dnnl::memory::desc& desc) {
        const auto d = desc.dims();
        const std::size_t c = std::size_t(d[1]), pixels = std::size_t(d[2] * d[3]);
        for (const int lanes : {16, 8})
            if (c % std::size_t(lanes) == 0 &&
                desc == dnnl::memory::desc(d, dt::f32, lanes == 16 ? tag::nChw16c : tag::nChw8c))
                return cpu::winograd::Layout{c * pixels, pixels * std::size_t(lanes), std::size_t(lanes), lanes};
        if (c % 8 == 0 && desc == dnnl::memory::desc(d, dt::f32, tag::nhwc))
            return cpu::winograd::Layout{c * pixels, 8, c, 8};
        return std::nullopt;
    }

private:
    using tag = dnnl::memory::format_tag;
    using dt = dnnl::memory::data_type;
    using dims = dnnl::memory::dims;

    // A node's work after fusion: a convolution may absorb the add that reads it (its other operand
    // `sum` is added in place) and the ReLU after either.
    struct Fused {
        int node;           // the node that computes (a conv, or any other op run alone)
        int output;         // the value this work produces: the last node absorbed
        int sum = -1;       // the value a conv adds its result into, in place (-1: none)
        bool relu = false;  // the ReLU after it is taken in
    };

    void fuse() {
        const std::vector<int> readers = graph_.readers();
        // The nodes that read each value, in order.
        std::vector<std::vector<int>> read_by(graph_.nodes.size() + 1);
        for (std::size_t i = 0; i < graph_.nodes.size(); ++i)
            for (int v : graph_.nodes[i].inputs) read_by[std::size_t(v)].push_back(int(i));
        auto only_reader = [&](int value, Op op) {
            if (readers[std::size_t(value)] != 1) return -1;
            const int r = read_by[std::size_t(value)][0];
            return graph_.nodes[std::size_t(r)].op == op ? r : -1;
        };
        std::vector<bool> absorbed(graph_.nodes.size(), false);
        for (int i = 0; i < int(graph_.nodes.size()); ++i) {
            if (absorbed[std::size_t(i)]) continue;
            const layers::GraphNode& n = graph_.nodes[std::size_t(i)];
            Fused f{i, i + 1};
            if (n.op == Op::conv) {
                // conv -> add(other): fused when `other` is already computed, is not the caller's
                // input or this conv's, and nothing reads it after this conv but the add, since its
                // buffer receives conv + other in place.
                if (const int add = only_reader(i + 1, Op::add); add >= 0) {
                    const auto& in = graph_.nodes[std::size_t(add)].inputs;
                    const int other = in[0] == i + 1 ? in[1] : in[0];
                    bool free_to_overwrite = other > 0 && other < i + 1 && other != n.inputs[0];
                    for (int r : read_by[std::size_t(other)])
                        if (r != add && r > i) free_to_overwrite = false;
                    if (free_to_overwrite) {
                        f.sum = other;
                        f.output = add + 1;
                        absorbed[std::size_t(add)] = true;
                    }
                }
            }
            // conv, conv + add, or add -> relu
            if (n.op == Op::conv || n.op == Op::add)
                if (const int relu = only_reader(f.output, Op::relu); relu >= 0) {
                    f.relu = true;
                    f.output = relu + 1;
                    absorbed[std::size_t(relu)] = true;
                }
            work_.push_back(f);
        }
    }

    using Args = std::unordered_map<int, dnnl::memory>;
    // A oneDNN primitive, or tessera's own kernel (`run`) on the same arguments.
    struct Step {
        dnnl::primitive primitive;
        Args args;
        std::function<void(const Args&)> run = {};
    };
    struct Plan {
        std::vector<Step> steps;
        dnnl::memory input, output;                       // the caller's tensors, bound per call
        std::vector<std::pair<dnnl::memory, int>> bound;  // memories on shared buffers
        std::vector<std::string> kernels;
        int classes = 0;
    };

    // Builds the plan of one input shape: each value gets a buffer, reused once its last reader ran.
    class Planner {
    public:
        Planner(CpuInference& self, Plan& plan) : self_(self), plan_(plan) {}

        void build(const Tensor& x) {
            const dnnl::memory::desc input({x.shape.n, x.shape.c, x.shape.h, x.shape.w},
                                           x.dtype == DType::bf16 ? dt::bf16 : dt::f32, tag::nhwc);
            plan_.input = dnnl::memory(input, self_.engine_, nullptr);
            values_[0] = plan_.input;
            // How many fused steps read each value, so that its buffer is released after the last.
            for (auto& f : self_.work_) {
                for (int v : self_.graph_.nodes[std::size_t(f.node)].inputs) ++reads_[v];
                if (f.sum >= 0) ++reads_[f.sum];
            }
            for (const Fused& f : self_.work_) step(f);
        }

    private:
        void step(const Fused& f) {
            const layers::GraphNode& n = self_.graph_.nodes[std::size_t(f.node)];
            const dnnl::memory& x = values_.at(n.inputs[0]);
            dnnl::primitive_attr attr;
            attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
            dnnl::post_ops post;
            if (f.sum >= 0) post.append_sum(1.f);
            if (f.relu) post.append_eltwise(1.f, dnnl::algorithm::eltwise_relu, 0.f, 0.f);
            attr.set_post_ops(post);
            switch (n.op) {
                case Op::conv:
                    conv(f, n, x, attr);
                    break;
                case Op::relu:
                    eltwise(f, x);
                    break;
                case Op::add:
                    add(f, n, x, attr);
                    break;
                case Op::max_pool: {
                    const auto d = x.get_desc().dims();
                    const dims out{d[0], d[1], n.pool.out_size(int(d[2])), n.pool.out_size(int(d[3]))};
                    pool(f, x, out, {n.pool.kernel, n.pool.kernel}, {n.pool.stride, n.pool.stride},
                         {n.pool.pad, n.pool.pad}, dnnl::algorithm::pooling_max);
                    break;
                }
                case Op::global_avg_pool: {
                    const auto d = x.get_desc().dims();
                    pool(f, x, {d[0], d[1], 1, 1}, {d[2], d[3]}, {1, 1}, {0, 0},
                         dnnl::algorithm::pooling_avg_exclude_padding);
                    break;
                }
                case Op::linear:
                    linear(f, n, x);
                    break;
                case Op::batchnorm:
                    throw internal_error("CpuInference", "an unfolded BatchNorm");
            }
            finish(f, n);
        }

        void conv(const Fused& f, const layers::GraphNode& n, const dnnl::memory& x, const dnnl::primitive_attr& attr) {
            const ConvGeometry& g = n.conv;
            const auto in = x.get_desc().dims();
            const dims dst{in[0], g.out_channels, g.out_size(int(in[2])), g.out_size(int(in[3]))};
            const dims weights{g.out_channels, g.in_channels, g.kernel, g.kernel};
            const bool has_bias = self_.graph_.has(n.name + ".bias");
            const dt compute = self_.compute_;
            const dnnl::memory::desc src_any(in, compute, tag::any), dst_any(dst, compute, tag::any),
                weights_any(weights, compute, tag::any), bias({g.out_channels}, dt::f32, tag::x);
            const dims strides{g.stride, g.stride}, pad{g.pad, g.pad};
            using cf = dnnl::convolution_forward;
            const auto desc = has_bias
                                  ? cf::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                             src_any, weights_any, bias, dst_any, strides, pad, pad)
                                  : cf::desc(dnnl::prop_kind::forward_inference, dnnl::algorithm::convolution_direct,
                                             src_any, weights_any, dst_any, strides, pad, pad);
            const cf::primitive_desc pd(desc, attr, self_.engine_);
            const cpu::winograd::Shape shape{int(in[0]), int(in[1]), int(in[2]), int(in[3]), g.out_channels};
            if (compute == dt::f32 && self_.winograd_ && cpu::winograd::computes(g) && cpu::winograd::pays(shape))
                if (winograd(f, n, x, pd.src_desc(), pd.dst_desc(), shape, has_bias)) return;
            plan_.kernels.push_back(pd.impl_info_str());
            Step s{cf(pd), {}};
            s.args[DNNL_ARG_SRC] = in_layout(x, pd.src_desc());
            s.args[DNNL_ARG_WEIGHTS] =
                self_.parameter(n.name + ".weight", {weights, dt::f32, tag::oihw}, pd.weights_desc());
            if (has_bias) s.args[DNNL_ARG_BIAS] = self_.parameter(n.name + ".bias", bias, bias);
            // With a sum post-op, the destination holds the shortcut and receives conv + shortcut.
            s.args[DNNL_ARG_DST] = f.sum >= 0 ? take_over(f.sum, pd.dst_desc()) : fresh(pd.dst_desc());
            s.args[DNNL_ARG_SCRATCHPAD] = scratchpad(pd.scratchpad_desc());
            values_[f.output] = s.args[DNNL_ARG_DST];
            plan_.steps.push_back(std::move(s));
        }

        // The convolution by Winograd's F(4x4, 3x3) (backend/cpu/winograd.hpp), on the layouts oneDNN's
        // kernel chose, so that its neighbours do not change; false where they are not ones it reads.
        bool winograd(const Fused& f, const layers::GraphNode& n, const dnnl::memory& x, const dnnl::memory::desc& src,
                      const dnnl::memory::desc& dst, const cpu::winograd::Shape& shape, bool has_bias) {
            const auto in = winograd_layout(src), out = winograd_layout(dst);
            if (!in || !out || in->lanes != out->lanes) return false;
            const std::vector<float>& u = self_.winograd_filters(n);
            const float* bias = has_bias ? self_.graph_.tensor(n.name + ".bias").data() : nullptr;
            plan_.kernels.push_back(winograd_kernel);
            Step s;
            s.args[DNNL_ARG_SRC] = in_layout(x, src);
            s.args[DNNL_ARG_DST] = f.sum >= 0 ? take_over(f.sum, dst) : fresh(dst);
            s.args[DNNL_ARG_SCRATCHPAD] =
                scratchpad({{dims::value_type(cpu::winograd::workspace_floats(shape))}, dt::f32, tag::a});
            s.run = [&u, bias, accumulate = f.sum >= 0, relu = f.relu, from = *in, to = *out, shape](const Args& args) {
                auto* x = static_cast<const float*>(args.at(DNNL_ARG_SRC).get_data_handle());
                auto* y = static_cast<float*>(args.at(DNNL_ARG_DST).get_data_handle());
                auto* workspace = static_cast<float*>(args.at(DNNL_ARG_SCRATCHPAD).get_data_handle());
                cpu::winograd::forward(cpu::OpenMpThreads(omp_get_max_threads()), x, from, u, bias, accumulate, relu, y,
                                       to, shape, workspace);
            };
            values_[f.output] = s.args[DNNL_ARG_DST];
            plan_.steps.push_back(std::move(s));
            return true;
        }

        void eltwise(const Fused& f, const dnnl::memory& x) {
            const dnnl::eltwise_forward::primitive_desc pd(
                {dnnl::prop_kind::forward_inference, dnnl::algorithm::eltwise_relu, x.get_desc(), 0.f, 0.f},
                self_.engine_);
            Step s{dnnl::eltwise_forward(pd), {{DNNL_ARG_SRC, x}}};
            s.args[DNNL_ARG_DST] = fresh(pd.dst_desc());
            values_[f.output] = s.args[DNNL_ARG_DST];
            plan_.steps.push_back(std::move(s));
        }

        void add(const Fused& f, const layers::GraphNode& n, const dnnl::memory& a, const dnnl::primitive_attr& attr) {
            const dnnl::memory b = in_layout(values_.at(n.inputs[1]), a.get_desc());
            const dnnl::binary::primitive_desc pd(
                {dnnl::algorithm::binary_add, a.get_desc(), b.get_desc(), a.get_desc()}, attr, self_.engine_);
            Step s{dnnl::binary(pd), {{DNNL_ARG_SRC_0, a}, {DNNL_ARG_SRC_1, b}}};
            s.args[DNNL_ARG_DST] = fresh(pd.dst_desc());
            s.args[DNNL_ARG_SCRATCHPAD] = scratchpad(pd.scratchpad_desc());
            values_[f.output] = s.args[DNNL_ARG_DST];
            plan_.steps.push_back(std::move(s));
        }

        void pool(const Fused& f, const dnnl::memory& x, const dims& dst, const dims& kernel, const dims& strides,
                  const dims& pad, dnnl::algorithm kind) {
            const dnnl::pooling_forward::primitive_desc pd({dnnl::prop_kind::forward_inference,
                                                            kind,
                                                            x.get_desc(),
                                                            {dst, self_.compute_, tag::any},
                                                            strides,
                                                            kernel,
                                                            pad,
                                                            pad},
                                                           scratch_attr(), self_.engine_);
            Step s{dnnl::pooling_forward(pd), {{DNNL_ARG_SRC, x}}};
            s.args[DNNL_ARG_DST] = fresh(pd.dst_desc());
            s.args[DNNL_ARG_SCRATCHPAD] = scratchpad(pd.scratchpad_desc());
            values_[f.output] = s.args[DNNL_ARG_DST];
            plan_.steps.push_back(std::move(s));
        }

        // The classifier, on the pooled (N, C, 1, 1) features: y = x W^T + b into the caller's logits.
        void linear(const Fused& f, const layers::GraphNode& n, const dnnl::memory& x) {
            const auto in = x.get_desc().dims();
            const dims weights{n.out_features, in[1], 1, 1};
            const dnnl::memory::desc bias({n.out_features}, dt::f32, tag::x),
                dst({in[0], n.out_features}, dt::f32, tag::nc);
            using ip = dnnl::inner_product_forward;
            const ip::primitive_desc pd(
                {dnnl::prop_kind::forward_inference, x.get_desc(), {weights, self_.compute_, tag::any}, bias, dst},
                scratch_attr(), self_.engine_);
            Step s{ip(pd), {{DNNL_ARG_SRC, in_layout(x, pd.src_desc())}}};
            s.args[DNNL_ARG_WEIGHTS] =
                self_.parameter(n.name + ".weight", {weights, dt::f32, tag::oihw}, pd.weights_desc());
            s.args[DNNL_ARG_BIAS] = self_.parameter(n.name + ".bias", bias, bias);
            plan_.output = dnnl::memory(dst, self_.engine_, nullptr);
            plan_.classes = n.out_features;
            s.args[DNNL_ARG_DST] = plan_.output;
            s.args[DNNL_ARG_SCRATCHPAD] = scratchpad(pd.scratchpad_desc());
            values_[f.output] = plan_.output;
            plan_.steps.push_back(std::move(s));
        }

        static dnnl::primitive_attr scratch_attr() {
            dnnl::primitive_attr attr;
            attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
            return attr;
        }

        // A memory of `desc` on a buffer no live value holds (buffer 0 is the scratchpad).
        dnnl::memory fresh(const dnnl::memory::desc& desc) {
            std::size_t buffer = 1;
            while (buffer < live_.size() && live_[buffer] > 0) ++buffer;
            if (buffer == live_.size()) live_.push_back(0);
            live_[buffer] = 1;
            return bind(desc, int(buffer));
        }
        dnnl::memory bind(const dnnl::memory::desc& desc, int buffer) {
            self_.need(buffer, desc.get_size());
            dnnl::memory m(desc, self_.engine_, nullptr);
            plan_.bound.emplace_back(m, buffer);
            buffer_of_[m.get()] = buffer;
            return m;
        }
        // Value v's buffer, in layout `desc`, as the destination of the step that reads v last.
        dnnl::memory take_over(int v, const dnnl::memory::desc& desc) {
            const dnnl::memory m = in_layout(values_.at(v), desc);
            const int buffer = buffer_of_.at(m.get());
            if (m.get() == values_.at(v).get())
                ++live_[std::size_t(buffer)];  // v's and the output's, until v is released
            else
                temporaries_.pop_back();  // the reordered copy becomes the output
            return bind(desc, buffer);
        }
        // x in layout `desc`: x itself, or a reorder into a buffer of its own for this step.
        dnnl::memory in_layout(const dnnl::memory& x, const dnnl::memory::desc& desc) {
            if (x.get_desc() == desc) return x;
            dnnl::memory y = fresh(desc);
            plan_.steps.push_back({dnnl::reorder(x, y), {{DNNL_ARG_FROM, x}, {DNNL_ARG_TO, y}}});
            temporaries_.push_back(buffer_of_.at(y.get()));
            return y;
        }
        dnnl::memory scratchpad(const dnnl::memory::desc& desc) { return bind(desc, scratch_buffer); }

        // After a step: its inputs read for the last time and its temporaries give their buffers back.
        void finish(const Fused& f, const layers::GraphNode& n) {
            std::vector<int> read = n.inputs;
            if (f.sum >= 0) read.push_back(f.sum);
            for (int v : read) {
                if (--reads_[v] > 0 || v == 0) continue;
                --live_[std::size_t(buffer_of_.at(values_.at(v).get()))];
            }
            for (int t : temporaries_) --live_[std::size_t(t)];
            temporaries_.clear();
        }

        static constexpr int scratch_buffer = 0;
        CpuInference& self_;
        Plan& plan_;
        std::map<int, dnnl::memory> values_;
        std::map<int, int> reads_;
        std::map<dnnl_memory_t, int> buffer_of_;
        std::vector<int> live_{1};  // per buffer: the values (and temporaries) it holds
        std::vector<int> temporaries_;
    };

    Plan& plan_for(const Tensor& x) {
        auto& plan = plans_[{x.shape.n, x.shape.h, x.shape.w, x.shape.c, int(x.dtype)}];
        if (!plan) {
            plan = std::make_unique<Plan>();
            Planner(*this, *plan).build(x);
        }
        return *plan;
    }

    // A buffer at least `bytes` long (page-aligned, as oneDNN's own allocations).
    void need(int buffer, std::size_t bytes) {
        if (std::size_t(buffer) >= buffers_.size()) {
            buffers_.resize(std::size_t(buffer) + 1);
            sizes_.resize(std::size_t(buffer) + 1, 0);
        }
        if (sizes_[std::size_t(buffer)] >= bytes) return;
        const std::size_t rounded = (bytes + 4095) / 4096 * 4096;
        buffers_[std::size_t(buffer)].reset(static_cast<char*>(std::aligned_alloc(4096, rounded)));
        TESSERA_CHECK(buffers_[std::size_t(buffer)], "CpuInference: out of memory");
        sizes_[std::size_t(buffer)] = rounded;
    }

    // A weight or bias in the layout `wanted`, reordered from `user` once and shared by every plan.
    dnnl::memory parameter(const std::string& name, const dnnl::memory::desc& user, const dnnl::memory::desc& wanted) {
        for (auto& [desc, memory] : parameters_[name])
            if (desc == wanted) return memory;
        dnnl::memory source(user, engine_, const_cast<float*>(graph_.tensor(name).data()));
        dnnl::memory target(wanted, engine_);
        dnnl::reorder(source, target).execute(stream_, source, target);
        stream_.wait();
        parameters_[name].emplace_back(wanted, target);
        return target;
    }

    // Conv n's filters transformed for Winograd (winograd::transform_filters), once, shared by every plan.
    const std::vector<float>& winograd_filters(const layers::GraphNode& n) {
        auto [it, fresh] = winograd_filters_.try_emplace(n.name);
        if (fresh)
            it->second = cpu::winograd::transform_filters(graph_.tensor(n.name + ".weight").data(), n.conv.out_channels,
                                                          n.conv.in_channels);
        return it->second;
    }

    struct Free {
        void operator()(char* p) const { std::free(p); }
    };

    InferenceGraph graph_;
    std::vector<Fused> work_;
    dnnl::engine engine_{dnnl::engine::kind::cpu, 0};
    dnnl::stream stream_{engine_};
    dt compute_;
    std::map<std::tuple<int, int, int, int, int>, std::unique_ptr<Plan>> plans_;
    std::map<std::string, std::vector<std::pair<dnnl::memory::desc, dnnl::memory>>> parameters_;
    std::map<std::string, std::vector<float>> winograd_filters_;  // stable addresses: plans point to them
    bool winograd_ = cpu::winograd::enabled();
    std::vector<std::unique_ptr<char, Free>> buffers_;
    std::vector<std::size_t> sizes_;
};

/// A network's forward in evaluation mode, as fast as its backend runs it: compiled (CpuInference)
/// on the CPU where the graph compiles, the network's own forward elsewhere. It holds the weights
/// as they were when it was made: make a new one after they change (the trainer's validation does,
/// at every evaluation).
template <class B>
class InferenceForward {
public:
    /// On the CPU, `precision` is the compiled forward's (the context's activations); elsewhere the
    /// network computes in its context's precision.
    InferenceForward(models::Network<B>& net, DType precision) : net_(net) {
        if constexpr (std::is_same_v<B, cpu::Backend>) {
            const InferenceGraph graph = inference_graph(net);
            compiled_ = CpuInference::compile(graph, precision);
            TESSERA_CHECK(compiled_ || precision == DType::f32,  // the message is made only on failure
                          net.arch() + " runs in bf16 on the CPU only compiled, and " +
                              CpuInference::unsupported(graph).value_or(""));
        }
    }

    Tensor operator()(typename B::Context& ctx, const Tensor& x) {
        if constexpr (std::is_same_v<B, cpu::Backend>)
            if (compiled_) return compiled_->forward(ctx, x);
        return net_.forward(ctx, x);
    }
    /// Whether the compiled forward runs (else the network's layers).
    bool compiled() const { return compiled_.has_value(); }
    /// The kernels that run: the backend's, the compiled forward's precision where it runs, and
    /// Winograd's where a forward so far ran it or, before the first forward (a server's first line),
    /// where it may run.
    std::string kernels(typename B::Context& ctx) const {
        if (!compiled_) return B::kernels(ctx);
        const std::string ran = compiled_->kernels();
        const bool winograd =
            ran.empty() ? compiled_->may_run_winograd() : ran.find(CpuInference::winograd_kernel) != std::string::npos;
        return B::kernels(ctx) + ", compiled inference" + (ctx.activations == DType::bf16 ? " in bf16" : "") +
               (winograd ? std::string(", ") + CpuInference::winograd_kernel : "");
    }
    /// The compiled forward's own memory (0 for the layers', which use the context's arena).
    std::size_t bytes() const { return compiled_ ? compiled_->bytes() : 0; }

private:
    models::Network<B>& net_;
    std::optional<CpuInference> compiled_;
};

}  // namespace tessera::deploy
