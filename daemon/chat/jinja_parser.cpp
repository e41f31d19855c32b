// The parser: statements over the template's segments, expressions over a tag's tokens,
// with Jinja2's operator precedence (or < and < not < comparisons < + - < ~ < * / // % <
// ** < unary < postfix, filters and tests).
#include <set>

#include "daemon/chat/jinja_ast.h"

namespace cascade::chat::jinja {
namespace {

// Nesting deeper than this is refused: the parser and the interpreter recurse, and a
// template is untrusted input.
constexpr int kMaxNesting = 100;

// Counts one level of nesting for as long as it lives.
class Nest {
 public:
  Nest(int& depth, int line) : depth_(depth) {
    if (++depth_ > kMaxNesting) fail(line, "nesting deeper than " + std::to_string(kMaxNesting) + " levels");
  }
  ~Nest() { --depth_; }
  Nest(const Nest&) = delete;
  Nest& operator=(const Nest&) = delete;

 private:
  int& depth_;
};

std::shared_ptr<Node> make(Node::Kind k, int line, std::string text = {}) {
  auto n = std::make_shared<Node>();
  n->kind = k;
  n->line = line;
  n->text = std::move(text);
  return n;
}

class ExprParser {
 public:
  ExprParser(const std::string& src, int line) : t_(tokenize(src, line)) {}

  const Token& peek(size_t ahead = 0) const { return t_[std::min(i_ + ahead, t_.size() - 1)]; }
  bool at_end() const { return peek().kind == Token::Kind::kEnd; }
  bool is_op(const char* op, size_t ahead = 0) const {
    return peek(ahead).kind == Token::Kind::kOp && peek(ahead).text == op;
  }
  bool is_name(const char* name, size_t ahead = 0) const {
    return peek(ahead).kind == Token::Kind::kName && peek(ahead).text == name;
  }
  const Token& next() { return t_[std::min(i_++, t_.size() - 1)]; }
  void expect_op(const char* op) {
    if (!is_op(op)) fail(peek().line, std::string("expected '") + op + "', got '" + peek().text + "'");
    ++i_;
  }
  std::string expect_name() {
    if (peek().kind != Token::Kind::kName) fail(peek().line, "expected a name, got '" + peek().text + "'");
    return next().text;
  }
  void expect_end() {
    if (!at_end()) fail(peek().line, "unexpected '" + peek().text + "'");
  }

  NodePtr expr() {  // a if c else b
    const Nest nest(depth_, peek().line);
    NodePtr a = or_expr();
    while (is_name("if")) {
      const int line = next().line;
      auto n = make(Node::Kind::kCond, line);
      NodePtr cond = or_expr();
      NodePtr other = is_name("else") ? (next(), expr()) : NodePtr();
      n->kids = {a, cond, other};
      a = n;
    }
    return a;
  }

  NodePtr or_expr() {
    NodePtr a = and_expr();
    while (is_name("or")) a = binary("or", a, (next(), and_expr()));
    return a;
  }

 private:
  NodePtr binary(const std::string& op, NodePtr a, NodePtr b) {
    auto n = make(Node::Kind::kBinary, a->line, op);
    n->kids = {std::move(a), std::move(b)};
    return n;
  }
  NodePtr and_expr() {
    NodePtr a = not_expr();
    while (is_name("and")) a = binary("and", a, (next(), not_expr()));
    return a;
  }
  NodePtr not_expr() {
    const Nest nest(depth_, peek().line);
    if (is_name("not")) {
      auto n = make(Node::Kind::kNot, next().line);
      n->kids = {not_expr()};
      return n;
    }
    return compare();
  }
  NodePtr compare() {
    NodePtr a = math1();
    for (;;) {
      if (peek().kind == Token::Kind::kOp &&
          std::set<std::string>{"==", "!=", "<", ">", "<=", ">="}.count(peek().text)) {
        const std::string op = next().text;
        a = binary(op, a, math1());
      } else if (is_name("in")) {
        next();
        a = binary("in", a, math1());
      } else if (is_name("not") && is_name("in", 1)) {
        i_ += 2;
        a = binary("not in", a, math1());
      } else {
        return a;
      }
    }
  }
  NodePtr math1() {
    NodePtr a = concat();
    while (is_op("+") || is_op("-")) {
      const std::string op = next().text;
      a = binary(op, a, concat());
    }
    return a;
  }
  NodePtr concat() {
    NodePtr a = math2();
    while (is_op("~")) a = binary("~", a, (next(), math2()));
    return a;
  }
  NodePtr math2() {
    NodePtr a = power();
    while (is_op("*") || is_op("/") || is_op("//") || is_op("%")) {
      const std::string op = next().text;
      a = binary(op, a, power());
    }
    return a;
  }
  NodePtr power() {
    NodePtr a = unary();
    while (is_op("**")) a = binary("**", a, (next(), unary()));
    return a;
  }
  NodePtr unary() {
    const Nest nest(depth_, peek().line);
    if (is_op("-") || is_op("+")) {
      const Token& t = next();
      NodePtr operand = unary_plain();
      if (t.text == "+") return filters(operand);
      auto n = make(Node::Kind::kNeg, t.line);
      n->kids = {operand};
      return filters(n);
    }
    return filters(postfix(primary()));
  }
  NodePtr unary_plain() { return is_op("-") || is_op("+") ? unary() : postfix(primary()); }

