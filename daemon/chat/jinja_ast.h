// The Jinja interpreter's insides (daemon/chat/jinja.h is the contract): the values it
// computes with, the syntax tree the parser builds, and the entry points of its parts.
// Internal to daemon/chat.
#pragma once

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "daemon/chat/jinja.h"

namespace cascade::chat::jinja {

struct Value;
using Args = std::vector<Value>;
using Kwargs = std::vector<std::pair<std::string, Value>>;
using Function = std::function<Value(Args&, Kwargs&)>;

// A Jinja value: JSON data (None, bools, ints, floats, strings, lists, dicts in insertion
// order), undefined (a missing variable, key or attribute: prints as nothing, is false,
// and fails when used further), a namespace (a dict `set ns.x` may change) or a callable
// (macros, globals, bound methods).
struct Value {
  enum class Kind { kUndefined, kData, kNamespace, kCallable };
  Kind kind = Kind::kUndefined;
  Json data;                     // kData
  std::shared_ptr<Json> ns;      // kNamespace: an object
  std::shared_ptr<Function> fn;  // kCallable
  std::string name;              // kUndefined: what was missing, for errors

  Value() = default;
  Value(Json j) : kind(Kind::kData), data(std::move(j)) {}  // NOLINT: values are JSON first
  static Value undefined(std::string what) {
    Value v;
    v.name = std::move(what);
    return v;
  }
  static Value callable(Function f) {
    Value v;
    v.kind = Kind::kCallable;
    v.fn = std::make_shared<Function>(std::move(f));
    return v;
  }
  bool is_undefined() const { return kind == Kind::kUndefined; }
  bool is_data() const { return kind == Kind::kData; }
  // The JSON of a data value or a namespace; throws TemplateError for the rest.
  const Json& json(const char* use) const;
};

// One node of the tree: an expression or a statement, told apart by `kind`.
struct Node {
  enum class Kind {
    // expressions
    kLiteral,
    kName,
    kList,
    kDict,
    kTuple,
    kAttr,
    kItem,
    kSlice,
    kCall,
    kFilter,
    kTest,
    kNot,
    kNeg,
    kBinary,
    kCond,
    // statements
    kBody,
    kText,
    kOutput,
    kIf,
    kFor,
    kSet,
    kSetBlock,
    kMacro,
    kBreak,
    kContinue,
    kFilterBlock
  };
  Kind kind;
  int line = 0;
  std::string text;                               // a name, operator, attribute, filter or test; kText: the text
  Json value;                                     // kLiteral
  std::vector<std::shared_ptr<const Node>> kids;  // operands, items, arguments, statements
  std::vector<std::string> names;                 // kwargs' names (the last kids), for targets, macro params
  size_t n_args = 0;                              // kCall/kFilter/kTest: positional arguments among kids
  bool negated = false;                           // kTest: `is not`
};
using NodePtr = std::shared_ptr<const Node>;

// A template's pieces after whitespace control: text, `{{ expr }}`, `{% stmt %}`.
struct Segment {
  enum class Kind { kText, kExpr, kStmt };
  Kind kind;
  std::string text;
  int line;
};
std::vector<Segment> split_template(const std::string& source);  // jinja_lexer.cpp

// An expression's tokens.
struct Token {
  enum class Kind { kName, kString, kInt, kFloat, kOp, kEnd };
  Kind kind;
  std::string text;
  int line;
};
std::vector<Token> tokenize(const std::string& expr, int line);  // jinja_lexer.cpp

NodePtr parse(const std::vector<Segment>& segments);  // jinja_parser.cpp

// Python semantics of values (jinja_values.cpp).
bool truthy(const Value& v);
std::string to_str(const Value& v);  // str()
std::string repr(const Json& j);     // repr()
std::string dump_json(const Json& j, int indent, bool sort_keys, const std::string& item_sep,
                      const std::string& key_sep);  // json.dumps(ensure_ascii=False)
bool equal(const Value& a, const Value& b);
int compare(const Value& a, const Value& b, int line);  // <0, 0, >0; TemplateError when unordered
int64_t length(const Value& v, int line);
std::vector<Value> iterate(const Value& v, int line);  // a list's items, a dict's keys, a string's characters
std::string type_name(const Value& v);

// Filters, tests and globals (jinja_builtins.cpp); methods (jinja_methods.cpp).
Value apply_filter(const std::string& name, Value& in, Args& args, Kwargs& kw, int line,
                   const std::function<Value(const Value&, Args&, Kwargs&)>& call);
bool apply_test(const std::string& name, const Value& in, Args& args, int line);
Value method(const Value& self, const std::string& name, int line);  // a bound method, or undefined
Value global(const std::string& name);                               // raise_exception, range, ...

// Built-ins' arguments (jinja_methods.cpp): positional `i` or keyword `name`.
const Value* kwarg(Kwargs& kw, const std::string& name);            // null when absent
Value arg(Args& a, Kwargs& kw, size_t i, const std::string& name);  // undefined when absent
std::string str_arg(Args& a, Kwargs& kw, size_t i, const std::string& name, const std::string& dflt, int line);
int64_t int_arg(Args& a, Kwargs& kw, size_t i, const std::string& name, int64_t dflt, int line);
bool bool_arg(Args& a, Kwargs& kw, size_t i, const std::string& name, bool dflt);
const std::string& text(const Value& v, const char* what, int line);  // a string value, else TemplateError

// Python's str operations (jinja_methods.cpp), shared by filters and methods.
std::string strip(const std::string& s, const std::string* chars, bool left, bool right);  // chars null: spaces
Json split(const std::string& s, const std::string* sep, int64_t max);  // sep null: runs of whitespace
std::string replace_all(std::string s, const std::string& from, const std::string& to, int64_t count);
std::string lower(const std::string& s);  // ASCII, Latin-1/Extended-A, Greek, Cyrillic
std::string upper(const std::string& s);
std::string title(const std::string& s);
std::string capitalize(const std::string& s);
std::string utf8(const std::vector<uint32_t>& code_points);  // UTF-8 bytes of code points

[[noreturn]] void fail(int line, const std::string& what);

}  // namespace cascade::chat::jinja
