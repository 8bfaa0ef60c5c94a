# Small helpers so that adding a library, a binary or a test is one declaration.

set(TOOLGATE_WARNINGS -Wall -Wextra -Wpedantic -Wno-unused-parameter)

if(TOOLGATE_SANITIZE)
  add_compile_options(-fsanitize=${TOOLGATE_SANITIZE} -fno-omit-frame-pointer)
  add_link_options(-fsanitize=${TOOLGATE_SANITIZE})
endif()

# toolgate_library(NAME SRCS a.cc b.cc DEPS x y)
function(toolgate_library name)
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_library(${name} STATIC ${ARG_SRCS})
  target_include_directories(${name} PUBLIC ${PROJECT_SOURCE_DIR} ${PROJECT_BINARY_DIR})
  target_compile_options(${name} PRIVATE ${TOOLGATE_WARNINGS})
  target_link_libraries(${name} PUBLIC ${ARG_DEPS})
endfunction()

# toolgate_test(NAME SRCS a_test.cc DEPS lib) — a GoogleTest binary registered with CTest.
function(toolgate_test name)
  if(NOT TOOLGATE_BUILD_TESTS)
    return()
  endif()
  cmake_parse_arguments(ARG "" "" "SRCS;DEPS" ${ARGN})
  add_executable(${name} ${ARG_SRCS})
  target_compile_options(${name} PRIVATE ${TOOLGATE_WARNINGS})
  target_link_libraries(${name} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gtest_main GTest::gmock)
  add_test(NAME unit.${name} COMMAND ${name})
  set_tests_properties(unit.${name} PROPERTIES LABELS unit TIMEOUT 120)
endfunction()
