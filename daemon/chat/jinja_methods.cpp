// Python's str and dict methods for the interpreter, the string operations the filters
// share with them (case mapping, strip, split, replace), and the argument access every
// built-in uses.
#include <algorithm>
#include <cctype>
#include <cstdint>
#include <set>
#include <vector>

#include "daemon/chat/jinja_ast.h"

namespace cascade::chat::jinja {
namespace {

bool is_space(char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; }

// Case mapping as Python's str methods do it, for ASCII, Latin-1, Latin Extended-A,
// Greek and Cyrillic (the scripts whose case a chat template might change); other code
// points are left as they are.
std::vector<uint32_t> code_points(const std::string& s) {
  std::vector<uint32_t> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    uint32_t cp = n == 1 ? c : c & (0x3F >> (n - 1));
    for (int k = 1; k < n && i + static_cast<size_t>(k) < s.size(); ++k)
      cp = (cp << 6) | (static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) & 0x3F);
    out.push_back(cp);
    i += static_cast<size_t>(n);
  }
  return out;
}
uint32_t to_lower(uint32_t c) {
  if ((c >= 'A' && c <= 'Z') || (c >= 0xC0 && c <= 0xDE && c != 0xD7) || (c >= 0x391 && c <= 0x3AB && c != 0x3A2) ||
      (c >= 0x410 && c <= 0x42F))
    return c + 0x20;
  if (c >= 0x400 && c <= 0x40F) return c + 0x50;
  if (c >= 0x100 && c <= 0x17F && c != 0x130 && c != 0x138 && c != 0x149 && c != 0x178) {
    const bool odd_upper = (c >= 0x139 && c <= 0x148) || (c >= 0x179 && c <= 0x17E);
    if ((c % 2 == 1) == odd_upper) return c + 1;
  }
  if (c == 0x178) return 0xFF;
  return c;
}
uint32_t to_upper(uint32_t c) {
  if ((c >= 'a' && c <= 'z') || (c >= 0xE0 && c <= 0xFE && c != 0xF7) || (c >= 0x3B1 && c <= 0x3CB && c != 0x3C2) ||
      (c >= 0x430 && c <= 0x44F))
    return c - 0x20;
  if (c == 0x3C2) return 0x3A3;
  if (c >= 0x450 && c <= 0x45F) return c - 0x50;
  if (c == 0xFF) return 0x178;
  if (c >= 0x100 && c <= 0x17F && c != 0x131 && c != 0x138 && c != 0x149 && to_lower(c - 1) == c) return c - 1;
  return c;
}
bool cased(uint32_t c) { return to_lower(c) != c || to_upper(c) != c; }

}  // namespace

std::string utf8(const std::vector<uint32_t>& cps) {
  std::string s;
  for (uint32_t cp : cps) {
    if (cp < 0x80) {
      s += static_cast<char>(cp);
    } else if (cp < 0x800) {
      s += static_cast<char>(0xC0 | (cp >> 6));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
      s += static_cast<char>(0xE0 | (cp >> 12));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    } else {
      s += static_cast<char>(0xF0 | (cp >> 18));
      s += static_cast<char>(0x80 | ((cp >> 12) & 0x3F));
      s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
      s += static_cast<char>(0x80 | (cp & 0x3F));
    }
  }
  return s;
}

const Value* kwarg(Kwargs& kw, const std::string& name) {
  for (auto& [k, v] : kw)
    if (k == name) return &v;
  return nullptr;
}
// Argument `i` (positional) or `name` (keyword), else undefined.
Value arg(Args& a, Kwargs& kw, size_t i, const std::string& name) {
  if (i < a.size()) return a[i];
  const Value* v = kwarg(kw, name);
  return v ? *v : Value::undefined("missing argument '" + name + "'");
}
std::string str_arg(Args& a, Kwargs& kw, size_t i, const std::string& name, const std::string& dflt, int line) {
  const Value v = arg(a, kw, i, name);
  if (v.is_undefined() || (v.is_data() && v.data.is_null())) return dflt;
  if (!v.is_data() || !v.data.is_string()) fail(line, "argument '" + name + "' must be a string");
  return v.data.get<std::string>();
}
int64_t int_arg(Args& a, Kwargs& kw, size_t i, const std::string& name, int64_t dflt, int line) {
  const Value v = arg(a, kw, i, name);
  if (v.is_undefined() || (v.is_data() && v.data.is_null())) return dflt;
  if (!v.is_data() || !v.data.is_number_integer()) fail(line, "argument '" + name + "' must be an integer");
  return v.data.get<int64_t>();
}
bool bool_arg(Args& a, Kwargs& kw, size_t i, const std::string& name, bool dflt) {
  const Value v = arg(a, kw, i, name);
  return v.is_undefined() ? dflt : truthy(v);
}
const std::string& text(const Value& v, const char* what, int line) {
  if (!v.is_data() || !v.data.is_string()) fail(line, std::string(what) + " needs a string, got " + type_name(v));
  return v.data.get_ref<const std::string&>();
}

