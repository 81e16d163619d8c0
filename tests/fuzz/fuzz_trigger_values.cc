// libFuzzer target: the scalar values of job files and triggers that have a
// grammar of their own: durations ("1m30s": timeouts, every, poll, backoff,
// min_delay, the sleep builtin) and RFC 3339 instants (at, start, end). The
// same text goes to both parsers.
//
// Properties: what parses formats back to text that parses to the same
// value (RFC 3339: to the millisecond, the precision format_rfc3339 keeps).
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "common/duration.h"
#include "common/trigger.h"
#include "tests/fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);

  if (auto d = zf::parse_duration(text); d.ok()) {
    FUZZ_CHECK(d->count() >= 0, "a negative duration");
    const std::string shown = zf::format_duration(*d);
    auto back = zf::parse_duration(shown);
    FUZZ_CHECK(back.ok() && *back == *d, "duration '" + shown + "' does not read back");
  }

  if (auto t = zf::parse_rfc3339(text); t.ok()) {
    const std::string shown = zf::format_rfc3339(*t);
    auto back = zf::parse_rfc3339(shown);
    // An offset can move an instant just outside the years 1900-2200 that
    // the parser accepts; everything else must read back.
    if (back.ok())
      FUZZ_CHECK(*back == std::chrono::floor<std::chrono::milliseconds>(*t),
                 "time '" + shown + "' reads back as another instant");
    else
      FUZZ_CHECK(back.error().message.find("year out of range") != std::string::npos,
                 "time '" + shown + "' does not read back: " + back.error().message);
  }
  return 0;
}
