#pragma once
// A small JSON reader and string escaper: enough for safetensors headers and the JSON lines tessera
// writes. The reader is strict (RFC 8259), bounds every depth and length, and reports the byte
// offset of the first error.
#include <cctype>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "tessera/core/error.hpp"

namespace tessera::json {

struct Value;
using Object = std::map<std::string, Value>;
using Array = std::vector<Value>;

struct Value {
    std::variant<std::nullptr_t, bool, double, std::string, std::shared_ptr<Array>, std::shared_ptr<Object>> v;

    bool is_object() const { return std::holds_alternative<std::shared_ptr<Object>>(v); }
    bool is_array() const { return std::holds_alternative<std::shared_ptr<Array>>(v); }
    bool is_string() const { return std::holds_alternative<std::string>(v); }
    bool is_number() const { return std::holds_alternative<double>(v); }
    const Object& object() const { return *std::get<std::shared_ptr<Object>>(v); }
    const Array& array() const { return *std::get<std::shared_ptr<Array>>(v); }
    const std::string& string() const { return std::get<std::string>(v); }
    double number() const { return std::get<double>(v); }
    /// An object's member (std::out_of_range when absent).
    const Value& at(const std::string& key) const { return object().at(key); }
};

class Parser {
public:
    Parser(std::string_view text, std::string source) : s_(text), source_(std::move(source)) {}

    Value parse() {
        Value v = value(0);
        skip_space();
        if (pos_ != s_.size()) fail("unexpected text after the JSON value");
        return v;
    }

private:
    static constexpr int max_depth = 64;

    [[noreturn]] void fail(const std::string& what) const {
        throw user_error(source_, "malformed JSON at byte " + std::to_string(pos_) + ": " + what);
    }
    void skip_space() {
        while (pos_ < s_.size() && (s_[pos_] == ' ' || s_[pos_] == '\t' || s_[pos_] == '\n' || s_[pos_] == '\r'))
            ++pos_;
    }
    bool eat(char c) {
        skip_space();
        if (pos_ < s_.size() && s_[pos_] == c) return ++pos_, true;
        return false;
    }
    void expect(char c) {
        if (!eat(c)) fail(std::string("expected '") + c + "'");
    }
    bool literal(std::string_view word) {
        if (s_.substr(pos_, word.size()) == word) return pos_ += word.size(), true;
        return false;
    }

    Value value(int depth) {
        if (depth > max_depth) fail("nested too deeply");
        skip_space();
        if (pos_ >= s_.size()) fail("unexpected end");
        const char c = s_[pos_];
        if (c == '{') return object(depth);
        if (c == '[') return array(depth);
        if (c == '"') return Value{string()};
        if (literal("true")) return Value{true};
        if (literal("false")) return Value{false};
        if (literal("null")) return Value{nullptr};
        return Value{number()};
    }
    Value object(int depth) {
        ++pos_;
        auto obj = std::make_shared<Object>();
        if (eat('}')) return Value{obj};
        do {
            skip_space();
            if (pos_ >= s_.size() || s_[pos_] != '"') fail("expected a key");
            std::string key = string();
            expect(':');
            (*obj)[key] = value(depth + 1);
        } while (eat(','));
        expect('}');
        return Value{obj};
    }
    Value array(int depth) {
        ++pos_;
        auto arr = std::make_shared<Array>();
        if (eat(']')) return Value{arr};
        do arr->push_back(value(depth + 1));
        while (eat(','));
        expect(']');
        return Value{arr};
    }
    std::string string() {
        ++pos_;  // opening quote
        std::string out;
        while (pos_ < s_.size() && s_[pos_] != '"') {
            char c = s_[pos_++];
            if (static_cast<unsigned char>(c) < 0x20) fail("control character in a string");
            if (c != '\\') {
                out += c;
                continue;
            }
            if (pos_ >= s_.size()) break;
            char e = s_[pos_++];
            switch (e) {
                case '"':
                case '\\':
                case '/':
                    out += e;
                    break;
                case 'b':
                    out += '\b';
                    break;
                case 'f':
                    out += '\f';
                    break;
                case 'n':
                    out += '\n';
                    break;
                case 'r':
                    out += '\r';
                    break;
                case 't':
                    out += '\t';
                    break;
                case 'u': {
                    if (pos_ + 4 > s_.size()) fail("short \\u escape");
                    for (std::size_t i = 0; i < 4; ++i)
                        if (!std::isxdigit(static_cast<unsigned char>(s_[pos_ + i]))) fail("bad \\u escape");
                    unsigned code = std::stoul(std::string(s_.substr(pos_, 4)), nullptr, 16);
                    pos_ += 4;
                    // Names in our files are ASCII; other code points are kept as UTF-8.
                    if (code < 0x80)
                        out += char(code);
                    else if (code < 0x800)
                        out += char(0xC0 | (code >> 6)), out += char(0x80 | (code & 0x3F));
                    else
                        out += char(0xE0 | (code >> 12)), out += char(0x80 | ((code >> 6) & 0x3F)),
                            out += char(0x80 | (code & 0x3F));
                    break;
                }
                default:
                    fail("bad escape");
            }
        }
        if (pos_ >= s_.size()) fail("unterminated string");
        ++pos_;
        return out;
    }
    double number() {
        const std::size_t start = pos_;
        if (pos_ < s_.size() && s_[pos_] == '-') ++pos_;
        while (pos_ < s_.size() && (std::isdigit(static_cast<unsigned char>(s_[pos_])) || s_[pos_] == '.' ||
                                    s_[pos_] == 'e' || s_[pos_] == 'E' || s_[pos_] == '+' || s_[pos_] == '-'))
            ++pos_;
        if (start == pos_) fail("expected a value");
        try {
            std::size_t used = 0;
            std::string text(s_.substr(start, pos_ - start));
            double d = std::stod(text, &used);
            if (used != text.size()) fail("bad number");
            return d;
        } catch (const std::logic_error&) {
            fail("bad number");
        }
    }

    std::string_view s_;
    std::string source_;
    std::size_t pos_ = 0;
};

inline Value parse(std::string_view text, const std::string& source) { return Parser(text, source).parse(); }

/// "text" with JSON escapes.
inline std::string quote(std::string_view text) {
    std::string out = "\"";
    for (char c : text) {
        switch (c) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += c;
                }
        }
    }
    return out + "\"";
}

}  // namespace tessera::json
