#pragma once
// What a POST /v1/predict carries, read from its headers and body: the images (the body itself, or
// each file field of a multipart/form-data body, RFC 7578) and the query (?topk=K). Header-only and
// free of the network, so that the fuzz target (fuzz/fuzz_serve.cpp) runs exactly this code.
#include <algorithm>
#include <charconv>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

namespace tessera::serve {

/// A request the server refuses: the status to answer and why, for the JSON error.
struct HttpError : std::runtime_error {
    HttpError(int status, const std::string& why) : std::runtime_error(why), status(status) {}
    int status;
};

/// One image of a request: its name (the form's filename, or "body") and its bytes, a view into
/// the request's body.
struct Upload {
    std::string name;
    std::string_view bytes;
};

namespace detail {

inline std::string lower(std::string_view s) {
    std::string out(s);
    for (char& c : out) c = char(c >= 'A' && c <= 'Z' ? c + 32 : c);
    return out;
}

inline std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
    return s;
}

/// The media type of a Content-Type value, lower case, without its parameters.
inline std::string media_type(std::string_view content_type) {
    return lower(trim(content_type.substr(0, content_type.find(';'))));
}

/// A parameter of a header value ("multipart/form-data; boundary=xyz", "form-data; filename=\"a.png\""),
/// unquoted; empty when absent.
inline std::string parameter(std::string_view value, std::string_view name) {
    for (std::size_t at = value.find(';'); at != std::string_view::npos;) {
        const std::size_t next = value.find(';', at + 1);
        std::string_view item = trim(value.substr(at + 1, next == std::string_view::npos ? next : next - at - 1));
        at = next;
        const std::size_t eq = item.find('=');
        if (eq == std::string_view::npos || lower(trim(item.substr(0, eq))) != name) continue;
        std::string_view v = trim(item.substr(eq + 1));
        if (v.size() >= 2 && v.front() == '"' && v.back() == '"') v = v.substr(1, v.size() - 2);
        return std::string(v);
    }
    return {};
}

/// The image types the decoder reads (data/image.hpp), by their registered names.
inline bool is_image_type(const std::string& type) {
    for (const char* t :
         {"image/jpeg", "image/jpg", "image/pjpeg", "image/png", "image/gif", "image/bmp", "image/x-ms-bmp",
          "image/x-portable-anymap", "image/x-portable-pixmap", "image/x-portable-graymap", "application/octet-stream"})
        if (type == t) return true;
    return false;
}

/// The file fields of a multipart/form-data body (RFC 7578, RFC 2046 section 5.1.1): each part
/// that has a filename. Parts without one (text fields) are skipped.
inline std::vector<Upload> multipart_files(std::string_view body, const std::string& boundary) {
    if (boundary.empty() || boundary.size() > 70)
        throw HttpError(400, "multipart/form-data without a valid boundary parameter");
    const std::string delimiter = "--" + boundary;
    std::vector<Upload> files;
    std::size_t at = body.find(delimiter);
    if (at == std::string_view::npos) throw HttpError(400, "the multipart body has no part (no boundary line)");
    for (;;) {
        at += delimiter.size();
        if (body.substr(at, 2) == "--") break;  // the close delimiter
        if (body.substr(at, 2) != "\r\n") throw HttpError(400, "a multipart boundary line is not followed by CRLF");
        at += 2;
        const std::size_t headers_end = body.find("\r\n\r\n", at);
        if (headers_end == std::string_view::npos) throw HttpError(400, "a multipart part's headers do not end");
        const std::size_t end = body.find("\r\n" + delimiter, headers_end + 4);
        if (end == std::string_view::npos) throw HttpError(400, "the multipart body ends inside a part (truncated?)");
        std::string filename, type;
        bool has_filename = false;
        for (std::size_t line = at; line < headers_end;) {
            const std::size_t eol = std::min(body.find("\r\n", line), headers_end);
            const std::string_view header = body.substr(line, eol - line);
            line = eol + 2;
            const std::size_t colon = header.find(':');
            if (colon == std::string_view::npos) continue;
            const std::string name = lower(trim(header.substr(0, colon)));
            const std::string_view value = header.substr(colon + 1);
            if (name == "content-disposition") {
                has_filename = value.find("filename") != std::string_view::npos;
                filename = parameter(value, "filename");
            } else if (name == "content-type") {
                type = media_type(value);
            }
        }
        if (has_filename) {
            if (!type.empty() && !is_image_type(type))
                throw HttpError(
                    415, "the file \"" + filename + "\" is " + type + ", not an image (JPEG, PNG, GIF, BMP, PNM)");
            files.push_back(
                {filename.empty() ? "upload" : filename, body.substr(headers_end + 4, end - headers_end - 4)});
        }
        at = end + 2;
    }
    return files;
}

}  // namespace detail

/// The images of a POST /v1/predict: the body when it is an image type, the file fields of a
/// multipart/form-data body; otherwise 415, and 400 for a body that holds no image.
inline std::vector<Upload> read_uploads(std::string_view content_type, std::string_view body) {
    const std::string type = detail::media_type(content_type);
    std::vector<Upload> uploads;
    if (type == "multipart/form-data")
        uploads = detail::multipart_files(body, detail::parameter(content_type, "boundary"));
    else if (detail::is_image_type(type))
        uploads.push_back({"body", body});
    else
        throw HttpError(415, (type.empty() ? std::string("no Content-Type") : "Content-Type " + type) +
                                 ": send the image as image/jpeg or image/png, or as a multipart/form-data file field");
    if (uploads.empty()) throw HttpError(400, "the form has no file field");
    for (const Upload& u : uploads)
        if (u.bytes.empty()) throw HttpError(400, "the image \"" + u.name + "\" is empty");
    return uploads;
}

/// A request target split into its path and the value of one query parameter ("" when absent).
inline std::string_view target_path(std::string_view target) { return target.substr(0, target.find('?')); }
inline std::string_view query_value(std::string_view target, std::string_view key) {
    const std::size_t q = target.find('?');
    if (q == std::string_view::npos) return {};
    std::string_view query = target.substr(q + 1);
    while (!query.empty()) {
        const std::size_t amp = query.find('&');
        const std::string_view item = query.substr(0, amp);
        query = amp == std::string_view::npos ? std::string_view{} : query.substr(amp + 1);
        const std::size_t eq = item.find('=');
        if (item.substr(0, eq) == key) return eq == std::string_view::npos ? std::string_view{} : item.substr(eq + 1);
    }
    return {};
}

/// ?topk=K: 1 <= K <= classes (5 when absent, at most the class count); 400 otherwise.
inline int read_topk(std::string_view target, int classes) {
    const std::string_view text = query_value(target, "topk");
    if (text.empty()) return std::min(5, classes);
    int k = 0;
    const auto [end, error] = std::from_chars(text.data(), text.data() + text.size(), k);
    if (error != std::errc() || end != text.data() + text.size() || k < 1 || k > classes)
        throw HttpError(400, "topk must be a whole number from 1 to " + std::to_string(classes) + ", not \"" +
                                 std::string(text) + "\"");
    return k;
}

}  // namespace tessera::serve