  // Arguments of a call, filter or test: `(a, b, k=v)`; kwargs come last among kids.
  void call_args(const std::shared_ptr<Node>& n) {
    expect_op("(");
    std::vector<NodePtr> pos, kw;
    while (!is_op(")")) {
      if (peek().kind == Token::Kind::kName && is_op("=", 1)) {
        n->names.push_back(next().text);
        next();
        kw.push_back(expr());
      } else {
        if (!kw.empty()) fail(peek().line, "a positional argument after a keyword argument");
        pos.push_back(expr());
      }
      if (!is_op(",")) break;
      next();
    }
    expect_op(")");
    n->n_args = pos.size();
    n->kids.insert(n->kids.end(), pos.begin(), pos.end());
    n->kids.insert(n->kids.end(), kw.begin(), kw.end());
  }

  NodePtr filters(NodePtr a) {
    for (;;) {
      if (is_op("|")) {
        const int line = next().line;
        std::string name = expect_name();
        while (is_op(".")) name += "." + (next(), expect_name());
        auto n = make(Node::Kind::kFilter, line, name);
        n->kids = {a};
        if (is_op("(")) call_args(n);
        a = n;
      } else if (is_name("is")) {
        const int line = next().line;
        auto n = make(Node::Kind::kTest, line);
        if (is_name("not")) {
          next();
          n->negated = true;
        }
        n->text = expect_name();
        n->kids = {a};
        if (is_op("(")) {
          call_args(n);
        } else if (starts_argument()) {  // `is divisibleby 3`, `is sameas false`
          n->kids.push_back(postfix(primary()));
          n->n_args = 1;
        }
        a = n;
      } else {
        return a;
      }
    }
  }
  bool starts_argument() const {
    const Token& t = peek();
    if (t.kind == Token::Kind::kString || t.kind == Token::Kind::kInt || t.kind == Token::Kind::kFloat) return true;
    if (t.kind == Token::Kind::kName)
      return !std::set<std::string>{"and", "or", "else", "if", "not", "in", "is"}.count(t.text);
    return t.kind == Token::Kind::kOp && (t.text == "(" || t.text == "[" || t.text == "{");
  }

  NodePtr postfix(NodePtr a) {
    for (;;) {
      if (is_op(".")) {
        const int line = next().line;
        const Token& t = next();
        if (t.kind != Token::Kind::kName && t.kind != Token::Kind::kInt) fail(line, "expected an attribute name");
        auto n = make(t.kind == Token::Kind::kInt ? Node::Kind::kItem : Node::Kind::kAttr, line, t.text);
        n->kids = {a};
        if (t.kind == Token::Kind::kInt) {
          auto lit = make(Node::Kind::kLiteral, line);
          lit->value = std::stoll(t.text);
          n->kids.push_back(lit);
        }
        a = n;
      } else if (is_op("[")) {
        const int line = next().line;
        NodePtr parts[3];
        int colons = 0;
        while (!is_op("]")) {
          if (is_op(":")) {
            if (++colons > 2) fail(line, "too many ':' in a slice");
            next();
            continue;
          }
          parts[colons] = expr();
        }
        expect_op("]");
        auto n = make(colons ? Node::Kind::kSlice : Node::Kind::kItem, line);
        n->kids = {a, parts[0], parts[1], parts[2]};
        if (!colons) {
          if (!parts[0]) fail(line, "empty subscript");
          n->kids.resize(2);
        }
        a = n;
      } else if (is_op("(")) {
        auto n = make(Node::Kind::kCall, peek().line);
        n->kids = {a};
        call_args(n);
        a = n;
      } else {
        return a;
      }
    }
  }

