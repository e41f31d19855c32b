// The filters, tests and globals of the interpreter: Jinja2's built-ins that chat
// templates call, and transformers' additions (tojson as json.dumps(ensure_ascii=False),
// raise_exception, strftime_now). Python's str methods are in jinja_methods.cpp.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <ctime>
#include <set>
#include <vector>

#include "daemon/chat/jinja_ast.h"

namespace cascade::chat::jinja {
namespace {

// `a.b.c` of an item (selectattr, map, sort, join, sum).
Value path(const Value& v, const std::string& attr) {
  Value cur = v;
  size_t i = 0;
  while (i <= attr.size()) {
    const size_t j = std::min(attr.find('.', i), attr.size());
    const std::string key = attr.substr(i, j - i);
    if (!cur.is_data() || !cur.data.is_object() || !cur.data.contains(key)) {
      if (cur.is_data() && cur.data.is_array() && !key.empty() && std::all_of(key.begin(), key.end(), ::isdigit) &&
          std::stoul(key) < cur.data.size())
        cur = Value(cur.data[std::stoul(key)]);
      else
        return Value::undefined("no attribute '" + key + "'");
    } else {
      cur = Value(cur.data[key]);
    }
    i = j + 1;
  }
  return cur;
}

Json list_of(const std::vector<Value>& v) {
  Json a = Json::array();
  for (const Value& x : v) a.push_back(x.json("a list item"));
  return a;
}

Value tojson(Value& in, Args& a, Kwargs& kw, int line) {
  if (bool_arg(a, kw, 99, "ensure_ascii", false)) fail(line, "tojson(ensure_ascii=True) is not supported");
  const Value ind = arg(a, kw, 0, "indent");
  int indent = -1;
  if (!ind.is_undefined() && !(ind.is_data() && ind.data.is_null())) {
    if (!ind.is_data() || !ind.data.is_number_integer()) fail(line, "tojson indent must be an integer");
    indent = static_cast<int>(std::clamp<int64_t>(ind.data.get<int64_t>(), 0, 64));
  }
  std::string isep = indent >= 0 ? "," : ", ", ksep = ": ";
  if (const Value* s = kwarg(kw, "separators"); s && s->is_data() && s->data.is_array() && s->data.size() == 2) {
    isep = s->data[0].get<std::string>();
    ksep = s->data[1].get<std::string>();
  }
  return Value(Json(dump_json(in.json("tojson"), indent, bool_arg(a, kw, 99, "sort_keys", false), isep, ksep)));
}

Value sort(const std::vector<Value>& items, bool reverse, bool case_sensitive, const std::string& attr, int line) {
  std::vector<Value> v = items;
  auto key = [&](const Value& x) {
    Value k = attr.empty() ? x : path(x, attr);
    if (!case_sensitive && k.is_data() && k.data.is_string()) k = Value(Json(lower(k.data.get<std::string>())));
    return k;
  };
  std::stable_sort(v.begin(), v.end(), [&](const Value& p, const Value& q) {
    return reverse ? compare(key(q), key(p), line) < 0 : compare(key(p), key(q), line) < 0;
  });
  return Value(list_of(v));
}

using Call = std::function<Value(const Value&, Args&, Kwargs&)>;

// select/reject/selectattr/rejectattr: keep items whose (attribute's) test result is `keep`.
Value select(const std::vector<Value>& items, Args& a, size_t first, bool by_attr, bool keep, int line) {
  const std::string attr =
      by_attr ? (first > 0 && a.size() >= first ? text(a[first - 1], "selectattr", line) : "") : "";
  Json out = Json::array();
  for (const Value& x : items) {
    const Value v = by_attr ? path(x, attr) : x;
    bool ok;
    if (a.size() > first) {
      Args rest(a.begin() + static_cast<std::ptrdiff_t>(first) + 1, a.end());
      ok = apply_test(text(a[first], "a test name", line), v, rest, line);
    } else {
      ok = truthy(v);
    }
    if (ok == keep) out.push_back(x.json("a selected item"));
  }
  return Value(std::move(out));
}

}  // namespace

Value apply_filter(const std::string& name, Value& in, Args& a, Kwargs& kw, int line, const Call& call) {
  if (name == "default" || name == "d") {
    const bool boolean = bool_arg(a, kw, 1, "boolean", false);
    if (in.is_undefined() || (boolean && !truthy(in))) {
      const Value d = arg(a, kw, 0, "default_value");
      return d.is_undefined() ? Value(Json("")) : d;
    }
    return in;
  }
  if (name == "safe") return in;
  if (name == "length" || name == "count") return Value(Json(length(in, line)));
  if (name == "string") return Value(Json(to_str(in)));
  if (name == "tojson") return tojson(in, a, kw, line);
  if (name == "list") return Value(list_of(iterate(in, line)));
  if (name == "items") {
    Json out = Json::array();
    if (in.is_undefined()) return Value(out);
    const Json& o = in.json("items");
    if (!o.is_object()) fail(line, "items() needs a dict, got " + type_name(in));
    for (auto it = o.begin(); it != o.end(); ++it) out.push_back(Json::array({it.key(), it.value()}));
    return Value(std::move(out));
  }
  if (name == "dictsort") {
    Value pairs = apply_filter("items", in, a, kw, line, call);
    std::vector<Value> v = iterate(pairs, line);
    const bool by_value = str_arg(a, kw, 1, "by", "key", line) == "value";
    return sort(v, bool_arg(a, kw, 2, "reverse", false), bool_arg(a, kw, 0, "case_sensitive", false),
                by_value ? "1" : "0", line);
  }
  if (name == "join") {
    const std::string sep = str_arg(a, kw, 0, "d", "", line), attr = str_arg(a, kw, 1, "attribute", "", line);
    std::string out;
    bool first = true;
    for (const Value& x : iterate(in, line)) {
      out += (first ? "" : sep) + to_str(attr.empty() ? x : path(x, attr));
      first = false;
    }
    return Value(Json(out));
  }
  if (name == "first" || name == "last") {
    std::vector<Value> v = iterate(in, line);
    if (v.empty()) return Value::undefined("no " + name + " item of an empty sequence");
    return name == "first" ? v.front() : v.back();
  }
  if (name == "reverse") {
    if (in.is_data() && in.data.is_string()) {
      std::vector<Value> c = iterate(in, line);
      std::string s;
      for (auto it = c.rbegin(); it != c.rend(); ++it) s += it->data.get<std::string>();
      return Value(Json(s));
    }
    std::vector<Value> v = iterate(in, line);
    std::reverse(v.begin(), v.end());
    return Value(list_of(v));
  }
  if (name == "sort")
    return sort(iterate(in, line), bool_arg(a, kw, 0, "reverse", false), bool_arg(a, kw, 1, "case_sensitive", false),
                str_arg(a, kw, 2, "attribute", "", line), line);
  if (name == "unique") {
    Json out = Json::array();
    std::vector<Value> seen;
    for (const Value& x : iterate(in, line)) {
      if (std::none_of(seen.begin(), seen.end(), [&](const Value& s) { return equal(s, x); })) {
        seen.push_back(x);
        out.push_back(x.json("unique"));
      }
    }
    return Value(std::move(out));
  }
  if (name == "min" || name == "max") {
    std::vector<Value> v = iterate(in, line);
    if (v.empty()) return Value::undefined("min/max of an empty sequence");
    Value best = v[0];
    for (const Value& x : v) {
      const int c = compare(x, best, line);
      if (name == "min" ? c < 0 : c > 0) best = x;
    }
    return best;
  }
  if (name == "sum") {
    const std::string attr = str_arg(a, kw, 0, "attribute", "", line);
    Value total = arg(a, kw, 1, "start");
    if (total.is_undefined()) total = Value(Json(0));
    for (const Value& x : iterate(in, line)) {
      const Value v = attr.empty() ? x : path(x, attr);
      const Json& p = total.json("sum");
      const Json& q = v.json("sum");
      if (!p.is_number() || !q.is_number()) fail(line, "sum needs numbers");
      total = p.is_number_integer() && q.is_number_integer() ? Value(Json(p.get<int64_t>() + q.get<int64_t>()))
                                                             : Value(Json(p.get<double>() + q.get<double>()));
    }
    return total;
  }
  if (name == "map") {
    Json out = Json::array();
    const Value* attr = kwarg(kw, "attribute");
    for (const Value& x : iterate(in, line)) {
      if (attr) {
        Value v = path(x, text(*attr, "map(attribute=)", line));
        if (v.is_undefined()) {
          const Value* d = kwarg(kw, "default");
          v = d ? *d : Value(Json(nullptr));
          if (!d) fail(line, "map(attribute=...): an item has no attribute '" + attr->data.get<std::string>() + "'");
        }
        out.push_back(v.json("map"));
      } else {
        if (a.empty()) fail(line, "map needs a filter name or attribute=");
        Args rest(a.begin() + 1, a.end());
        Kwargs none;
        Value item = x;
        out.push_back(apply_filter(text(a[0], "map", line), item, rest, none, line, call).json("map"));
      }
    }
    return Value(std::move(out));
  }
  if (name == "select" || name == "reject") return select(iterate(in, line), a, 0, false, name == "select", line);
  if (name == "selectattr" || name == "rejectattr") {
    if (a.empty()) fail(line, name + " needs an attribute name");
    return select(iterate(in, line), a, 1, true, name == "selectattr", line);
  }
  if (name == "attr") return path(in, str_arg(a, kw, 0, "name", "", line));
  if (name == "int" || name == "float" || name == "abs" || name == "round") {
    const Json& j = in.is_undefined() ? Json(0) : in.json(name.c_str());
    double d = 0;
    if (j.is_number() || j.is_boolean())
      d = j.is_boolean() ? j.get<bool>() : j.get<double>();
    else if (j.is_string()) {
      try {
        d = std::stod(j.get<std::string>());
      } catch (const std::exception&) {
        d = 0;
      }
    }
    if (name == "int") return Value(Json(static_cast<int64_t>(d)));
    if (name == "float") return Value(Json(d));
    if (name == "abs")
      return j.is_number_integer() ? Value(Json(std::llabs(j.get<int64_t>()))) : Value(Json(std::fabs(d)));
    const double p = std::pow(10.0, static_cast<double>(int_arg(a, kw, 0, "precision", 0, line)));
    const std::string method = str_arg(a, kw, 1, "method", "common", line);
    const double r = method == "ceil" ? std::ceil(d * p) : method == "floor" ? std::floor(d * p) : std::round(d * p);
    return Value(Json(r / p));
  }
  if (name == "e" || name == "escape") {
    std::string out;
    for (char c : to_str(in)) {
      switch (c) {
        case '&':
          out += "&amp;";
          break;
        case '<':
          out += "&lt;";
          break;
        case '>':
          out += "&gt;";
          break;
        case '"':
          out += "&#34;";
          break;
        case '\'':
          out += "&#39;";
          break;
        default:
          out += c;
      }
    }
    return Value(Json(out));
  }
  if (name == "indent") {
    const int64_t width = int_arg(a, kw, 0, "width", 4, line);
    const bool first = bool_arg(a, kw, 1, "first", false), blank = bool_arg(a, kw, 2, "blank", false);
    const std::string pad(static_cast<size_t>(std::clamp<int64_t>(width, 0, 256)), ' ');
    const std::string newline = "\n";
    const Json lines = split(to_str(in), &newline, -1);
    std::string out;
    for (size_t i = 0; i < lines.size(); ++i) {
      const std::string l = lines[i].get<std::string>();
      if (i) out += "\n";
      if ((i > 0 || first) && (blank || !l.empty())) out += pad;
      out += l;
    }
    return Value(Json(out));
  }
  if (name == "wordcount") return Value(Json(split(to_str(in), nullptr, -1).size()));
  // String filters and their method twins.
  static const std::set<std::string> as_method = {"upper", "lower", "title", "capitalize", "replace"};
  if (as_method.count(name)) {
    Value m = method(Value(Json(to_str(in))), name, line);
    return (*m.fn)(a, kw);
  }
  if (name == "trim") {
    const Value c = arg(a, kw, 0, "chars");
    const std::string s = to_str(in);
    if (c.is_undefined() || (c.is_data() && c.data.is_null())) return Value(Json(strip(s, nullptr, true, true)));
    return Value(Json(strip(s, &text(c, "trim", line), true, true)));
  }
  fail(line, "unknown filter '" + name + "'");
}

bool apply_test(const std::string& name, const Value& in, Args& a, int line) {
  const bool data = in.is_data();
  const Json& j = in.data;
  auto other = [&]() -> const Value& {
    if (a.empty()) fail(line, "test '" + name + "' needs an argument");
    return a[0];
  };
  if (name == "defined") return !in.is_undefined();
  if (name == "undefined") return in.is_undefined();
  if (name == "none") return data && j.is_null();
  if (name == "boolean") return data && j.is_boolean();
  if (name == "true") return data && j.is_boolean() && j.get<bool>();
  if (name == "false") return data && j.is_boolean() && !j.get<bool>();
  if (name == "string") return data && j.is_string();
  if (name == "number") return data && j.is_number();
  if (name == "integer") return data && j.is_number_integer();
  if (name == "float") return data && j.is_number_float();
  if (name == "mapping") return (data && j.is_object()) || in.kind == Value::Kind::kNamespace;
  if (name == "sequence") return data && (j.is_array() || j.is_string() || j.is_object());
  if (name == "iterable") return data && (j.is_array() || j.is_string() || j.is_object());
  if (name == "callable") return in.kind == Value::Kind::kCallable;
  if (name == "lower" || name == "upper") {
    if (!data || !j.is_string()) return false;
    const std::string& s = j.get_ref<const std::string&>();
    return s == (name == "lower" ? lower(s) : upper(s));
  }
  if (name == "odd" || name == "even" || name == "divisibleby") {
    if (!data || !j.is_number_integer()) fail(line, "test '" + name + "' needs an integer");
    const int64_t n = j.get<int64_t>();
    if (name == "odd") return n % 2 != 0;
    if (name == "even") return n % 2 == 0;
    const Value& d = other();
    if (!d.is_data() || !d.data.is_number_integer() || d.data.get<int64_t>() == 0)
      fail(line, "divisibleby needs a non-zero integer");
    return n % d.data.get<int64_t>() == 0;
  }
  if (name == "eq" || name == "equalto" || name == "==") return equal(in, other());
  if (name == "ne" || name == "!=") return !equal(in, other());
  if (name == "lt" || name == "lessthan" || name == "<") return compare(in, other(), line) < 0;
  if (name == "le" || name == "<=") return compare(in, other(), line) <= 0;
  if (name == "gt" || name == "greaterthan" || name == ">") return compare(in, other(), line) > 0;
  if (name == "ge" || name == ">=") return compare(in, other(), line) >= 0;
  if (name == "sameas") return equal(in, other()) && type_name(in) == type_name(other());
  if (name == "in") {
    const Value& c = other();
    if (c.is_undefined()) fail(line, c.name);
    const Json& h = c.json("'in'");
    if (h.is_string())
      return text(in, "'in' a string", line).empty() ||
             h.get_ref<const std::string&>().find(text(in, "'in' a string", line)) != std::string::npos;
    if (h.is_object()) return data && j.is_string() && h.contains(j.get<std::string>());
    if (h.is_array()) return std::any_of(h.begin(), h.end(), [&](const Json& x) { return equal(in, Value(x)); });
    if (c.kind == Value::Kind::kNamespace) return data && j.is_string() && c.ns->contains(j.get<std::string>());
    fail(line, "argument of type '" + type_name(c) + "' is not iterable");
  }
  fail(line, "unknown test '" + name + "'");
}

Value global(const std::string& name) {
  if (name == "raise_exception")
    return Value::callable([](Args& a, Kwargs&) -> Value {
      throw TemplateError(a.empty() ? "raise_exception() was called" : to_str(a[0]), /*raised=*/true);
    });
  if (name == "strftime_now")
    return Value::callable([](Args& a, Kwargs&) {
      const std::time_t now = std::time(nullptr);
      std::tm tm{};
      localtime_r(&now, &tm);
      char buf[256];
      const std::string fmt = a.empty() ? "" : to_str(a[0]);
      const size_t n = std::strftime(buf, sizeof buf, fmt.c_str(), &tm);
      return Value(Json(std::string(buf, n)));
    });
  if (name == "range")
    return Value::callable([](Args& a, Kwargs&) {
      int64_t v[3] = {0, 0, 1};
      if (a.empty() || a.size() > 3) throw TemplateError("chat template: range() takes 1 to 3 arguments");
      for (size_t i = 0; i < a.size(); ++i) {
        const Json& j = a[i].json("range()");
        if (!j.is_number_integer()) throw TemplateError("chat template: range() takes integers");
        v[a.size() == 1 ? 1 : i] = j.get<int64_t>();
      }
      if (v[2] == 0) throw TemplateError("chat template: range() step must not be zero");
      Json out = Json::array();
      for (int64_t i = v[0]; v[2] > 0 ? i < v[1] : i > v[1]; i += v[2]) {
        if (out.size() >= 1'000'000) throw TemplateError("chat template: range() too long");
        out.push_back(i);
      }
      return Value(std::move(out));
    });
  if (name == "namespace" || name == "dict")
    return Value::callable([name](Args& a, Kwargs& kw) {
      auto obj = std::make_shared<Json>(Json::object());
      for (const Value& x : a) {
        const Json& j = x.json(name.c_str());
        if (!j.is_object()) throw TemplateError("chat template: " + name + "() takes a dict or keywords");
        for (auto it = j.begin(); it != j.end(); ++it) (*obj)[it.key()] = it.value();
      }
      for (auto& [k, v] : kw) (*obj)[k] = v.json(name.c_str());
      Value r;
      if (name == "dict") return Value(*obj);
      r.kind = Value::Kind::kNamespace;
      r.ns = obj;
      return r;
    });
  return Value();
}

}  // namespace cascade::chat::jinja
