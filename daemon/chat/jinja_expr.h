// The expression half of the Jinja parser (jinja_expr.cpp): a tag's tokens to a tree,
// with Jinja2's operator precedence (or < and < not < comparisons < + - < ~ < * / // % <
// ** < unary < postfix, filters and tests). Internal to cascade_chat: the statement
// parser (jinja_parser.cpp) makes one ExprParser per tag and reads the tag's names and
// expressions through it. Not thread-safe; an ExprParser owns its tokens.
#pragma once

#include <algorithm>
#include <initializer_list>
#include <memory>
#include <string>
#include <vector>

#include "daemon/chat/jinja_ast.h"

namespace cascade::chat::jinja {

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

// A node of kind `k` at `line`, its text `text`, no kids.
std::shared_ptr<Node> make_node(Node::Kind k, int line, std::string text = {});

// The tokens of one tag, read left to right; fail() (TemplateError) names the line.
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

  NodePtr expr();  // a if c else b
  NodePtr or_expr();

 private:
  NodePtr binary(const std::string& op, NodePtr a, NodePtr b);
  NodePtr and_expr();
  NodePtr not_expr();
  NodePtr compare();
  // One left-associative level: operands from `operand` joined by any of `ops`.
  NodePtr left_assoc(std::initializer_list<const char*> ops, NodePtr (ExprParser::*operand)());
  NodePtr math1();   // + -
  NodePtr concat();  // ~
  NodePtr math2();   // * / // %
  NodePtr power();   // **
  NodePtr unary();
  NodePtr unary_plain();
  // Arguments of a call, filter or test: `(a, b, k=v)`; kwargs come last among kids.
  void call_args(const std::shared_ptr<Node>& n);
  NodePtr filters(NodePtr a);
  bool starts_argument() const;
  NodePtr postfix(NodePtr a);
  NodePtr primary();

  std::vector<Token> t_;
  size_t i_ = 0;
  int depth_ = 0;  // Nest's count
};

}  // namespace cascade::chat::jinja
