// runner serve's request path on any bytes: Beast's HTTP parser (request line, headers, chunked or
// sized body, with the server's limits), then what the server reads of a POST /v1/predict (the
// query's topk, the Content-Type, a multipart/form-data body's file fields) and each image to the
// decoder and validation's transform, as serve's decoder threads do. Each must answer or throw
// the error the server turns into a 4xx; nothing may read out of bounds.
#include <utility>  // std::exchange, which Boost 1.74's asio uses without including it

#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>

#include "../runner/serve/request.hpp"
#include "tessera/data/image.hpp"
#include "tessera/data/transform.hpp"

namespace http = boost::beast::http;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    static tessera::data::ImageDecoder decoder;
    static tessera::data::ImageTransform transform;
    static std::vector<std::uint8_t> pixels(32 * 32 * 3);
    http::request_parser<http::string_body> parser;
    parser.eager(true);
    parser.body_limit(1 << 20);
    parser.header_limit(16 * 1024);
    boost::beast::error_code ec;
    parser.put(boost::asio::buffer(data, size), ec);
    if (!ec && !parser.is_done()) parser.put_eof(ec);
    if (ec || !parser.is_done()) return 0;
    const auto& req = parser.get();
    try {
        (void)tessera::serve::read_topk({req.target().data(), req.target().size()}, 10);
        for (const auto& upload : tessera::serve::read_uploads(
                 {req[http::field::content_type].data(), req[http::field::content_type].size()}, req.body())) {
            const std::span<const std::uint8_t> bytes(reinterpret_cast<const std::uint8_t*>(upload.bytes.data()),
                                                      upload.bytes.size());
            try {
                (void)decoder.header(bytes);
                transform.val(bytes, {.image_size = 32, .val_resize = 36, .val_crop = 32}, pixels.data());
            } catch (const tessera::data::DecodeError&) {}
        }
    } catch (const tessera::serve::HttpError& e) {
        if (e.status < 400 || e.status > 499) __builtin_trap();  // a request's own fault is a 4xx
    }
    return 0;
}
