// Cron expressions for timer triggers: parsing, and the next firing time in
// a time zone. The syntax and the daylight-saving rules are in docs/cron.md.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/result.h"
#include "common/time_zone.h"

namespace zf {

// A parsed five-field cron expression ("m h dom mon dow", or a macro such
// as "@daily"). A small immutable value: it owns its match sets and the
// normalized text, and is safe to share between threads.
class CronExpr {
 public:
  // Errors name the expression, the field and the problem, e.g.
  // "cron '0 0 32 * *': field 3 (day of month): value 32 out of range 1-31".
  static Result<CronExpr> parse(std::string_view text);

  // How far next_after() looks ahead of `after`. Any expression that can
  // match a calendar day at all does so within 40 years (Feb 29 on a given
  // weekday is the rarest), so the bound only guards the loop.
  static constexpr int kSearchYears = 50;

  // The first firing strictly after `after`, with the fields read as wall
  // time in `tz`; nullopt if the expression can never fire (e.g. Feb 30).
  // Daylight-saving gaps and repeats follow docs/cron.md:
  //  - a fixed-hour job whose time falls in a gap fires once, at the
  //    instant the gap ends; in a repeat it fires only the first time;
  //  - a job whose hour field matches all 24 hours fires by elapsed time:
  //    minutes skipped by a gap do not exist, repeated minutes fire twice.
  std::optional<std::chrono::sys_seconds> next_after(std::chrono::sys_seconds after,
                                                     const TimeZone& tz) const;

  // The expression with whitespace collapsed and names upper-cased
  // ("0 9 * * MON-FRI"); macros are kept as written, lower-cased ("@daily").
  const std::string& to_string() const { return text_; }

  // Whether some calendar day (in some year) satisfies the day fields.
  bool can_fire() const { return can_fire_; }

 private:
  CronExpr() = default;

  bool day_matches(unsigned month, unsigned dom, unsigned dow) const;
  // First whole local minute in [from, limit) that matches all fields, in
  // seconds since 1970-01-01 local time.
  std::optional<std::int64_t> first_local_match(std::int64_t from, std::int64_t limit) const;

  std::uint64_t minutes_ = 0;  // bit m: minute m (0-59)
  std::uint32_t hours_ = 0;    // bit h: hour h (0-23)
  std::uint32_t doms_ = 0;     // bit d: day of month d (1-31)
  std::uint16_t months_ = 0;   // bit m: month m (1-12)
  std::uint8_t dows_ = 0;      // bit d: weekday d (0 = Sunday .. 6)
  // Vixie cron: a field written starting with '*' does not restrict days,
  // so dom and dow are OR-ed only when neither starts with '*'.
  bool dom_star_ = false;
  bool dow_star_ = false;
  bool can_fire_ = false;
  std::string text_;
};

}  // namespace zf
