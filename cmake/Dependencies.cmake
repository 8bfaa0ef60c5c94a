# Every dependency comes from a Debian 12 package; nothing is downloaded.
find_package(PkgConfig REQUIRED)
# Debian's gRPC ships no CMake package config, only pkg-config files.
pkg_check_modules(GRPCPP REQUIRED IMPORTED_TARGET grpc++)
pkg_check_modules(ABSL REQUIRED IMPORTED_TARGET absl_status absl_statusor absl_strings absl_time
                  absl_flat_hash_set absl_synchronization)
pkg_check_modules(RE2 REQUIRED IMPORTED_TARGET re2)
pkg_check_modules(SQLITE3 REQUIRED IMPORTED_TARGET sqlite3)
pkg_check_modules(YAMLCPP REQUIRED IMPORTED_TARGET yaml-cpp)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
pkg_check_modules(SYSTEMD IMPORTED_TARGET libsystemd)
# jemalloc: events are allocated on gRPC threads and freed on the spool's writer thread, a
# pattern glibc malloc handles poorly (measured: -15% daemon CPU per event).
pkg_check_modules(JEMALLOC REQUIRED IMPORTED_TARGET jemalloc)
pkg_check_modules(LIBDEFLATE REQUIRED IMPORTED_TARGET libdeflate)
find_package(Protobuf REQUIRED)
find_package(CURL REQUIRED)
find_package(OpenSSL REQUIRED)
find_package(ZLIB REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(prometheus-cpp REQUIRED)
find_package(Threads REQUIRED)
find_program(GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)
find_program(GRPC_PYTHON_PLUGIN grpc_python_plugin)
find_library(GRPCPP_REFLECTION grpc++_reflection REQUIRED)
if(TOOLGATE_BUILD_TESTS)
  find_package(GTest REQUIRED)
endif()
