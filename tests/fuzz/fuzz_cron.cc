// libFuzzer target: cron expressions as operators write them in
// `cron = "..."` triggers, through CronExpr::parse, and for an expression
// that parses, the next firings in UTC and in zones with daylight saving
// (whole-hour, half-hour, and southern-hemisphere rules).
//
// Properties: the normalized text parses again to the same text; a firing
// is strictly after the instant asked about; asking again from one second
// before a firing finds that same firing (the scheduler asks repeatedly);
// an expression that can fire has a next firing.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/cron.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

namespace chr = std::chrono;

std::vector<zf::TimeZone> load_zones() {
  std::vector<zf::TimeZone> zones = {zf::TimeZone::utc()};
  for (const char* name : {"Europe/Berlin", "Australia/Lord_Howe", "America/Santiago"}) {
    auto z = zf::TimeZone::load(name);
    if (z.ok()) zones.push_back(*z);  // without tzdata, UTC only
  }
  return zones;
}

const std::vector<zf::TimeZone>& zones() {
  static const std::vector<zf::TimeZone> z = load_zones();
  return z;
}

std::string text_of(chr::sys_seconds t) { return std::to_string(t.time_since_epoch().count()); }

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  (void)zones();
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto expr = zf::CronExpr::parse(text);
  if (!expr.ok()) {
    FUZZ_CHECK(expr.error().message.rfind("cron '", 0) == 0, "an error that does not quote the expression");
    return 0;
  }
  auto again = zf::CronExpr::parse(expr->to_string());
  FUZZ_CHECK(again.ok(), "the normalized text '" + expr->to_string() + "' does not parse");
  FUZZ_CHECK(again->to_string() == expr->to_string(), "normalizing is not stable: " + expr->to_string());
  FUZZ_CHECK(again->can_fire() == expr->can_fire(), "can_fire changed on reparse: " + expr->to_string());

  // 2026-03-29 00:30 UTC: hours before the EU spring-forward.
  const chr::sys_seconds start{chr::sys_days{chr::year{2026} / 3 / 29}.time_since_epoch() + chr::minutes(30)};
  for (const auto& tz : zones()) {
    chr::sys_seconds after = start;
    for (int i = 0; i < 3; ++i) {
      auto next = expr->next_after(after, tz);
      if (!next) {
        // Any day an expression can match comes round within 40 years.
        FUZZ_CHECK(!expr->can_fire(), "no firing for an expression that can fire: " + expr->to_string());
        break;
      }
      const std::string where = expr->to_string() + " in " + tz.name() + " after " + text_of(after);
      FUZZ_CHECK(*next > after, "a firing not after 'after': " + where);
      auto same = expr->next_after(*next - chr::seconds(1), tz);
      FUZZ_CHECK(same && *same == *next,
                 "asking from one second earlier finds another firing: " + where + " -> " + text_of(*next) +
                     " vs " + (same ? text_of(*same) : std::string("none")));
      after = *next;
    }
  }
  return 0;
}
