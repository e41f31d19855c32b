// The interpreter: statements write into an output string, expressions evaluate to
// Values. Scopes follow Jinja2: a for loop's body and a macro's body have their own
// (a `set` there does not leak out, hence namespaces); if blocks do not.
#include <cmath>

#include "daemon/chat/jinja_ast.h"

namespace cascade::chat {
namespace jinja {
namespace {

// Limits that keep a hostile template from running away with the daemon.
constexpr size_t kMaxOutput = 16u << 20;  // bytes rendered
constexpr int kMaxDepth = 200;            // nested macro calls
constexpr int64_t kMaxSteps = 1'000'000;  // loop iterations and macro calls

struct Break {};
struct Continue {};

class Renderer {
 public:
  explicit Renderer(const Json& context) {
    scopes_.emplace_back();
    if (!context.is_object()) throw TemplateError("chat template context must be an object");
    for (auto it = context.begin(); it != context.end(); ++it) scopes_.back()[it.key()] = Value(it.value());
  }

  void exec(const Node& n, std::string& out) {
    switch (n.kind) {
      case Node::Kind::kBody:
        for (const NodePtr& k : n.kids) exec(*k, out);
        return;
      case Node::Kind::kText:
        append(out, n.text, n.line);
        return;
      case Node::Kind::kOutput:
        append(out, to_str(eval(*n.kids[0])), n.line);
        return;
      case Node::Kind::kIf:
        exec_if(n, out);
        return;
      case Node::Kind::kFor:
        exec_for(n, out);
        return;
      case Node::Kind::kSet:
        assign(n.text, eval(*n.kids[0]), n.line);
        return;
      case Node::Kind::kSetBlock: {
        std::string s;
        exec(*n.kids[0], s);
        assign(n.text, Value(Json(s)), n.line);
        return;
      }
      case Node::Kind::kMacro:
        define_macro(n);
        return;
      case Node::Kind::kBreak:
        if (!loops_) fail(n.line, "'break' outside a loop");
        throw Break{};
      case Node::Kind::kContinue:
        if (!loops_) fail(n.line, "'continue' outside a loop");
        throw Continue{};
      case Node::Kind::kFilterBlock: {
        std::string s;
        exec(*n.kids[0], s);
        Value v{Json(s)};
        Args a;
        Kwargs kw;
        append(out, to_str(apply_filter(n.text, v, a, kw, n.line, call_fn())), n.line);
        return;
      }
      default:
        fail(n.line, "not a statement");
    }
  }

 private:
  using Scope = std::map<std::string, Value>;

  void append(std::string& out, const std::string& s, int line) {
    if (out.size() + s.size() > kMaxOutput) fail(line, "the rendered prompt passes 16 MiB");
    out += s;
  }
  void step(int line) {
    if (++steps_ > kMaxSteps) fail(line, "the template runs too long (a loop without end?)");
  }

  Value lookup(const std::string& name) const {
    for (auto it = scopes_.rbegin(); it != scopes_.rend(); ++it) {
      auto f = it->find(name);
      if (f != it->end()) return f->second;
    }
    Value g = global(name);
    return g.is_undefined() ? Value::undefined("'" + name + "' is undefined") : g;
  }

  void assign(const std::string& target, Value v, int line) {
    const size_t dot = target.find('.');
    if (dot == std::string::npos) {
      scopes_.back()[target] = std::move(v);
      return;
    }
    Value ns = lookup(target.substr(0, dot));
    if (ns.kind != Value::Kind::kNamespace)
      fail(line, "cannot set an attribute of " + type_name(ns) + " (only of a namespace)");
    (*ns.ns)[target.substr(dot + 1)] = v.json("a namespace attribute");
  }

  void exec_if(const Node& n, std::string& out) {
    const bool has_else = n.negated;
    const size_t pairs = (n.kids.size() - (has_else ? 1 : 0)) / 2;
    for (size_t i = 0; i < pairs; ++i) {
      if (truthy(eval(*n.kids[2 * i]))) {
        exec(*n.kids[2 * i + 1], out);
        return;
      }
    }
    if (has_else) exec(*n.kids.back(), out);
  }

