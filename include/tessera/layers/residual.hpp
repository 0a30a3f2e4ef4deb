#pragma once
// Residual<Branch, Shortcut>: y = Branch(x) + Shortcut(x). Projection<Out, Stride> is ResNet's
// shortcut: the identity when the block keeps shape, else a strided 1x1 conv and a BatchNorm, named
// "downsample.0" and "downsample.1" as in torchvision.
#include <type_traits>
#include <utility>

#include "tessera/layers/batchnorm.hpp"
#include "tessera/layers/conv.hpp"
#include "tessera/layers/sequential.hpp"

namespace tessera::layers {

template <class B, Layer BranchLayer, Layer ShortcutLayer>
class ResidualLayer {
public:
    using Context = typename B::Context;
    static constexpr bool is_composite = true;

    ResidualLayer(BranchLayer branch, ShortcutLayer shortcut)
        : branch_(std::move(branch)), shortcut_(std::move(shortcut)) {}

    Shape output_shape(Shape in) const { return branch_.output_shape(in); }

    Tensor forward(Context& ctx, const Tensor& x) {
        ctx.input_is_private = false;  // both paths read x
        Tensor a = branch_.forward(ctx, x);
        ctx.input_is_private = false;
        Tensor b = shortcut_.forward(ctx, x);
        if (output_is_scratch(branch_)) {  // bn3's output: the sum goes in place, a tensor saved
            B::accumulate(ctx, b, a);
            return a;
        }
        Tensor y = ctx.arena.tensor(a.shape, a.dtype);
        B::add(ctx, a, b, y);
        return y;
    }
    // dx = dBranch + dShortcut. Either path may hand back dy itself (the identity), which belongs to
    // the caller: the sum then goes into the other path's gradient, or into a fresh one.
    Tensor backward(Context& ctx, const Tensor& dy) {
        Tensor a = branch_.backward(ctx, dy);
        Tensor b = shortcut_.backward(ctx, dy);
        if (!a.data || !b.data) {  // x is the network's input: no gradient is wanted
            for (const Tensor& t : {a, b})
                if (t.data && t.data != dy.data) ctx.grads.release(t);
            return Tensor{nullptr, a.shape};
        }
        if (a.data == dy.data && b.data == dy.data) {
            Tensor sum = ctx.grads.acquire(dy.shape, dy.dtype);
            B::add(ctx, a, b, sum);
            return sum;
        }
        if (a.data == dy.data) std::swap(a, b);
        B::accumulate(ctx, b, a);
        if (b.data != dy.data) ctx.grads.release(b);
        return a;
    }
    void visit(ParamVisitor& v) {
        branch_.visit(v);
        shortcut_.visit(v);
    }
    void init(Rng& rng, const InitOptions& o) {
        branch_.init(rng, o);
        shortcut_.init(rng, o);
    }
    Shape describe(Describer& d, Shape in) const {
        Shape out = branch_.describe(d, in);
        shortcut_.describe(d, in);
        d.row("Add", out, 0);
        return out;
    }
    int trace(Tracer& t, int x) const {
        const int a = branch_.trace(t, x);
        return t.add(a, shortcut_.trace(t, x));
    }

private:
    BranchLayer branch_;
    ShortcutLayer shortcut_;
};

template <class Branch, class Shortcut>
struct Residual {
    template <int In>
    static constexpr int out_channels = Branch::template out_channels<In>;
    template <int In, long Classes>
    static constexpr long params = Branch::template params<In, Classes> + Shortcut::template params<In, Classes>;

    template <int In, class B>
    static auto bind(const BindOptions& o) {
        static_assert(Branch::template out_channels<In> == Shortcut::template out_channels<In>,
                      "Residual<Branch, Shortcut>: the branch and the shortcut must give the same number of channels, "
                      "or their sum is undefined; use Projection<Out, Stride> as the shortcut");
        auto branch = bind_child<Branch, In, B>(o);
        auto shortcut = bind_child<Shortcut, In, B>(o);
        return ResidualLayer<B, decltype(branch), decltype(shortcut)>(std::move(branch), std::move(shortcut));
    }
};

template <int Out, int Stride>
struct Projection {
    template <int In>
    using Resolved = std::conditional_t<In == Out && Stride == 1, Identity,
                                        Named<"downsample", Seq<Conv<Out, 1, Stride>, BatchNorm<>>>>;

    template <int In>
    static constexpr int out_channels = Out;
    template <int In, long Classes>
    static constexpr long params = Resolved<In>::template params<In, Classes>;
    template <int In, class B>
    static auto bind(const BindOptions& o) {
        return bind_child<Resolved<In>, In, B>(o);
    }
};

}  // namespace tessera::layers
