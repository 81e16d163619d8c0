// Shared by the libFuzzer targets in tests/fuzz: a check that turns a broken
// property (not only a crash) into a finding that libFuzzer reports and saves.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace zf::fuzz {

[[noreturn]] inline void check_failed(const char* file, int line, const char* cond, const std::string& what) {
  std::fprintf(stderr, "FUZZ_CHECK failed at %s:%d: %s: %s\n", file, line, cond, what.c_str());
  std::abort();
}

}  // namespace zf::fuzz

// Aborts with the condition and `what` when `cond` is false; libFuzzer then
// writes the input to crash-<sha1> and the run fails.
#define FUZZ_CHECK(cond, what) \
  ((cond) ? static_cast<void>(0) : ::zf::fuzz::check_failed(__FILE__, __LINE__, #cond, (what)))