  void exec_for(const Node& n, std::string& out) {
    const Value seq = eval(*n.kids[0]);
    std::vector<Value> items = seq.is_undefined() ? std::vector<Value>{} : iterate(seq, n.line);
    if (n.kids[1]) {  // `for x in xs if cond`: filtered before loop.* counts
      std::vector<Value> kept;
      for (Value& v : items) {
        scopes_.emplace_back();
        bind(n, v);
        const bool keep = truthy(eval(*n.kids[1]));
        scopes_.pop_back();
        if (keep) kept.push_back(std::move(v));
      }
      items = std::move(kept);
    }
    const int64_t len = static_cast<int64_t>(items.size());
    ++loops_;
    for (int64_t i = 0; i < len; ++i) {
      step(n.line);
      scopes_.emplace_back();
      bind(n, items[static_cast<size_t>(i)]);
      Json loop = {{"index", i + 1}, {"index0", i},         {"first", i == 0},         {"last", i == len - 1},
                   {"length", len},  {"revindex", len - i}, {"revindex0", len - i - 1}};
      loop["previtem"] =
          i > 0 && items[static_cast<size_t>(i - 1)].is_data() ? items[static_cast<size_t>(i - 1)].data : Json();
      loop["nextitem"] =
          i + 1 < len && items[static_cast<size_t>(i + 1)].is_data() ? items[static_cast<size_t>(i + 1)].data : Json();
      scopes_.back()["loop"] = Value(std::move(loop));
      bool stop = false;
      try {
        exec(*n.kids[2], out);
      } catch (const Break&) {
        stop = true;
      } catch (const Continue&) {
      }
      scopes_.pop_back();
      if (stop) break;
    }
    --loops_;
    if (len == 0 && n.kids[3]) exec(*n.kids[3], out);
  }

  void bind(const Node& n, const Value& v) {
    if (n.names.size() == 1) {
      scopes_.back()[n.names[0]] = v;
      return;
    }
    const Json& j = v.json("a loop item");
    if (!j.is_array() || j.size() != n.names.size())
      fail(n.line, "cannot unpack " + type_name(v) + " into " + std::to_string(n.names.size()) + " names");
    for (size_t k = 0; k < n.names.size(); ++k) scopes_.back()[n.names[k]] = Value(j[k]);
  }

  void define_macro(const Node& n) {
    const Node* m = &n;
    scopes_.back()[n.text] = Value::callable([this, m](Args& args, Kwargs& kw) {
      if (++depth_ > kMaxDepth) fail(m->line, "macros nest too deep");
      step(m->line);
      Scope s;
      if (args.size() > m->names.size())
        fail(m->line, "macro '" + m->text + "' takes " + std::to_string(m->names.size()) + " arguments");
      for (size_t i = 0; i < m->names.size(); ++i) {
        if (i < args.size())
          s[m->names[i]] = args[i];
        else if (m->kids[1 + i])
          s[m->names[i]] = eval(*m->kids[1 + i]);
        else
          s[m->names[i]] = Value::undefined("'" + m->names[i] + "' is undefined");
      }
      for (auto& [k, v] : kw) {
        bool known = false;
        for (const std::string& p : m->names) known |= p == k;
        if (!known) fail(m->line, "macro '" + m->text + "' has no argument '" + k + "'");
        s[k] = v;
      }
      scopes_.push_back(std::move(s));
      std::string out;
      const int saved_loops = loops_;
      loops_ = 0;
      try {
        exec(*m->kids[0], out);
      } catch (...) {
        scopes_.pop_back();
        loops_ = saved_loops;
        --depth_;
        throw;
      }
      scopes_.pop_back();
      loops_ = saved_loops;
      --depth_;
      return Value(Json(out));
    });
  }

  std::function<Value(const Value&, Args&, Kwargs&)> call_fn() {
    return [this](const Value& f, Args& a, Kwargs& kw) { return call(f, a, kw, 0); };
  }
  Value call(const Value& f, Args& a, Kwargs& kw, int line) {
    if (f.kind != Value::Kind::kCallable)
      fail(line, f.is_undefined() ? f.name : "'" + type_name(f) + "' object is not callable");
    return (*f.fn)(a, kw);
  }

  void arguments(const Node& n, size_t first, Args& a, Kwargs& kw) {
    for (size_t i = first; i < first + n.n_args; ++i) a.push_back(eval(*n.kids[i]));
    for (size_t i = 0; i < n.names.size(); ++i) kw.emplace_back(n.names[i], eval(*n.kids[first + n.n_args + i]));
  }

