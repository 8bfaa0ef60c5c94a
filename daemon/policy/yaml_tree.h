// YamlTree: a bounded, exception-free front end to yaml-cpp for the policy compiler.
//
// yaml-cpp's node API recurses once per nesting level, copies aliased nodes by reference (so
// "&a [*a]" builds a cycle) and throws on every error. ParseYamlTree instead drives yaml-cpp's
// event parser and builds a plain tree of its own, enforcing limits as the events arrive:
// nesting deeper than `max_depth` stops the parser before it recurses further (yaml-cpp's own
// guard is at 2000 levels, enough to exhaust a sanitizer build's stack), aliases are expanded
// into copies counted against `max_nodes` ("billion laughs"), and an alias to a node that is not
// finished yet is an error (so the tree is always acyclic). Every node keeps its line and column.
// JSON is parsed the same way (a JSON text is a YAML flow document).
//
// Thread-safe: ParseYamlTree is reentrant; the tree is a plain value.
#ifndef TOOLGATE_DAEMON_POLICY_YAML_TREE_H_
#define TOOLGATE_DAEMON_POLICY_YAML_TREE_H_

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace toolgate::policy {

struct YamlNode {
  enum class Kind { kNull, kScalar, kSequence, kMap };
  // How a scalar was written: plain scalars are typed by their text (numbers, true, null ...);
  // quoted and block scalars are strings.
  enum class Style { kPlain, kQuoted };

  Kind kind = Kind::kNull;
  Style style = Style::kPlain;
  int line = 0;        // 1-based; 0 when unknown
  int column = 0;      // 1-based; 0 when unknown
  std::string tag;     // "" (non-specific) or the resolved tag, e.g. "tag:yaml.org,2002:str"
  std::string scalar;  // kScalar
  // kSequence: the items. kMap: keys and values interleaved (key 0, value 0, key 1, ...), in the
  // order of the document; duplicate keys are kept (the policy compiler rejects them).
  std::vector<YamlNode> items;

  bool IsScalar() const { return kind == Kind::kScalar; }
  bool IsMap() const { return kind == Kind::kMap; }
  bool IsSequence() const { return kind == Kind::kSequence; }
  bool IsNull() const { return kind == Kind::kNull; }
  size_t map_size() const { return items.size() / 2; }
};

struct YamlLimits {
  int max_depth = 64;            // sequences/maps nested deeper are an error
  size_t max_nodes = 1'000'000;  // nodes in the tree, alias copies included
};

// Parses exactly one document (an empty text is a null node; a second document is an error).
// Errors: InvalidArgument "LINE:COL: problem" (1-based; "0:0" when yaml-cpp gives no position),
// for YAML syntax errors and exceeded limits. ResourceExhausted if memory runs out.
absl::StatusOr<YamlNode> ParseYamlTree(std::string_view text, const YamlLimits& limits = {});

}  // namespace toolgate::policy

#endif  // TOOLGATE_DAEMON_POLICY_YAML_TREE_H_
