#include "daemon/chat/jinja_expr.h"

#include <algorithm>
#include <set>

namespace cascade::chat::jinja {

std::shared_ptr<Node> make_node(Node::Kind k, int line, std::string text) {
  auto n = std::make_shared<Node>();
  n->kind = k;
  n->line = line;
  n->text = std::move(text);
  return n;
}

NodePtr ExprParser::expr() {  // a if c else b
  const Nest nest(depth_, peek().line);
  NodePtr a = or_expr();
  while (is_name("if")) {
    const int line = next().line;
    auto n = make_node(Node::Kind::kCond, line);
    NodePtr cond = or_expr();
    NodePtr other = is_name("else") ? (next(), expr()) : NodePtr();
    n->kids = {a, cond, other};
    a = n;
  }
  return a;
}

NodePtr ExprParser::or_expr() {
  NodePtr a = and_expr();
  while (is_name("or")) a = binary("or", a, (next(), and_expr()));
  return a;
}

NodePtr ExprParser::binary(const std::string& op, NodePtr a, NodePtr b) {
  auto n = make_node(Node::Kind::kBinary, a->line, op);
  n->kids = {std::move(a), std::move(b)};
  return n;
}

NodePtr ExprParser::and_expr() {
  NodePtr a = not_expr();
  while (is_name("and")) a = binary("and", a, (next(), not_expr()));
  return a;
}

NodePtr ExprParser::not_expr() {
  const Nest nest(depth_, peek().line);
  if (is_name("not")) {
    auto n = make_node(Node::Kind::kNot, next().line);
    n->kids = {not_expr()};
    return n;
  }
  return compare();
}

NodePtr ExprParser::compare() {
  NodePtr a = math1();
  for (;;) {
    if (peek().kind == Token::Kind::kOp && std::set<std::string>{"==", "!=", "<", ">", "<=", ">="}.count(peek().text)) {
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

NodePtr ExprParser::left_assoc(std::initializer_list<const char*> ops, NodePtr (ExprParser::*operand)()) {
  NodePtr a = (this->*operand)();
  for (;;) {
    const auto op = std::find_if(ops.begin(), ops.end(), [&](const char* o) { return is_op(o); });
    if (op == ops.end()) return a;
    next();
    a = binary(*op, a, (this->*operand)());
  }
}

// Jinja's precedence, loosest first; each level is left-associative (`**` too, as Jinja has it).
NodePtr ExprParser::math1() { return left_assoc({"+", "-"}, &ExprParser::concat); }
NodePtr ExprParser::concat() { return left_assoc({"~"}, &ExprParser::math2); }
NodePtr ExprParser::math2() { return left_assoc({"*", "/", "//", "%"}, &ExprParser::power); }
NodePtr ExprParser::power() { return left_assoc({"**"}, &ExprParser::unary); }

NodePtr ExprParser::unary() {
  const Nest nest(depth_, peek().line);
  if (is_op("-") || is_op("+")) {
    const Token& t = next();
    NodePtr operand = unary_plain();
    if (t.text == "+") return filters(operand);
    auto n = make_node(Node::Kind::kNeg, t.line);
    n->kids = {operand};
    return filters(n);
  }
  return filters(postfix(primary()));
}

NodePtr ExprParser::unary_plain() { return is_op("-") || is_op("+") ? unary() : postfix(primary()); }

// Arguments of a call, filter or test: `(a, b, k=v)`; kwargs come last among kids.
void ExprParser::call_args(const std::shared_ptr<Node>& n) {
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

NodePtr ExprParser::filters(NodePtr a) {
  for (;;) {
    if (is_op("|")) {
      const int line = next().line;
      std::string name = expect_name();
      while (is_op(".")) name += "." + (next(), expect_name());
      auto n = make_node(Node::Kind::kFilter, line, name);
      n->kids = {a};
      if (is_op("(")) call_args(n);
      a = n;
    } else if (is_name("is")) {
      const int line = next().line;
      auto n = make_node(Node::Kind::kTest, line);
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

bool ExprParser::starts_argument() const {
  const Token& t = peek();
  if (t.kind == Token::Kind::kString || t.kind == Token::Kind::kInt || t.kind == Token::Kind::kFloat) return true;
  if (t.kind == Token::Kind::kName)
    return !std::set<std::string>{"and", "or", "else", "if", "not", "in", "is"}.count(t.text);
  return t.kind == Token::Kind::kOp && (t.text == "(" || t.text == "[" || t.text == "{");
}

NodePtr ExprParser::postfix(NodePtr a) {
  for (;;) {
    if (is_op(".")) {
      const int line = next().line;
      const Token& t = next();
      if (t.kind != Token::Kind::kName && t.kind != Token::Kind::kInt) fail(line, "expected an attribute name");
      auto n = make_node(t.kind == Token::Kind::kInt ? Node::Kind::kItem : Node::Kind::kAttr, line, t.text);
      n->kids = {a};
      if (t.kind == Token::Kind::kInt) {
        auto lit = make_node(Node::Kind::kLiteral, line);
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
      auto n = make_node(colons ? Node::Kind::kSlice : Node::Kind::kItem, line);
      n->kids = {a, parts[0], parts[1], parts[2]};
      if (!colons) {
        if (!parts[0]) fail(line, "empty subscript");
        n->kids.resize(2);
      }
      a = n;
    } else if (is_op("(")) {
      auto n = make_node(Node::Kind::kCall, peek().line);
      n->kids = {a};
      call_args(n);
      a = n;
    } else {
      return a;
    }
  }
}

NodePtr ExprParser::primary() {
  const Token& t = next();
  switch (t.kind) {
    case Token::Kind::kString: {
      std::string s = t.text;
      while (peek().kind == Token::Kind::kString) s += next().text;  // adjacent literals join
      auto n = make_node(Node::Kind::kLiteral, t.line);
      n->value = s;
      return n;
    }
    case Token::Kind::kInt:
    case Token::Kind::kFloat: {
      auto n = make_node(Node::Kind::kLiteral, t.line);
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
      auto n = make_node(Node::Kind::kLiteral, t.line);
      if (t.text == "true" || t.text == "True")
        n->value = true;
      else if (t.text == "false" || t.text == "False")
        n->value = false;
      else if (t.text == "none" || t.text == "None")
        n->value = nullptr;
      else
        return make_node(Node::Kind::kName, t.line, t.text);
      return n;
    }
    case Token::Kind::kOp:
      if (t.text == "(") {
        if (is_op(")")) {
          next();
          return make_node(Node::Kind::kTuple, t.line);
        }
        NodePtr first = expr();
        if (!is_op(",")) {
          expect_op(")");
          return first;
        }
        auto n = make_node(Node::Kind::kTuple, t.line);
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
        auto n = make_node(Node::Kind::kList, t.line);
        while (!is_op("]")) {
          n->kids.push_back(expr());
          if (!is_op(",")) break;
          next();
        }
        expect_op("]");
        return n;
      }
      if (t.text == "{") {
        auto n = make_node(Node::Kind::kDict, t.line);
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

}  // namespace cascade::chat::jinja