  Value eval(const Node& n) {
    switch (n.kind) {
      case Node::Kind::kLiteral:
        return Value(n.value);
      case Node::Kind::kName:
        return lookup(n.text);
      case Node::Kind::kList:
      case Node::Kind::kTuple: {
        Json a = Json::array();
        for (const NodePtr& k : n.kids) a.push_back(eval(*k).json("a list item"));
        return Value(std::move(a));
      }
      case Node::Kind::kDict: {
        Json o = Json::object();
        for (size_t i = 0; i + 1 < n.kids.size(); i += 2) {
          const Value key = eval(*n.kids[i]);
          o[key.is_data() && key.data.is_string() ? key.data.get<std::string>() : to_str(key)] =
              eval(*n.kids[i + 1]).json("a dict value");
        }
        return Value(std::move(o));
      }
      case Node::Kind::kAttr:
        return attribute(eval(*n.kids[0]), n.text, n.line);
      case Node::Kind::kItem:
        return item(eval(*n.kids[0]), eval(*n.kids[1]), n.line);
      case Node::Kind::kSlice:
        return slice(n);
      case Node::Kind::kCall: {
        Value f = eval(*n.kids[0]);
        Args a;
        Kwargs kw;
        arguments(n, 1, a, kw);
        return call(f, a, kw, n.line);
      }
      case Node::Kind::kFilter: {
        Value in = eval(*n.kids[0]);
        Args a;
        Kwargs kw;
        arguments(n, 1, a, kw);
        return apply_filter(n.text, in, a, kw, n.line, call_fn());
      }
      case Node::Kind::kTest: {
        if (n.text == "defined" || n.text == "undefined") {  // a missing name is no error here
          const bool d = !eval(*n.kids[0]).is_undefined();
          return Value(Json((n.text == "defined") == d) != n.negated ? Json(true) : Json(false));
        }
        const Value in = eval(*n.kids[0]);
        Args a;
        Kwargs kw;
        arguments(n, 1, a, kw);
        return Value(Json(apply_test(n.text, in, a, n.line) != n.negated));
      }
      case Node::Kind::kNot:
        return Value(Json(!truthy(eval(*n.kids[0]))));
      case Node::Kind::kNeg: {
        const Value v = eval(*n.kids[0]);
        const Json& j = v.json("unary '-'");
        if (j.is_number_integer()) return Value(Json(-j.get<int64_t>()));
        if (j.is_number()) return Value(Json(-j.get<double>()));
        fail(n.line, "bad operand type for unary -: '" + type_name(v) + "'");
      }
      case Node::Kind::kCond: {
        if (truthy(eval(*n.kids[1]))) return eval(*n.kids[0]);
        return n.kids[2] ? eval(*n.kids[2]) : Value::undefined("the else branch of an inline if");
      }
      case Node::Kind::kBinary:
        return binary(n);
      default:
        fail(n.line, "not an expression");
    }
  }

  Value attribute(const Value& obj, const std::string& name, int line) {
    if (obj.is_undefined()) fail(line, obj.name);
    if (obj.kind == Value::Kind::kNamespace) {
      auto it = obj.ns->find(name);
      return it == obj.ns->end() ? Value::undefined("namespace has no attribute '" + name + "'") : Value(*it);
    }
    if (obj.is_data()) {
      Value m = method(obj, name, line);  // Jinja tries the attribute first: dict.items is the method
      if (!m.is_undefined()) return m;
      if (obj.data.is_object()) {
        auto it = obj.data.find(name);
        if (it != obj.data.end()) return Value(*it);
      }
    }
    return Value::undefined("'" + type_name(obj) + "' object has no attribute '" + name + "'");
  }

