#pragma once
// A line chart as SVG: axes with round ticks, one polyline per series, a legend, and optionally a
// logarithmic x axis and a marked x. Enough for a training report (the html logger) and the
// learning-rate finder's plot, which a browser shows with no network and no script.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

namespace tessera::report {

struct Series {
    std::string name, colour;
    std::vector<double> x, y;
};

/// Round tick values covering [lo, hi]: steps of 1, 2 or 5 times a power of ten.
inline std::vector<double> ticks(double lo, double hi, int wanted = 5) {
    const double raw = (hi - lo) / wanted, power = std::pow(10.0, std::floor(std::log10(raw)));
    double step = power;
    for (double m : {1.0, 2.0, 5.0, 10.0})
        if (raw <= m * power) {
            step = m * power;
            break;
        }
    std::vector<double> t;
    for (double v = std::ceil(lo / step) * step; v <= hi + step * 1e-9; v += step)
        t.push_back(std::abs(v) < step * 1e-9 ? 0 : v);
    return t;
}

inline std::string number_label(double v) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "%.4g", v);
    return buf;
}

inline std::string escape_xml(const std::string& s) {
    std::string out;
    for (char c : s) {
        if (c == '<')
            out += "&lt;";
        else if (c == '>')
            out += "&gt;";
        else if (c == '&')
            out += "&amp;";
        else if (c == '"')
            out += "&quot;";
        else
            out += c;
    }
    return out;
}

struct ChartOptions {
    bool log_x = false;   // x on a log10 scale, ticked at powers of ten
    double mark_x = NAN;  // a dashed vertical line here, if finite
};

/// The chart as an <svg> element, presentation inline (classes "grid" and "frame" let a page's
/// style change it); empty when no point is finite.
inline std::string svg_chart(const std::string& x_label, const std::vector<Series>& series,
                             const ChartOptions& options = {}) {
    auto at = [&](double x) { return options.log_x ? std::log10(x) : x; };
    double x0 = INFINITY, x1 = -INFINITY, y0 = INFINITY, y1 = -INFINITY;
    for (auto& s : series)
        for (std::size_t i = 0; i < s.x.size(); ++i)
            if (std::isfinite(s.y[i]) && std::isfinite(at(s.x[i]))) {
                x0 = std::min(x0, at(s.x[i])), x1 = std::max(x1, at(s.x[i]));
                y0 = std::min(y0, s.y[i]), y1 = std::max(y1, s.y[i]);
            }
    if (!std::isfinite(x0)) return "";
    std::string svg;
    if (x1 <= x0) x0 -= 0.5, x1 += 0.5;  // a single point sits in the middle
    if (y1 <= y0) y0 -= std::max(1e-9, std::abs(y0) * 0.05), y1 += std::max(1e-9, std::abs(y1) * 0.05);
    const double w = 560, h = 300, left = 64, right = 16, top = 12, bottom = 44;
    auto px = [&](double x) { return left + (x - x0) / (x1 - x0) * (w - left - right); };
    auto py = [&](double y) { return top + (y1 - y) / (y1 - y0) * (h - top - bottom); };
    char buf[160];
    std::snprintf(buf, sizeof buf,
                  "<svg xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 %g %g\" width=\"%g\" height=\"%g\" "
                  "font-family=\"sans-serif\" "
                  "font-size=\"11\">\n",
                  w, h, w, h);
    svg += buf;
    for (double t : ticks(y0, y1)) {
        std::snprintf(buf, sizeof buf,
                      "<line class=\"grid\" stroke=\"#ddd\" x1=\"%g\" x2=\"%g\" y1=\"%.1f\" y2=\"%.1f\"/>", left,
                      w - right, py(t), py(t));
        svg += buf;
        std::snprintf(buf, sizeof buf, "<text x=\"%g\" y=\"%.1f\" text-anchor=\"end\">", left - 6, py(t) + 4);
        svg += buf + number_label(t) + "</text>\n";
    }
    const std::vector<double> x_ticks = options.log_x ? [&] {
        std::vector<double> decades;
        for (double d = std::ceil(x0); d <= std::floor(x1); ++d) decades.push_back(d);
        return decades;
    }() : ticks(x0, x1);
    for (double t : x_ticks) {
        std::snprintf(buf, sizeof buf, "<text x=\"%.1f\" y=\"%g\" text-anchor=\"middle\">", px(t), h - bottom + 16);
        svg += buf + (options.log_x ? "1e" + number_label(t) : number_label(t)) + "</text>\n";
    }
    std::snprintf(
        buf, sizeof buf,
        "<rect class=\"frame\" fill=\"none\" stroke=\"#888\" x=\"%g\" y=\"%g\" width=\"%g\" height=\"%g\"/>\n", left,
        top, w - left - right, h - top - bottom);
    svg += buf;
    if (std::isfinite(at(options.mark_x))) {
        std::snprintf(buf, sizeof buf,
                      "<line stroke=\"#d62728\" stroke-dasharray=\"4\" x1=\"%.1f\" x2=\"%.1f\" y1=\"%g\" y2=\"%g\"/>\n",
                      px(at(options.mark_x)), px(at(options.mark_x)), top, h - bottom);
        svg += buf;
    }
    std::snprintf(buf, sizeof buf, "<text x=\"%g\" y=\"%g\" text-anchor=\"middle\">", (left + w - right) / 2, h - 6);
    svg += buf + escape_xml(x_label) + "</text>\n";
    double legend_x = left + 8;
    for (auto& s : series) {
        svg += "<polyline fill=\"none\" stroke-width=\"2\" stroke=\"" + s.colour + "\" points=\"";
        for (std::size_t i = 0; i < s.x.size(); ++i)
            if (std::isfinite(s.y[i]) && std::isfinite(at(s.x[i]))) {
                std::snprintf(buf, sizeof buf, "%.1f,%.1f ", px(at(s.x[i])), py(s.y[i]));
                svg += buf;
            }
        svg += "\"/>\n";
        if (s.x.size() == 1) {
            std::snprintf(buf, sizeof buf, "<circle r=\"3\" cx=\"%.1f\" cy=\"%.1f\" fill=\"%s\"/>\n", px(at(s.x[0])),
                          py(s.y[0]), s.colour.c_str());
            svg += buf;
        }
        std::snprintf(buf, sizeof buf,
                      "<rect x=\"%g\" y=\"%g\" width=\"12\" height=\"3\" fill=\"%s\"/><text x=\"%g\" y=\"%g\">",
                      legend_x, top + 10, s.colour.c_str(), legend_x + 16, top + 15);
        svg += buf + escape_xml(s.name) + "</text>\n";
        legend_x += 24 + 7 * double(s.name.size());
    }
    return svg + "</svg>";
}

/// The chart in a <figure> with its title, or a line saying there is nothing to plot yet: for an
/// HTML page.
inline std::string line_chart(const std::string& title, const std::string& x_label, const std::vector<Series>& series,
                              const ChartOptions& options = {}) {
    const std::string svg = svg_chart(x_label, series, options);
    if (svg.empty())
        return "<figure><figcaption>" + escape_xml(title) +
               "</figcaption>\n<p class=\"empty\">nothing to plot yet</p></figure>\n";
    return "<figure><figcaption>" + escape_xml(title) + "</figcaption>\n" + svg + "</figure>\n";
}

}  // namespace tessera::report