  NodePtr primary() {
    const Token& t = next();
    switch (t.kind) {
      case Token::Kind::kString: {
        std::string s = t.text;
        while (peek().kind == Token::Kind::kString) s += next().text;  // adjacent literals join
        auto n = make(Node::Kind::kLiteral, t.line);
        n->value = s;
        return n;
      }
      case Token::Kind::kInt:
      case Token::Kind::kFloat: {
        auto n = make(Node::Kind::kLiteral, t.line);
        try {
          if (t.kind == Token::Kind::kInt)
            n->value = std::stoll(t.text);
          else
            n->value = std::stod(t.text);
        } catch (const std::exception&) {
          fail(t.line, "number out of range: " + t.text);
        }
        return n;
      }
      case Token::Kind::kName: {
        auto n = make(Node::Kind::kLiteral, t.line);
        if (t.text == "true" || t.text == "True")
          n->value = true;
        else if (t.text == "false" || t.text == "False")
          n->value = false;
        else if (t.text == "none" || t.text == "None")
          n->value = nullptr;
        else
          return make(Node::Kind::kName, t.line, t.text);
        return n;
      }
      case Token::Kind::kOp:
        if (t.text == "(") {
          if (is_op(")")) {
            next();
            return make(Node::Kind::kTuple, t.line);
          }
          NodePtr first = expr();
          if (!is_op(",")) {
            expect_op(")");
            return first;
          }
          auto n = make(Node::Kind::kTuple, t.line);
          n->kids.push_back(first);
          while (is_op(",")) {
            next();
            if (is_op(")")) break;
            n->kids.push_back(expr());
          }
          expect_op(")");
          return n;
        }
        if (t.text == "[") {
          auto n = make(Node::Kind::kList, t.line);
          while (!is_op("]")) {
            n->kids.push_back(expr());
            if (!is_op(",")) break;
            next();
          }
          expect_op("]");
          return n;
        }
        if (t.text == "{") {
          auto n = make(Node::Kind::kDict, t.line);
          while (!is_op("}")) {
            n->kids.push_back(expr());
            expect_op(":");
            n->kids.push_back(expr());
            if (!is_op(",")) break;
            next();
          }
          expect_op("}");
          return n;
        }
        break;
      case Token::Kind::kEnd:
        fail(t.line, "unexpected end of expression");
    }
    fail(t.line, "unexpected '" + t.text + "'");
  }

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;
};

class Parser {
 public:
  explicit Parser(const std::vector<Segment>& s) : s_(s) {}

  NodePtr document() {
    std::string stop;
    NodePtr b = body({}, &stop);
    if (i_ < s_.size()) fail(s_[i_].line, "unexpected '" + stop + "'");
    return b;
  }

 private:
  static std::string keyword(const Segment& s) {
    size_t a = s.text.find_first_not_of(" \t\r\n");
    if (a == std::string::npos) return "";
    size_t e = a;
    while (e < s.text.size() && (std::isalnum(static_cast<unsigned char>(s.text[e])) || s.text[e] == '_')) ++e;
    return s.text.substr(a, e - a);
  }
  static std::string rest(const Segment& s, const std::string& kw) {
    return s.text.substr(s.text.find(kw) + kw.size());
  }

  // Statements up to (not including) a statement whose keyword is in `stops`.
  NodePtr body(const std::set<std::string>& stops, std::string* stopped) {
    auto b = make(Node::Kind::kBody, i_ < s_.size() ? s_[i_].line : 0);
    while (i_ < s_.size()) {
      const Segment& s = s_[i_];
      if (s.kind == Segment::Kind::kText) {
        b->kids.push_back(make(Node::Kind::kText, s.line, s.text));
        ++i_;
        continue;
      }
      if (s.kind == Segment::Kind::kExpr) {
        ExprParser p(s.text, s.line);
        auto n = make(Node::Kind::kOutput, s.line);
        n->kids = {p.expr()};
        p.expect_end();
        b->kids.push_back(n);
        ++i_;
        continue;
      }
      const std::string kw = keyword(s);
      if (stops.count(kw)) {
        *stopped = kw;
        return b;
      }
      ++i_;
      const Nest nest(depth_, s.line);
      b->kids.push_back(statement(s, kw));
    }
    if (!stops.empty()) {  // name the closing tag (endfor, not else)
      std::string want = *stops.begin();
      for (const std::string& k : stops)
        if (k.rfind("end", 0) == 0) want = k;
      fail(s_.empty() ? 0 : s_.back().line, "missing '" + want + "'");
    }
    *stopped = "";
    return b;
  }