std::string strip(const std::string& s, const std::string* chars, bool left, bool right) {
  auto drop = [&](char c) { return chars ? chars->find(c) != std::string::npos : is_space(c); };
  size_t a = 0, b = s.size();
  if (left)
    while (a < b && drop(s[a])) ++a;
  if (right)
    while (b > a && drop(s[b - 1])) --b;
  return s.substr(a, b - a);
}
Json split(const std::string& s, const std::string* sep, int64_t max) {
  Json out = Json::array();
  if (!sep) {  // runs of whitespace, no empty pieces
    size_t i = 0;
    while (i < s.size()) {
      while (i < s.size() && is_space(s[i])) ++i;
      if (i >= s.size()) break;
      if (max >= 0 && static_cast<int64_t>(out.size()) == max) {
        out.push_back(strip(s.substr(i), nullptr, false, true));
        return out;
      }
      size_t j = i;
      while (j < s.size() && !is_space(s[j])) ++j;
      out.push_back(s.substr(i, j - i));
      i = j;
    }
    return out;
  }
  if (sep->empty()) throw TemplateError("chat template: empty separator");
  size_t i = 0;
  for (;;) {
    const size_t j = s.find(*sep, i);
    if (j == std::string::npos || (max >= 0 && static_cast<int64_t>(out.size()) == max)) break;
    out.push_back(s.substr(i, j - i));
    i = j + sep->size();
  }
  out.push_back(s.substr(i));
  return out;
}
std::string replace_all(std::string s, const std::string& from, const std::string& to, int64_t count) {
  if (from.empty()) return s;
  size_t i = 0;
  for (int64_t n = 0; (count < 0 || n < count) && (i = s.find(from, i)) != std::string::npos; ++n) {
    s.replace(i, from.size(), to);
    i += to.size();
  }
  return s;
}
std::string lower(const std::string& s) {
  std::vector<uint32_t> cps = code_points(s);
  for (uint32_t& c : cps) c = to_lower(c);
  return utf8(cps);
}
std::string upper(const std::string& s) {
  std::vector<uint32_t> cps = code_points(s);
  for (uint32_t& c : cps) c = to_upper(c);
  return utf8(cps);
}
std::string title(const std::string& s) {
  std::vector<uint32_t> cps = code_points(s);
  bool start = true;
  for (uint32_t& c : cps) {
    const bool letter = cased(c);
    c = letter ? (start ? to_upper(c) : to_lower(c)) : c;
    start = !letter;
  }
  return utf8(cps);
}
std::string capitalize(const std::string& s) {
  std::vector<uint32_t> cps = code_points(lower(s));
  if (!cps.empty()) cps[0] = to_upper(cps[0]);
  return utf8(cps);
}