  Value item(const Value& obj, const Value& key, int line) {
    if (obj.is_undefined()) fail(line, obj.name);
    const Json& o = obj.json("a subscript");
    const Json& k = key.json("a subscript");
    if (o.is_object()) {
      if (k.is_string()) {
        auto it = o.find(k.get<std::string>());
        if (it != o.end()) return Value(*it);
        return attribute(obj, k.get<std::string>(), line);
      }
      return Value::undefined("no key " + repr(k));
    }
    if ((o.is_array() || o.is_string()) && k.is_number_integer()) {
      std::vector<Value> chars;
      if (o.is_string()) chars = iterate(obj, line);
      const int64_t n = o.is_string() ? static_cast<int64_t>(chars.size()) : static_cast<int64_t>(o.size());
      int64_t i = k.get<int64_t>();
      if (i < 0) i += n;
      if (i < 0 || i >= n) return Value::undefined("index " + std::to_string(k.get<int64_t>()) + " out of range");
      return o.is_string() ? chars[static_cast<size_t>(i)] : Value(o[static_cast<size_t>(i)]);
    }
    if (k.is_string()) return attribute(obj, k.get<std::string>(), line);
    return Value::undefined("cannot index " + type_name(obj) + " with " + repr(k));
  }

  Value slice(const Node& n) {
    const Value obj = eval(*n.kids[0]);
    if (obj.is_undefined()) fail(n.line, obj.name);
    std::vector<Value> items = iterate(obj, n.line);
    const bool str = obj.is_data() && obj.data.is_string();
    if (!str && !(obj.is_data() && obj.data.is_array())) fail(n.line, "cannot slice " + type_name(obj));
    auto bound = [&](const NodePtr& e, int64_t dflt) -> int64_t {
      if (!e) return dflt;
      const Value v = eval(*e);
      if (v.is_data() && v.data.is_null()) return dflt;
      const Json& j = v.json("a slice bound");
      if (!j.is_number_integer()) fail(n.line, "slice bounds must be integers");
      return j.get<int64_t>();
    };
    const int64_t len = static_cast<int64_t>(items.size());
    const int64_t st = bound(n.kids[3], 1);
    if (st == 0) fail(n.line, "slice step cannot be zero");
    auto clamp = [&](int64_t i) {  // Python's slice bounds: negative from the end, then into range
      if (i < 0) i += len;
      return st > 0 ? std::max<int64_t>(0, std::min(i, len)) : std::max<int64_t>(-1, std::min(i, len - 1));
    };
    const int64_t a = n.kids[1] ? clamp(bound(n.kids[1], 0)) : (st > 0 ? 0 : len - 1);
    const int64_t b = n.kids[2] ? clamp(bound(n.kids[2], 0)) : (st > 0 ? len : -1);
    std::string s;
    Json out = Json::array();
    for (int64_t i = a; st > 0 ? i < b : i > b; i += st) {
      if (str)
        s += items[static_cast<size_t>(i)].data.get<std::string>();
      else
        out.push_back(items[static_cast<size_t>(i)].data);
    }
    return str ? Value(Json(s)) : Value(std::move(out));
  }

  Value binary(const Node& n) {
    const std::string& op = n.text;
    if (op == "and") {
      Value a = eval(*n.kids[0]);
      return truthy(a) ? eval(*n.kids[1]) : a;
    }
    if (op == "or") {
      Value a = eval(*n.kids[0]);
      return truthy(a) ? a : eval(*n.kids[1]);
    }
    const Value a = eval(*n.kids[0]), b = eval(*n.kids[1]);
    if (op == "==") return Value(Json(equal(a, b)));
    if (op == "!=") return Value(Json(!equal(a, b)));
    if (op == "<") return Value(Json(compare(a, b, n.line) < 0));
    if (op == ">") return Value(Json(compare(a, b, n.line) > 0));
    if (op == "<=") return Value(Json(compare(a, b, n.line) <= 0));
    if (op == ">=") return Value(Json(compare(a, b, n.line) >= 0));
    if (op == "in" || op == "not in") {
      Args args{b};
      return Value(Json(apply_test("in", a, args, n.line) == (op == "in")));
    }
    if (op == "~") return Value(Json(to_str(a) + to_str(b)));
    return arithmetic(op, a, b, n.line);
  }