  void close(const char* end_kw) {  // consumes `{% end_kw %}`
    ExprParser p(rest(s_[i_], end_kw), s_[i_].line);
    p.expect_end();
    ++i_;
  }

  NodePtr statement(const Segment& s, const std::string& kw) {
    ExprParser p(rest(s, kw), s.line);
    std::string stop;
    if (kw == "if") {
      auto n = make(Node::Kind::kIf, s.line);
      n->kids.push_back(p.expr());
      p.expect_end();
      for (;;) {
        n->kids.push_back(body({"elif", "else", "endif"}, &stop));
        if (stop == "elif") {
          ExprParser q(rest(s_[i_], "elif"), s_[i_].line);
          n->kids.push_back(q.expr());
          q.expect_end();
          ++i_;
        } else if (stop == "else") {
          close("else");
          n->kids.push_back(body({"endif"}, &stop));
          n->negated = true;  // has an else branch (the last kid)
          close("endif");
          return n;
        } else {
          close("endif");
          return n;
        }
      }
    }
    if (kw == "for") {
      auto n = make(Node::Kind::kFor, s.line);
      n->names.push_back(p.expect_name());
      while (p.is_op(",")) {
        p.next();
        n->names.push_back(p.expect_name());
      }
      if (!p.is_name("in")) fail(s.line, "expected 'in' in a for loop");
      p.next();
      n->kids.push_back(p.or_expr());
      NodePtr cond;
      if (p.is_name("if")) {
        p.next();
        cond = p.expr();
      }
      if (p.is_name("recursive")) fail(s.line, "recursive for loops are not supported");
      p.expect_end();
      n->kids.push_back(cond);
      n->kids.push_back(body({"else", "endfor"}, &stop));
      if (stop == "else") {
        close("else");
        n->kids.push_back(body({"endfor"}, &stop));
      } else {
        n->kids.push_back(nullptr);
      }
      close("endfor");
      return n;
    }
    if (kw == "set") {
      std::string target = p.expect_name();
      if (p.is_op(".")) {
        p.next();
        target += "." + p.expect_name();
      }
      if (p.at_end()) {
        auto n = make(Node::Kind::kSetBlock, s.line, target);
        n->kids.push_back(body({"endset"}, &stop));
        close("endset");
        return n;
      }
      p.expect_op("=");
      auto n = make(Node::Kind::kSet, s.line, target);
      n->kids.push_back(p.expr());
      p.expect_end();
      return n;
    }
    if (kw == "macro") {
      auto n = make(Node::Kind::kMacro, s.line, p.expect_name());
      p.expect_op("(");
      std::vector<NodePtr> defaults;
      while (!p.is_op(")")) {
        n->names.push_back(p.expect_name());
        NodePtr d;
        if (p.is_op("=")) {
          p.next();
          d = p.expr();
        }
        defaults.push_back(d);
        if (!p.is_op(",")) break;
        p.next();
      }
      p.expect_op(")");
      p.expect_end();
      n->kids.push_back(body({"endmacro"}, &stop));
      n->kids.insert(n->kids.end(), defaults.begin(), defaults.end());
      close("endmacro");
      return n;
    }
    if (kw == "filter") {
      auto n = make(Node::Kind::kFilterBlock, s.line);
      auto f = make(Node::Kind::kName, s.line, "__body__");
      n->kids.push_back(body({"endfilter"}, &stop));
      n->text = p.expect_name();
      n->kids.push_back(f);
      close("endfilter");
      return n;
    }
    if (kw == "generation") {  // transformers' assistant-mask marker: renders its body
      p.expect_end();
      NodePtr b = body({"endgeneration"}, &stop);
      close("endgeneration");
      return b;
    }
    if (kw == "break" || kw == "continue") {
      p.expect_end();
      return make(kw == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, s.line);
    }
    fail(s.line, kw.empty() ? "empty statement" : "unsupported statement '" + kw + "'");
  }

  const std::vector<Segment>& s_;
  size_t i_ = 0;
  int depth_ = 0;
};

}  // namespace

NodePtr parse(const std::vector<Segment>& segments) { return Parser(segments).document(); }

}  // namespace cascade::chat::jinja