Value method(const Value& self, const std::string& name, int line) {
  const Json& j = self.data;
  if (j.is_object()) {
    if (name == "items" || name == "keys" || name == "values") {
      return Value::callable([j, name](Args&, Kwargs&) {
        Json out = Json::array();
        for (auto it = j.begin(); it != j.end(); ++it) {
          if (name == "items")
            out.push_back(Json::array({it.key(), it.value()}));
          else
            out.push_back(name == "keys" ? Json(it.key()) : it.value());
        }
        return Value(std::move(out));
      });
    }
    if (name == "get") {
      return Value::callable([j, line](Args& a, Kwargs& kw) {
        const Value k = arg(a, kw, 0, "key");
        const std::string key = text(k, "get()", line);
        if (j.contains(key)) return Value(j.at(key));
        const Value d = arg(a, kw, 1, "default");
        return d.is_undefined() ? Value(Json(nullptr)) : d;
      });
    }
    return Value();
  }
  if (!j.is_string()) {
    static const std::set<std::string> mutating = {"append", "extend", "pop", "insert", "remove", "clear", "update"};
    if (j.is_array() && mutating.count(name)) fail(line, "a chat template may not change a list (" + name + ")");
    return Value();
  }
  const std::string s = j.get<std::string>();
  auto fn = [](auto f) { return Value::callable(std::move(f)); };
  if (name == "strip" || name == "lstrip" || name == "rstrip")
    return fn([s, name, line](Args& a, Kwargs& kw) {
      const Value c = arg(a, kw, 0, "chars");
      const bool none = c.is_undefined() || (c.is_data() && c.data.is_null());
      const std::string* chars = none ? nullptr : &text(c, "strip", line);
      return Value(Json(strip(s, chars, name != "rstrip", name != "lstrip")));
    });
  if (name == "split" || name == "rsplit")
    return fn([s, line, name](Args& a, Kwargs& kw) {
      const Value sep = arg(a, kw, 0, "sep");
      const int64_t max = int_arg(a, kw, 1, "maxsplit", -1, line);
      const bool none = sep.is_undefined() || (sep.is_data() && sep.data.is_null());
      if (name == "rsplit" && max >= 0) fail(line, "rsplit with maxsplit is not supported");
      return Value(split(s, none ? nullptr : &text(sep, "split", line), max));
    });
  if (name == "startswith" || name == "endswith")
    return fn([s, name, line](Args& a, Kwargs& kw) {
      const Value p = arg(a, kw, 0, "prefix");
      std::vector<std::string> options;
      if (p.is_data() && p.data.is_array())
        for (const Json& x : p.data) options.push_back(x.is_string() ? x.get<std::string>() : "");
      else
        options.push_back(text(p, name.c_str(), line));
      for (const std::string& o : options) {
        if (o.size() > s.size()) continue;
        if (name == "startswith" ? s.compare(0, o.size(), o) == 0 : s.compare(s.size() - o.size(), o.size(), o) == 0)
          return Value(Json(true));
      }
      return Value(Json(false));
    });
  if (name == "upper" || name == "lower" || name == "title" || name == "capitalize")
    return fn([s, name](Args&, Kwargs&) {
      if (name == "upper") return Value(Json(upper(s)));
      if (name == "lower") return Value(Json(lower(s)));
      return Value(Json(name == "title" ? title(s) : capitalize(s)));
    });
  if (name == "replace")
    return fn([s, line](Args& a, Kwargs& kw) {
      return Value(Json(replace_all(s, str_arg(a, kw, 0, "old", "", line), str_arg(a, kw, 1, "new", "", line),
                                    int_arg(a, kw, 2, "count", -1, line))));
    });
  if (name == "find" || name == "rfind" || name == "count")
    return fn([s, name, line](Args& a, Kwargs& kw) {
      const std::string sub = str_arg(a, kw, 0, "sub", "", line);
      if (name == "count") {
        int64_t n = 0;
        for (size_t i = sub.empty() ? std::string::npos : s.find(sub); i != std::string::npos;
             i = s.find(sub, i + sub.size()))
          ++n;
        return Value(Json(sub.empty() ? static_cast<int64_t>(s.size()) + 1 : n));
      }
      const size_t i = name == "find" ? s.find(sub) : s.rfind(sub);
      return Value(Json(i == std::string::npos ? int64_t{-1} : static_cast<int64_t>(i)));
    });
  if (name == "join")
    return fn([s, line](Args& a, Kwargs& kw) {
      std::string out;
      bool first = true;
      for (const Value& x : iterate(arg(a, kw, 0, "iterable"), line)) {
        out += (first ? "" : s) + text(x, "join", line);
        first = false;
      }
      return Value(Json(out));
    });
  if (name == "removeprefix" || name == "removesuffix")
    return fn([s, name, line](Args& a, Kwargs& kw) {
      const std::string x = str_arg(a, kw, 0, "affix", "", line);
      if (name == "removeprefix" && s.compare(0, x.size(), x) == 0) return Value(Json(s.substr(x.size())));
      if (name == "removesuffix" && x.size() <= s.size() && s.compare(s.size() - x.size(), x.size(), x) == 0)
        return Value(Json(s.substr(0, s.size() - x.size())));
      return Value(Json(s));
    });
  if (name == "splitlines")
    return fn([s](Args&, Kwargs&) {
      Json out = Json::array();
      std::string cur;
      for (size_t i = 0; i < s.size(); ++i) {
        if (s[i] == '\n' || s[i] == '\r') {
          out.push_back(cur);
          cur.clear();
          if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
        } else {
          cur += s[i];
        }
      }
      if (!cur.empty()) out.push_back(cur);
      return Value(std::move(out));
    });
  if (name == "isdigit" || name == "isalpha" || name == "isalnum" || name == "isspace" || name == "islower" ||
      name == "isupper")
    return fn([s, name](Args&, Kwargs&) {
      if (s.empty()) return Value(Json(false));
      auto all = [&](int (*f)(int)) {
        return std::all_of(s.begin(), s.end(), [&](char c) { return f(static_cast<unsigned char>(c)) != 0; });
      };
      if (name == "isdigit") return Value(Json(all(::isdigit)));
      if (name == "isalpha") return Value(Json(all(::isalpha)));
      if (name == "isalnum") return Value(Json(all(::isalnum)));
      if (name == "isspace") return Value(Json(all(::isspace)));
      const bool any_alpha =
          std::any_of(s.begin(), s.end(), [](char c) { return std::isalpha(static_cast<unsigned char>(c)); });
      return Value(Json(any_alpha && (name == "islower" ? s == lower(s) : s == upper(s))));
    });
  return Value();
}

}  // namespace cascade::chat::jinja
