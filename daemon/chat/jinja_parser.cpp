// The parser's statement half: a template's segments to a tree of bodies, tags and
// text; each tag's expressions go through ExprParser (jinja_expr.h).
#include <set>

#include "daemon/chat/jinja_expr.h"

namespace cascade::chat::jinja {
namespace {

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
    auto b = make_node(Node::Kind::kBody, i_ < s_.size() ? s_[i_].line : 0);
    while (i_ < s_.size()) {
      const Segment& s = s_[i_];
      if (s.kind == Segment::Kind::kText) {
        b->kids.push_back(make_node(Node::Kind::kText, s.line, s.text));
        ++i_;
        continue;
      }
      if (s.kind == Segment::Kind::kExpr) {
        ExprParser p(s.text, s.line);
        auto n = make_node(Node::Kind::kOutput, s.line);
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
      auto n = make_node(Node::Kind::kIf, s.line);
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
      auto n = make_node(Node::Kind::kFor, s.line);
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
        auto n = make_node(Node::Kind::kSetBlock, s.line, target);
        n->kids.push_back(body({"endset"}, &stop));
        close("endset");
        return n;
      }
      p.expect_op("=");
      auto n = make_node(Node::Kind::kSet, s.line, target);
      n->kids.push_back(p.expr());
      p.expect_end();
      return n;
    }
    if (kw == "macro") {
      auto n = make_node(Node::Kind::kMacro, s.line, p.expect_name());
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
      auto n = make_node(Node::Kind::kFilterBlock, s.line);
      auto f = make_node(Node::Kind::kName, s.line, "__body__");
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
      return make_node(kw == "break" ? Node::Kind::kBreak : Node::Kind::kContinue, s.line);
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
