#include "daemon/policy/yaml_tree.h"

#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/exceptions.h>
#include <yaml-cpp/mark.h>
#include <yaml-cpp/parser.h>

#include <algorithm>
#include <exception>
#include <new>
#include <sstream>
#include <string>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace toolgate::policy {
namespace {

// Builds a YamlNode tree from yaml-cpp's events. Limits are enforced by throwing a
// YAML::ParserException from the handler: yaml-cpp reports its own errors the same way, unwinds
// cleanly, and the exception never leaves ParseYamlTree.
class TreeBuilder : public YAML::EventHandler {
 public:
  explicit TreeBuilder(const YamlLimits& limits) : limits_(limits) {}

  bool done() const { return done_; }
  YamlNode TakeRoot() { return std::move(root_); }

  const YAML::Mark& document_mark() const { return document_mark_; }

  void OnDocumentStart(const YAML::Mark& mark) override { document_mark_ = mark; }
  void OnDocumentEnd() override {}

  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    YamlNode n = Leaf(mark);
    n.kind = YamlNode::Kind::kNull;
    Add(std::move(n), anchor, 1);
  }

  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    auto it = anchors_.find(anchor);
    if (it == anchors_.end()) Fail(mark, "alias refers to a node that contains it");
    Count(mark, it->second.nodes);
    // The copy may be nested below the current position; keep the total depth bounded too.
    if (static_cast<int>(stack_.size()) + it->second.depth > 2 * limits_.max_depth) {
      Fail(mark, "alias expands deeper than the nesting limit");
    }
    YamlNode copy = it->second.node;
    Add(std::move(copy), 0, 0);
  }

  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& value) override {
    YamlNode n = Leaf(mark);
    n.kind = YamlNode::Kind::kScalar;
    // yaml-cpp reports "?" for plain scalars and "!" for quoted and block scalars.
    n.style = tag == "?" ? YamlNode::Style::kPlain : YamlNode::Style::kQuoted;
    if (tag != "?" && tag != "!") n.tag = tag;
    n.scalar = value;
    Add(std::move(n), anchor, 1);
  }

  void OnSequenceStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    Open(mark, tag, anchor, YamlNode::Kind::kSequence);
  }
  void OnSequenceEnd() override { Close(); }

  void OnMapStart(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    Open(mark, tag, anchor, YamlNode::Kind::kMap);
  }
  void OnMapEnd() override { Close(); }

 private:
  struct Open_ {
    YamlNode node;
    YAML::anchor_t anchor;
    size_t nodes_before;  // nodes_ when the collection opened
  };
  struct Anchored {
    YamlNode node;
    size_t nodes;  // size of the subtree
    int depth;     // nesting of the subtree (a scalar is 0)
  };

  [[noreturn]] static void Fail(const YAML::Mark& mark, const std::string& what) {
    throw YAML::ParserException(mark, what);
  }

  static YamlNode Leaf(const YAML::Mark& mark) {
    YamlNode n;
    n.line = mark.line >= 0 ? mark.line + 1 : 0;
    n.column = mark.column >= 0 ? mark.column + 1 : 0;
    return n;
  }

  void Count(const YAML::Mark& mark, size_t n) {
    nodes_ += n;
    if (nodes_ > limits_.max_nodes) {
      Fail(mark, absl::StrCat("more than ", limits_.max_nodes, " nodes (aliases included)"));
    }
  }

  static int Depth(const YamlNode& n) {
    int d = 0;
    for (const YamlNode& c : n.items) d = std::max(d, Depth(c));
    return n.items.empty() && (n.IsScalar() || n.IsNull()) ? 0 : d + 1;
  }

  void Open(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
            YamlNode::Kind kind) {
    if (static_cast<int>(stack_.size()) >= limits_.max_depth) {
      Fail(mark, absl::StrCat("nested deeper than ", limits_.max_depth, " levels"));
    }
    if (done_) Fail(mark, "more than one document");
    Count(mark, 1);
    YamlNode n = Leaf(mark);
    n.kind = kind;
    if (tag != "?" && tag != "!") n.tag = tag;
    stack_.push_back({std::move(n), anchor, nodes_ - 1});
  }

  void Close() {
    Open_ top = std::move(stack_.back());
    stack_.pop_back();
    const size_t subtree = nodes_ - top.nodes_before;
    Add(std::move(top.node), top.anchor, 0, subtree);
  }

  // Attaches a finished node to its parent (or makes it the root). `count` nodes are added to
  // the budget (collections were counted when they opened); `subtree` is its size for anchors.
  void Add(YamlNode n, YAML::anchor_t anchor, size_t count, size_t subtree = 1) {
    if (count > 0) Count(YAML::Mark::null_mark(), count);
    if (anchor != 0) {
      const int depth = n.IsSequence() || n.IsMap() ? Depth(n) : 0;
      anchors_[anchor] = Anchored{n, subtree, depth};
      Count(YAML::Mark::null_mark(), subtree);  // the kept copy costs memory too
    }
    if (stack_.empty()) {
      if (done_) Fail(YAML::Mark::null_mark(), "more than one document");
      root_ = std::move(n);
      done_ = true;
      return;
    }
    stack_.back().node.items.push_back(std::move(n));
  }

  const YamlLimits& limits_;
  std::vector<Open_> stack_;
  std::unordered_map<YAML::anchor_t, Anchored> anchors_;
  YamlNode root_;
  YAML::Mark document_mark_;
  size_t nodes_ = 0;
  bool done_ = false;
};

}  // namespace

absl::StatusOr<YamlNode> ParseYamlTree(std::string_view text, const YamlLimits& limits) {
  try {
    std::istringstream in{std::string(text)};
    YAML::Parser parser(in);
    TreeBuilder builder(limits);
    if (!parser.HandleNextDocument(builder)) return YamlNode{};
    // A second document (after "---") is an error rather than silently ignored.
    TreeBuilder rest(limits);
    if (parser.HandleNextDocument(rest)) {
      const YAML::Mark& m = rest.document_mark();
      return absl::InvalidArgumentError(
          absl::StrCat(m.line + 1, ":", m.column + 1, ": more than one YAML document"));
    }
    return builder.TakeRoot();
  } catch (const YAML::Exception& e) {
    return absl::InvalidArgumentError(absl::StrCat(e.mark.line >= 0 ? e.mark.line + 1 : 0, ":",
                                                   e.mark.column >= 0 ? e.mark.column + 1 : 0, ": ",
                                                   e.msg));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("out of memory parsing the policy");
  } catch (const std::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("0:0: ", e.what()));
  }
}

}  // namespace toolgate::policy
