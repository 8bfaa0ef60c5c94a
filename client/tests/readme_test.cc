// The "Use it from C++" section of README.md shows the example agent's code verbatim: the code
// between the readme markers of client/examples/example_agent.cc, which daemon_test.cc runs
// against the real daemon.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace {

std::vector<std::string> Lines(const std::string& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

std::string Join(const std::vector<std::string>& lines) {
  std::string out;
  for (const auto& l : lines) out += l + "\n";
  return out;
}

// The lines strictly between `begin` and the next line equal to `end`, after the first line
// that contains `after` (and then `begin`).
std::vector<std::string> Between(const std::vector<std::string>& lines, const std::string& after,
                                 const std::string& begin, const std::string& end) {
  size_t i = 0;
  while (i < lines.size() && lines[i].find(after) == std::string::npos) ++i;
  while (i < lines.size() && lines[i].find(begin) == std::string::npos) ++i;
  std::vector<std::string> out;
  for (++i; i < lines.size(); ++i) {
    std::string trimmed =
        lines[i].substr(std::min(lines[i].find_first_not_of(' '), lines[i].size()));
    if (trimmed == end) return out;
    out.push_back(lines[i]);
  }
  ADD_FAILURE() << "no '" << end << "' after '" << after << "'";
  return {};
}

std::vector<std::string> Dedent(std::vector<std::string> lines) {
  size_t indent = std::string::npos;
  for (const auto& l : lines) {
    if (l.find_first_not_of(' ') != std::string::npos)
      indent = std::min(indent, l.find_first_not_of(' '));
  }
  for (auto& l : lines) l = l.size() >= indent ? l.substr(indent) : "";
  return lines;
}

TEST(Readme, CppSectionIsTheExampleAgentCode) {
  const std::string root = TOOLGATE_SOURCE_DIR;
  const auto example = Dedent(Between(Lines(root + "/client/examples/example_agent.cc"),
                                      "int main(", "// [START readme]", "// [END readme]"));
  const auto readme = Between(Lines(root + "/README.md"), "## Use it from C++", "```cpp", "```");
  ASSERT_GT(example.size(), 10u);
  EXPECT_EQ(Join(readme), Join(example))
      << "README.md's \"Use it from C++\" code differs from client/examples/example_agent.cc";
}

}  // namespace
