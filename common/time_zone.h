// IANA time zones read from TZif files, for evaluating timer triggers in
// local time. GCC 12's libstdc++ has no std::chrono::tzdb, so we parse
// /usr/share/zoneinfo ourselves (RFC 8536, versions 1 to 4).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>

#include "common/result.h"

namespace zf {

// One IANA zone ("Europe/Berlin"): its UTC offset at any instant, and the
// instants a wall-clock reading stands for. Holds the parsed file through a
// shared_ptr<const>, so copies are cheap and may be used from any thread.
//
// Offsets come from the file's 64-bit transition table; past its last
// transition they come from the POSIX TZ rule in the file's footer, so far
// future dates (America/New_York in 2040 or 2300) follow the current rules.
// Leap seconds are not modelled: zones with leap-second tables ("right/...")
// are rejected.
class TimeZone {
 public:
  // A maximal stretch of time during which the UTC offset does not change.
  struct Span {
    std::int64_t begin;  // first instant (Unix seconds) with utc_offset
    std::int64_t end;    // first instant after the span (exclusive)
    int utc_offset;      // seconds east of UTC inside the span
    int offset_before;   // offset just before `begin`; == utc_offset if none
  };

  // What a wall-clock reading means. In a spring-forward gap the reading
  // never happens (count 0) and `first` is the instant the gap ends, i.e.
  // the first instant whose local time is past the reading. In a fall-back
  // repeat it happens twice (count 2), `first` < `second`.
  struct LocalInstants {
    int count = 1;
    std::chrono::sys_seconds first{};
    std::chrono::sys_seconds second{};  // == first unless count == 2
  };

  // Far-past/far-future bounds of spans that never started/never end.
  // Chosen well inside int64 so adding an offset cannot overflow.
  static constexpr std::int64_t kMinTime = -(std::int64_t{1} << 59);
  static constexpr std::int64_t kMaxTime = std::int64_t{1} << 59;

  // Reads the zone named `iana_name` from $ZFORCE_ZONEINFO if set, else
  // /usr/share/zoneinfo. "UTC" never touches the disk. Names with "..",
  // a leading '/', empty components or unusual characters are refused, so
  // a job file cannot make us read arbitrary files.
  static Result<TimeZone> load(std::string_view iana_name);
  static TimeZone utc();

  const std::string& name() const;

  // Seconds east of UTC at instant t (Berlin in summer: 7200).
  int utc_offset(std::chrono::sys_seconds t) const;
  // The span containing `unix_seconds`; the next one starts at its `end`.
  // Cron walks these to avoid converting minute by minute.
  Span span_at(std::int64_t unix_seconds) const;

  // The instants at which local clocks in this zone read `local`.
  LocalInstants to_utc(std::chrono::local_seconds local) const;

 private:
  struct Data;
  explicit TimeZone(std::shared_ptr<const Data> data) : data_(std::move(data)) {}

  std::shared_ptr<const Data> data_;
};

}  // namespace zf
