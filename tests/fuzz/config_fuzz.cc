// libFuzzer target: configuration files are read at start-up, possibly from a ConfigMap an
// operator did not write. Any bytes must give a config or a clear error, never a crash.
#include <cstddef>
#include <cstdint>
#include <string>

#include "daemon/config/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  toolgate::config::Config cfg;
  const std::string text(reinterpret_cast<const char*>(data), size);
  (void)toolgate::config::ApplyYaml(text, &cfg);
  return 0;
}
