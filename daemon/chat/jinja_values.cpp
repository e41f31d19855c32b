// Python's semantics for the interpreter's values: str(), repr(), json.dumps(),
// truthiness, equality, ordering, len() and iteration.
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "daemon/chat/jinja_ast.h"

namespace cascade::chat::jinja {
namespace {

// float.__repr__: the shortest digits that read back as the same double, in fixed
// notation for exponents in [-4, 16) and scientific otherwise.
std::string float_repr(double x) {
  if (std::isnan(x)) return "nan";
  if (std::isinf(x)) return x > 0 ? "inf" : "-inf";
  if (x == 0) return std::signbit(x) ? "-0.0" : "0.0";
  char buf[40];
  for (int p = 1; p <= 17; ++p) {
    std::snprintf(buf, sizeof buf, "%.*e", p - 1, x);
    if (std::strtod(buf, nullptr) == x) break;
  }
  std::string s(buf), sign;
  if (s[0] == '-') {
    sign = "-";
    s.erase(0, 1);
  }
  const size_t e = s.find('e');
  const int exp = std::atoi(s.c_str() + e + 1);
  std::string digits;
  for (size_t i = 0; i < e; ++i)
    if (s[i] != '.') digits += s[i];
  while (digits.size() > 1 && digits.back() == '0') digits.pop_back();
  if (exp >= -4 && exp < 16) {
    if (exp >= 0) {
      std::string ip = digits.substr(0, std::min<size_t>(digits.size(), static_cast<size_t>(exp) + 1));
      while (ip.size() < static_cast<size_t>(exp) + 1) ip += '0';
      std::string fp = digits.size() > static_cast<size_t>(exp) + 1 ? digits.substr(static_cast<size_t>(exp) + 1) : "0";
      return sign + ip + "." + fp;
    }
    return sign + "0." + std::string(static_cast<size_t>(-exp - 1), '0') + digits;
  }
  std::string m = digits.substr(0, 1) + (digits.size() > 1 ? "." + digits.substr(1) : "");
  char ex[16];
  std::snprintf(ex, sizeof ex, "e%c%02d", exp < 0 ? '-' : '+', std::abs(exp));
  return sign + m + ex;
}

std::string str_repr(const std::string& s) {
  const bool dq = s.find('\'') != std::string::npos && s.find('"') == std::string::npos;
  const char q = dq ? '"' : '\'';
  std::string out(1, q);
  for (unsigned char c : s) {
    if (c == '\\')
      out += "\\\\";
    else if (c == q)
      out += std::string("\\") + static_cast<char>(q);
    else if (c == '\n')
      out += "\\n";
    else if (c == '\r')
      out += "\\r";
    else if (c == '\t')
      out += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char b[8];
      std::snprintf(b, sizeof b, "\\x%02x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + q;
}

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
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
      case '\b':
        out += "\\b";
        break;
      case '\f':
        out += "\\f";
        break;
      default:
        if (c < 0x20) {
          char b[8];
          std::snprintf(b, sizeof b, "\\u%04x", c);
          out += b;
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

void dump(const Json& j, int indent, bool sort, const std::string& isep, const std::string& ksep, int depth,
          std::string& out) {
  const std::string nl = indent >= 0 ? "\n" + std::string(static_cast<size_t>(indent * (depth + 1)), ' ') : "";
  const std::string close_nl = indent >= 0 ? "\n" + std::string(static_cast<size_t>(indent * depth), ' ') : "";
  if (j.is_object()) {
    if (j.empty()) {
      out += "{}";
      return;
    }
    std::vector<std::string> keys;
    for (auto it = j.begin(); it != j.end(); ++it) keys.push_back(it.key());
    if (sort) std::sort(keys.begin(), keys.end());
    out += "{";
    for (size_t i = 0; i < keys.size(); ++i) {
      out += (i ? isep : "") + nl + json_string(keys[i]) + ksep;
      dump(j.at(keys[i]), indent, sort, isep, ksep, depth + 1, out);
    }
    out += close_nl + "}";
  } else if (j.is_array()) {
    if (j.empty()) {
      out += "[]";
      return;
    }
    out += "[";
    for (size_t i = 0; i < j.size(); ++i) {
      out += (i ? isep : "") + nl;
      dump(j[i], indent, sort, isep, ksep, depth + 1, out);
    }
    out += close_nl + "]";
  } else if (j.is_string()) {
    out += json_string(j.get_ref<const std::string&>());
  } else if (j.is_number_float()) {
    const double d = j.get<double>();
    out += std::isnan(d) ? "NaN" : (std::isinf(d) ? (d > 0 ? "Infinity" : "-Infinity") : float_repr(d));
  } else {
    out += j.dump();  // null, true, false, integers
  }
}

}  // namespace

std::string dump_json(const Json& j, int indent, bool sort_keys, const std::string& item_sep,
                      const std::string& key_sep) {
  std::string out;
  dump(j, indent, sort_keys, item_sep, key_sep, 0, out);
  return out;
}

std::string repr(const Json& j) {
  switch (j.type()) {
    case Json::value_t::null:
      return "None";
    case Json::value_t::boolean:
      return j.get<bool>() ? "True" : "False";
    case Json::value_t::number_float:
      return float_repr(j.get<double>());
    case Json::value_t::string:
      return str_repr(j.get_ref<const std::string&>());
    case Json::value_t::array: {
      std::string s = "[";
      for (size_t i = 0; i < j.size(); ++i) s += (i ? ", " : "") + repr(j[i]);
      return s + "]";
    }
    case Json::value_t::object: {
      std::string s = "{";
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it, first = false)
        s += (first ? "" : ", ") + str_repr(it.key()) + ": " + repr(it.value());
      return s + "}";
    }
    default:
      return j.dump();  // integers
  }
}

std::string to_str(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "";
    case Value::Kind::kNamespace:
      return "<Namespace " + repr(*v.ns) + ">";
    case Value::Kind::kCallable:
      return "<function>";
    case Value::Kind::kData:
      return v.data.is_string() ? v.data.get<std::string>() : repr(v.data);
  }
  return "";
}

std::string type_name(const Value& v) {
  switch (v.kind) {
    case Value::Kind::kUndefined:
      return "Undefined";
    case Value::Kind::kNamespace:
      return "Namespace";
    case Value::Kind::kCallable:
      return "function";
    case Value::Kind::kData:
      break;
  }
  switch (v.data.type()) {
    case Json::value_t::null:
      return "NoneType";
    case Json::value_t::boolean:
      return "bool";
    case Json::value_t::number_float:
      return "float";
    case Json::value_t::string:
      return "str";
    case Json::value_t::array:
      return "list";
    case Json::value_t::object:
      return "dict";
    default:
      return "int";
  }
}

bool truthy(const Value& v) {
  if (v.kind != Value::Kind::kData) return v.kind != Value::Kind::kUndefined;
  const Json& j = v.data;
  if (j.is_null()) return false;
  if (j.is_boolean()) return j.get<bool>();
  if (j.is_number_float()) return j.get<double>() != 0;
  if (j.is_number()) return j.get<int64_t>() != 0;
  if (j.is_string()) return !j.get_ref<const std::string&>().empty();
  return !j.empty();  // lists, dicts
}

namespace {
bool numeric(const Json& j) { return j.is_number() || j.is_boolean(); }
double as_double(const Json& j) { return j.is_boolean() ? (j.get<bool>() ? 1.0 : 0.0) : j.get<double>(); }
}  // namespace

bool equal(const Value& a, const Value& b) {
  if (a.is_undefined() || b.is_undefined()) return a.is_undefined() && b.is_undefined();
  if (a.kind != Value::Kind::kData || b.kind != Value::Kind::kData) return a.ns == b.ns && a.fn == b.fn;
  const Json &x = a.data, &y = b.data;
  if (numeric(x) && numeric(y)) {
    if (!x.is_number_float() && !y.is_number_float() && !x.is_boolean() && !y.is_boolean())
      return x.get<int64_t>() == y.get<int64_t>();
    return as_double(x) == as_double(y);
  }
  if (x.is_array() && y.is_array()) {
    if (x.size() != y.size()) return false;
    for (size_t i = 0; i < x.size(); ++i)
      if (!equal(Value(x[i]), Value(y[i]))) return false;
    return true;
  }
  return x == y;
}

int compare(const Value& a, const Value& b, int line) {
  const Json& x = a.json("a comparison");
  const Json& y = b.json("a comparison");
  if (numeric(x) && numeric(y)) {
    if (!x.is_number_float() && !y.is_number_float() && !x.is_boolean() && !y.is_boolean())
      return x.get<int64_t>() < y.get<int64_t>() ? -1 : (x.get<int64_t>() > y.get<int64_t>() ? 1 : 0);
    const double p = as_double(x), q = as_double(y);
    return p < q ? -1 : (p > q ? 1 : 0);
  }
  if (x.is_string() && y.is_string()) return x.get_ref<const std::string&>().compare(y.get_ref<const std::string&>());
  if (x.is_array() && y.is_array()) {
    for (size_t i = 0; i < x.size() && i < y.size(); ++i) {
      const int c = compare(Value(x[i]), Value(y[i]), line);
      if (c) return c;
    }
    return x.size() < y.size() ? -1 : (x.size() > y.size() ? 1 : 0);
  }
  fail(line, "'<' not supported between instances of '" + type_name(a) + "' and '" + type_name(b) + "'");
}

std::vector<Value> iterate(const Value& v, int line) {
  std::vector<Value> out;
  if (v.is_undefined()) return out;
  const Json& j = v.json("a loop");
  if (j.is_array()) {
    for (const Json& x : j) out.emplace_back(x);
  } else if (j.is_object()) {
    for (auto it = j.begin(); it != j.end(); ++it) out.emplace_back(Json(it.key()));
  } else if (j.is_string()) {
    const std::string& s = j.get_ref<const std::string&>();
    for (size_t i = 0; i < s.size();) {
      const unsigned char c = static_cast<unsigned char>(s[i]);
      const size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
      out.emplace_back(Json(s.substr(i, n)));
      i += n;
    }
  } else {
    fail(line, "'" + type_name(v) + "' object is not iterable");
  }
  return out;
}

int64_t length(const Value& v, int line) {
  if (v.is_undefined()) return 0;
  const Json& j = v.json("length");
  if (j.is_string()) return static_cast<int64_t>(iterate(v, line).size());
  if (j.is_array() || j.is_object()) return static_cast<int64_t>(j.size());
  fail(line, "object of type '" + type_name(v) + "' has no len()");
}

}  // namespace cascade::chat::jinja
