// The ResNet family's convolutions (forward, data gradient, filter gradient) on whichever oneDNN this
// is compiled against, in tessera's layouts (NHWC activations, the filters in the layout each
// primitive prefers): milliseconds per call and the kernel oneDNN chose. Built and run by
// bench/onednn_versions.sh against Debian's oneDNN 2.x (the one tessera and python3-torch link) and
// PyPI's 3.x, to choose between them by measurement. Usage: onednn_conv [bf16|f32]
#include <dnnl.hpp>
#include <chrono>
#include <cstdio>
#include <vector>
using namespace dnnl;
using tag = memory::format_tag;
using dt = memory::data_type;
struct S {
    int n, h, ic, oc, k, s;
};
static double time_ms(auto&& f, int reps) {
    f();
    auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < reps; ++i) f();
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / reps;
}
int main(int argc, char** argv) {
    engine eng(engine::kind::cpu, 0);
    stream st(eng);
    bool bf = argc > 1 && argv[1][0] == 'b';
    dt c = bf ? dt::bf16 : dt::f32;
    std::vector<S> shapes = {{128, 28, 16, 16, 3, 1},  {128, 28, 16, 32, 3, 2},  {128, 14, 32, 32, 3, 1},
                             {128, 7, 64, 64, 3, 1},   {32, 224, 3, 64, 7, 2},   {32, 56, 64, 64, 3, 1},
                             {32, 56, 256, 128, 1, 1}, {32, 28, 128, 128, 3, 1}, {32, 14, 256, 256, 3, 1},
                             {32, 7, 512, 2048, 1, 1}};
    printf("dnnl %d.%d %s\n", dnnl_version()->major, dnnl_version()->minor, bf ? "bf16" : "f32");
    for (auto sh : shapes) {
        int pad = sh.k / 2, oh = (sh.h + 2 * pad - sh.k) / sh.s + 1;
        memory::dims src{sh.n, sh.ic, sh.h, sh.h}, dst{sh.n, sh.oc, oh, oh}, w{sh.oc, sh.ic, sh.k, sh.k},
            str{sh.s, sh.s}, p{pad, pad};
        memory::desc s(src, c, tag::nhwc), d(dst, c, tag::nhwc), wa(w, c, tag::any), ga(w, dt::f32, tag::any);
        primitive_attr attr;
#if DNNL_VERSION_MAJOR >= 3
        convolution_forward::primitive_desc f(eng, prop_kind::forward_training, algorithm::convolution_direct, s, wa, d,
                                              str, p, p, attr);
        convolution_backward_data::primitive_desc bd(eng, algorithm::convolution_direct, s, wa, d, str, p, p, f, attr);
        convolution_backward_weights::primitive_desc bw(eng, algorithm::convolution_direct, s, ga, d, str, p, p, f,
                                                        attr);
#else
        convolution_forward::primitive_desc f(
            {prop_kind::forward_training, algorithm::convolution_direct, s, wa, d, str, p, p}, attr, eng);
        convolution_backward_data::primitive_desc bd({algorithm::convolution_direct, s, wa, d, str, p, p}, attr, eng,
                                                     f);
        convolution_backward_weights::primitive_desc bw({algorithm::convolution_direct, s, ga, d, str, p, p}, attr, eng,
                                                        f);
#endif
        memory ms(s, eng), md(d, eng), mw(f.weights_desc(), eng), mwd(bd.weights_desc(), eng),
            mg(bw.diff_weights_desc(), eng);
        memory mds(s, eng), mdd(d, eng);
        for (auto* m : {&ms, &md, &mdd}) {
            auto* p8 = (unsigned char*)m->get_data_handle();
            for (size_t i = 0; i < m->get_desc().get_size(); ++i) p8[i] = (i * 7) % 61 ? 0x3c : 0;
        }
        for (auto* m : {&mw, &mwd}) {
            auto* p8 = (unsigned char*)m->get_data_handle();
            for (size_t i = 0; i < m->get_desc().get_size(); ++i) p8[i] = 0x3c - (i % 3);
        }
        convolution_forward cf(f);
        convolution_backward_data cbd(bd);
        convolution_backward_weights cbw(bw);
        int reps = sh.n == 128 ? 10 : 3;
        double tf = time_ms(
            [&] {
                cf.execute(st, {{DNNL_ARG_SRC, ms}, {DNNL_ARG_WEIGHTS, mw}, {DNNL_ARG_DST, md}});
                st.wait();
            },
            reps);
        double tbd =
            sh.ic == 3 ? 0
                       : time_ms(
                             [&] {
                                 cbd.execute(
                                     st, {{DNNL_ARG_DIFF_DST, mdd}, {DNNL_ARG_WEIGHTS, mwd}, {DNNL_ARG_DIFF_SRC, mds}});
                                 st.wait();
                             },
                             reps);
        double tbw = time_ms(
            [&] {
                cbw.execute(st, {{DNNL_ARG_SRC, ms}, {DNNL_ARG_DIFF_DST, mdd}, {DNNL_ARG_DIFF_WEIGHTS, mg}});
                st.wait();
            },
            reps);
        printf("%3d %3d² %4d→%4d %d/%d  fwd %7.2f  bwd_d %7.2f  bwd_w %7.2f  | %s | %s | %s\n", sh.n, sh.h, sh.ic,
               sh.oc, sh.k, sh.s, tf, tbd, tbw, f.impl_info_str(), bd.impl_info_str(), bw.impl_info_str());
    }
}