  Value arithmetic(const std::string& op, const Value& av, const Value& bv, int line) {
    if (av.is_undefined()) fail(line, av.name);
    if (bv.is_undefined()) fail(line, bv.name);
    const Json& a = av.json("arithmetic");
    const Json& b = bv.json("arithmetic");
    if (op == "+" && a.is_string() && b.is_string()) return Value(Json(a.get<std::string>() + b.get<std::string>()));
    if (op == "+" && a.is_array() && b.is_array()) {
      Json r = a;
      for (const Json& x : b) r.push_back(x);
      return Value(std::move(r));
    }
    if (op == "*" && ((a.is_string() || a.is_array()) && b.is_number_integer())) {  // repetition
      const int64_t n = std::max<int64_t>(0, b.get<int64_t>());
      const uint64_t unit = a.is_string() ? a.get_ref<const std::string&>().size() : a.size();
      if (unit == 0) return Value(a.is_string() ? Json("") : Json::array());
      if (static_cast<uint64_t>(n) > (a.is_string() ? kMaxOutput : 1'000'000u) / unit)
        fail(line, a.is_string() ? "string too long" : "list too long");
      if (a.is_string()) {
        std::string r;
        r.reserve(unit * static_cast<uint64_t>(n));
        for (int64_t i = 0; i < n; ++i) r += a.get_ref<const std::string&>();
        return Value(Json(std::move(r)));
      }
      Json r = Json::array();
      for (int64_t i = 0; i < n; ++i)
        for (const Json& x : a) r.push_back(x);
      return Value(std::move(r));
    }
    const bool nums = (a.is_number() || a.is_boolean()) && (b.is_number() || b.is_boolean());
    if (!nums)
      fail(line, "unsupported operand types for " + op + ": '" + type_name(av) + "' and '" + type_name(bv) + "'");
    const bool ints = !a.is_number_float() && !b.is_number_float();
    auto i64 = [](const Json& j) { return j.is_boolean() ? int64_t{j.get<bool>()} : j.get<int64_t>(); };
    auto f64 = [](const Json& j) { return j.is_boolean() ? double{j.get<bool>() ? 1.0 : 0.0} : j.get<double>(); };
    if (op == "/") {
      if (f64(b) == 0) fail(line, "division by zero");
      return Value(Json(f64(a) / f64(b)));
    }
    if (ints) {
      const int64_t x = i64(a), y = i64(b);
      if (op == "+") return Value(Json(x + y));
      if (op == "-") return Value(Json(x - y));
      if (op == "*") return Value(Json(x * y));
      if (op == "**") return Value(y >= 0 ? Json(static_cast<int64_t>(std::pow(x, y))) : Json(std::pow(x, y)));
      if (y == 0) fail(line, "integer division or modulo by zero");
      const int64_t q = x / y - ((x % y != 0) && ((x < 0) != (y < 0)) ? 1 : 0);  // Python floors
      if (op == "//") return Value(Json(q));
      if (op == "%") return Value(Json(x - q * y));
    }
    const double x = f64(a), y = f64(b);
    if (op == "+") return Value(Json(x + y));
    if (op == "-") return Value(Json(x - y));
    if (op == "*") return Value(Json(x * y));
    if (op == "**") return Value(Json(std::pow(x, y)));
    if (y == 0) fail(line, "float division or modulo by zero");
    if (op == "//") return Value(Json(std::floor(x / y)));
    if (op == "%") return Value(Json(x - std::floor(x / y) * y));
    fail(line, "unknown operator " + op);
  }

  std::vector<Scope> scopes_;
  int loops_ = 0, depth_ = 0;
  int64_t steps_ = 0;
};

}  // namespace

const Json& Value::json(const char* use) const {
  if (kind == Kind::kData) return data;
  if (kind == Kind::kNamespace) return *ns;
  if (kind == Kind::kUndefined) throw TemplateError("chat template: " + name + " (in " + use + ")");
  throw TemplateError(std::string("chat template: a function cannot be used as ") + use);
}

}  // namespace jinja

namespace {

// Errors become TemplateErrors at the boundary, whatever raised them inside: a template
// is untrusted input and its failure must never be mistaken for the daemon's.
template <class F>
auto guarded(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const TemplateError&) {
    throw;
  } catch (const std::exception& e) {
    throw TemplateError(std::string("chat template: ") + e.what());
  }
}

}  // namespace

Template::Template(const std::string& source)
    : root_(guarded([&] { return jinja::parse(jinja::split_template(source)); })) {}
Template::~Template() = default;
Template::Template(Template&&) noexcept = default;
Template& Template::operator=(Template&&) noexcept = default;

std::string Template::render(const Json& context) const {
  return guarded([&] {
    jinja::Renderer r(context);
    std::string out;
    r.exec(*root_, out);
    return out;
  });
}

}  // namespace cascade::chat
