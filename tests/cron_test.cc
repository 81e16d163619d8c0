// Cron parsing, next-fire times and time zones. Every expected instant in
// these tables was worked out by hand and converted with the system's
// `TZ=<zone> date -u -d ...`, never by running the code under test.
#include "common/cron.h"

#include <doctest/doctest.h>
#include <unistd.h>  // getpid, setenv

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <string_view>

#include "common/time_zone.h"

namespace {

using std::chrono::sys_seconds;
namespace chr = std::chrono;

int digits(std::string_view s, std::size_t pos, std::size_t n) {
  int v = 0;
  for (std::size_t i = pos; i < pos + n; ++i) v = v * 10 + (s.at(i) - '0');
  return v;
}

// "2026-03-29T03:00:00+02:00" or "...Z" to an instant. Test input only, so
// malformed text is a bug in the table and fails loudly.
sys_seconds at(std::string_view s) {
  REQUIRE_MESSAGE((s.size() == 20 || s.size() == 25), "bad timestamp in table: ", s);
  chr::year_month_day ymd{chr::year{digits(s, 0, 4)},
                          chr::month{static_cast<unsigned>(digits(s, 5, 2))},
                          chr::day{static_cast<unsigned>(digits(s, 8, 2))}};
  REQUIRE(ymd.ok());
  chr::seconds local = chr::sys_days{ymd}.time_since_epoch() + chr::hours{digits(s, 11, 2)} +
                       chr::minutes{digits(s, 14, 2)} + chr::seconds{digits(s, 17, 2)};
  chr::seconds offset{0};
  if (s[19] != 'Z') {
    offset = chr::hours{digits(s, 20, 2)} + chr::minutes{digits(s, 23, 2)};
    if (s[19] == '-') offset = -offset;
  }
  return sys_seconds{local - offset};
}

std::string show(std::optional<sys_seconds> t) {
  if (!t) return "never";
  auto days = chr::floor<chr::days>(*t);
  chr::year_month_day ymd{days};
  chr::hh_mm_ss hms{*t - days};
  char buf[40];
  std::snprintf(buf, sizeof buf, "%04d-%02u-%02uT%02ld:%02ld:%02ldZ", static_cast<int>(ymd.year()),
                static_cast<unsigned>(ymd.month()), static_cast<unsigned>(ymd.day()),
                static_cast<long>(hms.hours().count()), static_cast<long>(hms.minutes().count()),
                static_cast<long>(hms.seconds().count()));
  return buf;
}

zf::TimeZone zone(const char* name) {
  auto tz = zf::TimeZone::load(name);
  REQUIRE_MESSAGE(tz.ok(), (tz.ok() ? std::string() : tz.error().message));
  return *tz;
}

struct NextCase {
  const char* expr;
  const char* zone;
  const char* after;
  const char* expected;  // UTC, or "never"
};

// Berlin 2026: clocks go 02:00 CET -> 03:00 CEST on Mar 29 (01:00Z), and
// 03:00 CEST -> 02:00 CET on Oct 25 (01:00Z), so 02:00-02:59 happens at
// 00:xxZ and again at 01:xxZ.
// New York 2026: 02:00 EST -> 03:00 EDT on Mar 8 (07:00Z); 02:00 EDT ->
// 01:00 EST on Nov 1 (06:00Z), so 01:00-01:59 happens at 05:xxZ and 06:xxZ.
constexpr NextCase kNextCases[] = {
    // Plain fields, steps, lists and ranges (UTC).
    {"* * * * *", "UTC", "2026-01-01T00:00:00Z", "2026-01-01T00:01:00Z"},
    {"* * * * *", "UTC", "2026-01-01T00:00:30Z", "2026-01-01T00:01:00Z"},
    {"0 * * * *", "UTC", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"},
    {"30 9 * * *", "UTC", "2026-01-01T09:30:00Z", "2026-01-02T09:30:00Z"},
    {"30 9 * * *", "UTC", "2026-01-01T09:29:59Z", "2026-01-01T09:30:00Z"},
    {"*/15 * * * *", "UTC", "2026-01-01T10:50:00Z", "2026-01-01T11:00:00Z"},
    {"5-10/2 * * * *", "UTC", "2026-01-01T10:06:00Z", "2026-01-01T10:07:00Z"},
    {"5-10/2 * * * *", "UTC", "2026-01-01T10:09:00Z", "2026-01-01T11:05:00Z"},
    {"5/20 * * * *", "UTC", "2026-01-01T10:26:00Z", "2026-01-01T10:45:00Z"},
    {"0 0,12 * * *", "UTC", "2026-01-01T06:00:00Z", "2026-01-01T12:00:00Z"},
    {"0 9-17/4 * * *", "UTC", "2026-01-01T13:00:00Z", "2026-01-01T17:00:00Z"},
    {"0 9-17/4 * * *", "UTC", "2026-01-01T17:00:00Z", "2026-01-02T09:00:00Z"},
    {"59 23 31 12 *", "UTC", "2026-06-01T00:00:00Z", "2026-12-31T23:59:00Z"},
    {"0 0 1 1 *", "UTC", "2026-12-31T23:59:59Z", "2027-01-01T00:00:00Z"},
    {"15 14 1 * *", "UTC", "2026-01-31T00:00:00Z", "2026-02-01T14:15:00Z"},
    {"  0\t0  1 1 * ", "UTC", "2026-03-01T00:00:00Z", "2027-01-01T00:00:00Z"},
    // Month ends: the 31st only exists in seven months, the 30th not in Feb.
    {"0 0 31 * *", "UTC", "2026-04-01T00:00:00Z", "2026-05-31T00:00:00Z"},
    {"0 0 31 * *", "UTC", "2026-05-31T00:00:00Z", "2026-07-31T00:00:00Z"},
    {"0 0 31 * *", "UTC", "2026-07-31T00:00:00Z", "2026-08-31T00:00:00Z"},
    {"0 0 31 * *", "UTC", "2026-08-31T00:00:00Z", "2026-10-31T00:00:00Z"},
    {"0 0 30 * *", "UTC", "2026-01-30T00:00:00Z", "2026-03-30T00:00:00Z"},
    {"0 12 31 4,6,9,11 *", "UTC", "2026-01-01T00:00:00Z", "never"},
    {"0 0 30 2 *", "UTC", "2026-01-01T00:00:00Z", "never"},
    {"0 0 31 FEB *", "UTC", "2026-01-01T00:00:00Z", "never"},
    {"0 0 1 3 *", "UTC", "2028-02-28T12:00:00Z", "2028-03-01T00:00:00Z"},
    // Leap years: 2000 and 2028 are leap, 2100 is not.
    {"0 0 29 2 *", "UTC", "2025-01-01T00:00:00Z", "2028-02-29T00:00:00Z"},
    {"0 0 29 2 *", "UTC", "2028-02-29T00:00:00Z", "2032-02-29T00:00:00Z"},
    {"0 0 29 2 *", "UTC", "2097-01-01T00:00:00Z", "2104-02-29T00:00:00Z"},
    {"0 0 29 2 *", "UTC", "2096-02-29T00:00:00Z", "2104-02-29T00:00:00Z"},
    {"0 0 29 2 *", "UTC", "1999-03-01T00:00:00Z", "2000-02-29T00:00:00Z"},
    {"0 0 28 2 *", "UTC", "2028-02-28T00:00:00Z", "2029-02-28T00:00:00Z"},
    {"0 0 * 2 *", "UTC", "2028-02-28T00:00:00Z", "2028-02-29T00:00:00Z"},
    {"0 0 * 2 *", "UTC", "2027-02-28T00:00:00Z", "2028-02-01T00:00:00Z"},
    {"0 0 29 2 *", "America/New_York", "2097-01-01T00:00:00Z", "2104-02-29T05:00:00Z"},
    // Feb 29 that is also a Sunday ('*/7' starts with '*', so dom AND dow):
    // 2088, then 2128, the longest gap any expression can have.
    {"0 0 29 2 */7", "UTC", "2089-01-01T00:00:00Z", "2128-02-29T00:00:00Z"},
    // Weekdays and names. 2026-01-01 is a Thursday.
    {"0 9 * * MON-FRI", "UTC", "2026-01-02T09:00:00Z", "2026-01-05T09:00:00Z"},
    {"0 9 * * mon,Wed", "UTC", "2026-01-05T09:00:00Z", "2026-01-07T09:00:00Z"},
    {"0 9 * * 7", "UTC", "2026-01-01T00:00:00Z", "2026-01-04T09:00:00Z"},
    {"0 9 * * 0", "UTC", "2026-01-01T00:00:00Z", "2026-01-04T09:00:00Z"},
    {"0 9 * * 5-7", "UTC", "2026-01-03T10:00:00Z", "2026-01-04T09:00:00Z"},
    {"0 22 * * 1-5", "UTC", "2026-01-02T22:00:00Z", "2026-01-05T22:00:00Z"},
    {"0 0 * * SAT,SUN", "UTC", "2026-01-01T00:00:00Z", "2026-01-03T00:00:00Z"},
    {"0 0 * jan,JUL *", "UTC", "2026-01-31T00:00:00Z", "2026-07-01T00:00:00Z"},
    {"0 0 1 JUN-AUG *", "UTC", "2026-08-01T00:00:00Z", "2027-06-01T00:00:00Z"},
    // The dom/dow OR rule: both restricted, either one matches.
    {"0 0 13 * FRI", "UTC", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    {"0 0 13 * 5", "UTC", "2026-01-02T00:00:00Z", "2026-01-09T00:00:00Z"},
    {"0 0 13 * FRI", "UTC", "2026-01-09T00:00:00Z", "2026-01-13T00:00:00Z"},
    {"0 0 1,15 * 3", "UTC", "2026-01-01T00:00:00Z", "2026-01-07T00:00:00Z"},
    {"0 0 29 2 SUN", "UTC", "2026-02-01T00:00:00Z", "2026-02-08T00:00:00Z"},
    // ... but a field starting with '*' makes it AND: 1st/11th/21st/31st
    // that is a Monday.
    {"0 0 */10 * MON", "UTC", "2026-01-01T00:00:00Z", "2026-05-11T00:00:00Z"},
    // Macros.
    {"@yearly", "UTC", "2026-03-04T00:00:00Z", "2027-01-01T00:00:00Z"},
    {"@annually", "UTC", "2026-03-04T00:00:00Z", "2027-01-01T00:00:00Z"},
    {"@monthly", "UTC", "2026-01-31T12:00:00Z", "2026-02-01T00:00:00Z"},
    {"@weekly", "UTC", "2026-01-01T00:00:00Z", "2026-01-04T00:00:00Z"},
    {"@daily", "UTC", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    {"@midnight", "UTC", "2026-01-01T12:00:00Z", "2026-01-02T00:00:00Z"},
    {"@hourly", "UTC", "2026-01-01T05:59:59Z", "2026-01-01T06:00:00Z"},
    {"@DAILY", "UTC", "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"},
    // Other zones, no transition nearby.
    {"0 9 * * *", "Europe/Berlin", "2026-01-15T12:00:00Z", "2026-01-16T08:00:00Z"},
    {"0 9 * * *", "Europe/Berlin", "2026-07-15T12:00:00Z", "2026-07-16T07:00:00Z"},
    {"0 0 1 1 *", "Asia/Kolkata", "2026-06-01T00:00:00Z", "2026-12-31T18:30:00Z"},
    {"@daily", "Europe/Berlin", "2026-01-01T00:00:00+01:00", "2026-01-01T23:00:00Z"},
    // Berlin spring forward: 02:xx does not exist on 2026-03-29.
    {"30 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z"},
    {"30 2 * * *", "Europe/Berlin", "2026-03-29T03:00:00+02:00", "2026-03-30T00:30:00Z"},
    {"0 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z"},
    {"*/15 2 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z"},
    {"*/15 2 * * *", "Europe/Berlin", "2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"},
    {"0 3 * * *", "Europe/Berlin", "2026-03-28T12:00:00Z", "2026-03-29T01:00:00Z"},
    {"0,30 2,3 * * *", "Europe/Berlin", "2026-03-29T00:59:59Z", "2026-03-29T01:00:00Z"},
    {"0,30 2,3 * * *", "Europe/Berlin", "2026-03-29T01:00:00Z", "2026-03-29T01:30:00Z"},
    {"*/15 * * * *", "Europe/Berlin", "2026-03-29T01:45:00+01:00", "2026-03-29T01:00:00Z"},
    {"30 * * * *", "Europe/Berlin", "2026-03-29T01:30:00+01:00", "2026-03-29T01:30:00Z"},
    // Berlin fall back: 02:xx happens twice on 2026-10-25.
    {"30 2 * * *", "Europe/Berlin", "2026-10-24T12:00:00Z", "2026-10-25T00:30:00Z"},
    {"30 2 * * *", "Europe/Berlin", "2026-10-25T02:30:00+02:00", "2026-10-26T01:30:00Z"},
    {"30 2 * * *", "Europe/Berlin", "2026-10-25T02:10:00+01:00", "2026-10-26T01:30:00Z"},
    {"*/20 2 * * *", "Europe/Berlin", "2026-10-25T02:40:00+02:00", "2026-10-26T01:00:00Z"},
    {"*/15 * * * *", "Europe/Berlin", "2026-10-25T02:45:00+02:00", "2026-10-25T01:00:00Z"},
    {"*/15 * * * *", "Europe/Berlin", "2026-10-25T02:45:00+01:00", "2026-10-25T02:00:00Z"},
    {"0 * * * *", "Europe/Berlin", "2026-10-25T02:00:00+02:00", "2026-10-25T01:00:00Z"},
    // New York spring forward: 02:xx does not exist on 2026-03-08.
    {"30 2 * * *", "America/New_York", "2026-03-07T12:00:00Z", "2026-03-08T07:00:00Z"},
    {"30 2 * * *", "America/New_York", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"},
    {"59 1 * * *", "America/New_York", "2026-03-07T12:00:00Z", "2026-03-08T06:59:00Z"},
    {"0 3 * * *", "America/New_York", "2026-03-07T12:00:00Z", "2026-03-08T07:00:00Z"},
    {"*/30 * * * *", "America/New_York", "2026-03-08T01:30:00-05:00", "2026-03-08T07:00:00Z"},
    // New York fall back: 01:xx happens twice on 2026-11-01.
    {"30 1 * * *", "America/New_York", "2026-10-31T12:00:00Z", "2026-11-01T05:30:00Z"},
    {"30 1 * * *", "America/New_York", "2026-11-01T01:30:00-04:00", "2026-11-02T06:30:00Z"},
    {"*/15 * * * *", "America/New_York", "2026-11-01T01:45:00-04:00", "2026-11-01T06:00:00Z"},
    {"30 * * * *", "America/New_York", "2026-11-01T01:30:00-04:00", "2026-11-01T06:30:00Z"},
    {"0 2 * * *", "America/New_York", "2026-10-31T12:00:00Z", "2026-11-01T07:00:00Z"},
    // Past the end of the file's table (2037): the footer rule.
    {"0 9 * * *", "America/New_York", "2040-07-01T00:00:00Z", "2040-07-01T13:00:00Z"},
    {"30 2 * * *", "America/New_York", "2040-03-10T12:00:00Z", "2040-03-11T07:00:00Z"},
    {"30 1 * * *", "America/New_York", "2040-11-03T12:00:00Z", "2040-11-04T05:30:00Z"},
    // Southern hemisphere, a half-hour shift, and a whole skipped day.
    {"30 2 * * *", "Australia/Sydney", "2026-10-03T00:00:00Z", "2026-10-03T16:00:00Z"},
    {"15 2 * * *", "Australia/Lord_Howe", "2026-10-03T00:00:00Z", "2026-10-03T15:30:00Z"},
    {"0 0 * * *", "Pacific/Apia", "2011-12-29T12:00:00-10:00", "2011-12-30T10:00:00Z"},
    {"0 0 * * *", "Pacific/Apia", "2011-12-31T00:00:00+14:00", "2011-12-31T10:00:00Z"},
};

struct BadCase {
  const char* expr;
  const char* error;  // the whole message
};

constexpr BadCase kBadCases[] = {
    {"", "cron '': expected 5 fields (minute hour day-of-month month day-of-week), got 0"},
    {"* * * *",
     "cron '* * * *': expected 5 fields (minute hour day-of-month month day-of-week), "
     "got 4"},
    {"* * * * * *",
     "cron '* * * * * *': expected 5 fields (minute hour day-of-month month "
     "day-of-week), got 6"},
    {"60 * * * *", "cron '60 * * * *': field 1 (minute): value 60 out of range 0-59"},
    {"* 24 * * *", "cron '* 24 * * *': field 2 (hour): value 24 out of range 0-23"},
    {"0 0 32 * *", "cron '0 0 32 * *': field 3 (day of month): value 32 out of range 1-31"},
    {"0 0 0 * *", "cron '0 0 0 * *': field 3 (day of month): value 0 out of range 1-31"},
    {"0 0 1-32 * *", "cron '0 0 1-32 * *': field 3 (day of month): value 32 out of range 1-31"},
    {"0 0 * 13 *", "cron '0 0 * 13 *': field 4 (month): value 13 out of range 1-12"},
    {"0 0 * * 8", "cron '0 0 * * 8': field 5 (day of week): value 8 out of range 0-7"},
    {"99999999999 * * * *",
     "cron '99999999999 * * * *': field 1 (minute): value 99999999999 out of range 0-59"},
    {"0 0 * FOO *",
     "cron '0 0 * FOO *': field 4 (month): unknown name 'FOO' (expected JAN-DEC or 1-12)"},
    {"0 0 * * FUN",
     "cron '0 0 * * FUN': field 5 (day of week): unknown name 'FUN' (expected SUN-SAT or 0-7)"},
    {"a * * * *", "cron 'a * * * *': field 1 (minute): 'a' is not a number"},
    {"0 MON * * *", "cron '0 MON * * *': field 2 (hour): 'MON' is not a number"},
    {"*/0 * * * *", "cron '*/0 * * * *': field 1 (minute): step 0 in '*/0' must be at least 1"},
    {"0 0 * JAN-DEC/13 *", "cron '0 0 * JAN-DEC/13 *': field 4 (month): step 13 out of range 1-12"},
    {"*/ * * * *", "cron '*/ * * * *': field 1 (minute): missing step after '/' in '*/'"},
    {"*/x * * * *", "cron '*/x * * * *': field 1 (minute): step 'x' is not a number"},
    {"5-1 * * * *",
     "cron '5-1 * * * *': field 1 (minute): range 5-1 is reversed (start is after end)"},
    {"0 0 * * MON-SUN",
     "cron '0 0 * * MON-SUN': field 5 (day of week): range MON-SUN is reversed (start is after "
     "end)"},
    {"1,,2 * * * *", "cron '1,,2 * * * *': field 1 (minute): empty list item"},
    {"1- * * * *", "cron '1- * * * *': field 1 (minute): missing value"},
    {"-5 * * * *", "cron '-5 * * * *': field 1 (minute): missing value"},
    {"@reboot",
     "cron '@reboot': @reboot is not supported (timers fire at times of day, not at start-up)"},
    {"@fortnightly",
     "cron '@fortnightly': unknown macro '@fortnightly' (expected @yearly, "
     "@annually, @monthly, @weekly, @daily, @midnight or @hourly)"},
    {"@daily 5", "cron '@daily 5': macro @daily must stand alone"},
};

}  // namespace

TEST_CASE("cron: next firing times match the hand-computed table") {
  CHECK(std::size(kNextCases) >= 60);
  for (const NextCase& c : kNextCases) {
    CAPTURE(c.expr);
    CAPTURE(c.zone);
    CAPTURE(c.after);
    auto expr = zf::CronExpr::parse(c.expr);
    REQUIRE_MESSAGE(expr.ok(), (expr.ok() ? std::string() : expr.error().message));
    zf::TimeZone tz = zone(c.zone);
    CHECK(show(expr->next_after(at(c.after), tz)) == std::string(c.expected));
  }
}

TEST_CASE("cron: invalid expressions say what is wrong and where") {
  CHECK(std::size(kBadCases) >= 15);
  for (const BadCase& c : kBadCases) {
    CAPTURE(c.expr);
    auto expr = zf::CronExpr::parse(c.expr);
    REQUIRE_FALSE(expr.ok());
    CHECK(expr.error().message == std::string(c.error));
  }
}

TEST_CASE("cron: to_string gives the normalized source") {
  CHECK(zf::CronExpr::parse("  0   9 * *\tmon-fri ")->to_string() == "0 9 * * MON-FRI");
  CHECK(zf::CronExpr::parse("*/5 * * jan *")->to_string() == "*/5 * * JAN *");
  CHECK(zf::CronExpr::parse("@Daily")->to_string() == "@daily");
  auto again = zf::CronExpr::parse(zf::CronExpr::parse("0 0 1 jun-aug *")->to_string());
  REQUIRE(again.ok());
  CHECK(again->to_string() == "0 0 1 JUN-AUG *");
}

TEST_CASE("cron: impossible days are known at parse time") {
  CHECK_FALSE(zf::CronExpr::parse("0 0 30 2 *")->can_fire());
  CHECK_FALSE(zf::CronExpr::parse("0 0 31 4,6,9,11 *")->can_fire());
  CHECK(zf::CronExpr::parse("0 0 29 2 *")->can_fire());
  CHECK(zf::CronExpr::parse("0 0 30 2 MON")->can_fire());  // OR rule: any Monday in Feb
}

TEST_CASE("cron: every 15 minutes keeps a 15-minute pace through New York's repeated hour") {
  auto expr = zf::CronExpr::parse("*/15 * * * *");
  zf::TimeZone ny = zone("America/New_York");
  sys_seconds t = at("2026-11-01T04:00:00Z");  // 00:00 EDT
  for (int i = 1; i <= 16; ++i) {              // through 03:00 EST = 08:00Z
    auto next = expr->next_after(t, ny);
    REQUIRE(next);
    CHECK(*next - t == chr::minutes{15});
    t = *next;
  }
  CHECK(show(t) == "2026-11-01T08:00:00Z");
}

TEST_CASE("cron: a fixed-hour job never fires twice for one wall time on transition days") {
  zf::TimeZone berlin = zone("Europe/Berlin");
  for (const char* day : {"2026-03-29", "2026-10-25"}) {
    CAPTURE(day);
    auto expr = zf::CronExpr::parse("*/30 2 * * *");
    sys_seconds begin = at(std::string(day) + "T00:00:00+01:00");
    sys_seconds end = begin + chr::hours{23};
    int firings = 0;
    for (auto t = expr->next_after(begin, berlin); t && *t < end;
         t = expr->next_after(*t, berlin)) {
      ++firings;
    }
    // Spring: 02:00 and 02:30 do not exist and collapse into one firing at
    // 03:00. Autumn: they exist twice and fire only the first time.
    CHECK(firings == (std::string(day) == "2026-03-29" ? 1 : 2));
  }
}

TEST_CASE("cron: a rare schedule is found quickly") {
  auto expr = zf::CronExpr::parse("0 0 29 2 */7");  // Feb 29 on a Sunday
  zf::TimeZone ny = zone("America/New_York");
  auto start = chr::steady_clock::now();
  for (int i = 0; i < 100; ++i) {
    CHECK(expr->next_after(at("2089-01-01T00:00:00Z"), ny).has_value());
  }
  // 40 years of spans each time; generous so a slow machine does not flake.
  CHECK(chr::steady_clock::now() - start < chr::seconds{1});
}

TEST_CASE("time zone: offsets on both sides of transitions") {
  zf::TimeZone berlin = zone("Europe/Berlin");
  CHECK(berlin.utc_offset(at("2026-03-29T00:59:59Z")) == 3600);
  CHECK(berlin.utc_offset(at("2026-03-29T01:00:00Z")) == 7200);
  zf::TimeZone ny = zone("America/New_York");
  CHECK(ny.name() == "America/New_York");
  CHECK(ny.utc_offset(at("2026-03-08T06:59:59Z")) == -18000);
  CHECK(ny.utc_offset(at("2026-03-08T07:00:00Z")) == -14400);
  CHECK(ny.utc_offset(at("2026-11-01T05:59:59Z")) == -14400);
  CHECK(ny.utc_offset(at("2026-11-01T06:00:00Z")) == -18000);
  // Local mean time before the first transition: -4:56:02.
  CHECK(ny.utc_offset(at("1800-01-01T00:00:00Z")) == -17762);
}

TEST_CASE("time zone: far-future instants follow the footer rule") {
  zf::TimeZone ny = zone("America/New_York");
  CHECK(ny.utc_offset(at("2040-01-15T00:00:00Z")) == -18000);
  CHECK(ny.utc_offset(at("2040-03-11T06:59:59Z")) == -18000);
  CHECK(ny.utc_offset(at("2040-03-11T07:00:00Z")) == -14400);
  CHECK(ny.utc_offset(at("2040-07-15T00:00:00Z")) == -14400);
  CHECK(ny.utc_offset(at("2300-07-01T12:00:00Z")) == -14400);
  CHECK(ny.utc_offset(at("2300-12-01T12:00:00Z")) == -18000);
  zf::TimeZone sydney = zone("Australia/Sydney");  // DST spans the new year
  CHECK(sydney.utc_offset(at("2040-01-15T00:00:00Z")) == 39600);
  CHECK(sydney.utc_offset(at("2040-07-15T00:00:00Z")) == 36000);
  CHECK(sydney.utc_offset(at("2300-12-01T12:00:00Z")) == 39600);
}

TEST_CASE("time zone: local times in gaps and repeats") {
  zf::TimeZone berlin = zone("Europe/Berlin");
  auto local = [](const char* s) {
    return chr::local_seconds{at(std::string(s) + "Z").time_since_epoch()};
  };
  auto gap = berlin.to_utc(local("2026-03-29T02:30:00"));
  CHECK(gap.count == 0);
  CHECK(show(gap.first) == "2026-03-29T01:00:00Z");
  auto repeat = berlin.to_utc(local("2026-10-25T02:30:00"));
  CHECK(repeat.count == 2);
  CHECK(show(repeat.first) == "2026-10-25T00:30:00Z");
  CHECK(show(repeat.second) == "2026-10-25T01:30:00Z");
  auto plain = berlin.to_utc(local("2026-07-01T12:00:00"));
  CHECK(plain.count == 1);
  CHECK(show(plain.first) == "2026-07-01T10:00:00Z");
  auto future = zone("America/New_York").to_utc(local("2040-11-04T01:30:00"));
  CHECK(future.count == 2);
  CHECK(show(future.first) == "2040-11-04T05:30:00Z");
  CHECK(show(future.second) == "2040-11-04T06:30:00Z");
}

TEST_CASE("time zone: UTC needs no file and copies share the parsed data") {
  zf::TimeZone utc = zf::TimeZone::utc();
  CHECK(utc.name() == "UTC");
  CHECK(utc.utc_offset(at("2026-07-01T00:00:00Z")) == 0);
  CHECK(zone("UTC").utc_offset(at("1900-01-01T00:00:00Z")) == 0);
  zf::TimeZone a = zone("Europe/Berlin");
  zf::TimeZone b = a;
  CHECK(b.utc_offset(at("2026-07-01T00:00:00Z")) == 7200);
}

TEST_CASE("time zone: unknown and unsafe names are refused") {
  auto unknown = zf::TimeZone::load("Mars/Base");
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message == "unknown time zone 'Mars/Base'");
  auto traversal = zf::TimeZone::load("../../etc/passwd");
  REQUIRE_FALSE(traversal.ok());
  CHECK(traversal.error().message == "time zone name '../../etc/passwd' must not contain '..'");
  auto sneaky = zf::TimeZone::load("Europe/../Europe/Berlin");
  REQUIRE_FALSE(sneaky.ok());
  CHECK(sneaky.error().message == "time zone name 'Europe/../Europe/Berlin' must not contain '..'");
  auto absolute = zf::TimeZone::load("/etc/localtime");
  REQUIRE_FALSE(absolute.ok());
  CHECK(absolute.error().message ==
        "time zone name '/etc/localtime' must be an IANA name such "
        "as 'Europe/Berlin', not a path");
  for (const char* name : {"", "America", "zone.tab", "Europe/Berlin ", "Europe//Berlin"}) {
    CAPTURE(name);
    CHECK_FALSE(zf::TimeZone::load(name).ok());
  }
  CHECK(zf::TimeZone::load("America").error().message == "unknown time zone 'America'");
}

namespace {

// A scratch zoneinfo directory named by ZFORCE_ZONEINFO for one test.
class ScratchZoneinfo {
 public:
  ScratchZoneinfo() {
    dir_ =
        std::filesystem::temp_directory_path() / ("zforce-zoneinfo-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir_);
    ::setenv("ZFORCE_ZONEINFO", dir_.c_str(), 1);
  }
  ~ScratchZoneinfo() {
    ::unsetenv("ZFORCE_ZONEINFO");
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  const std::filesystem::path& dir() const { return dir_; }

 private:
  std::filesystem::path dir_;
};

}  // namespace

TEST_CASE("time zone: ZFORCE_ZONEINFO overrides the directory and bad files are reported") {
  ScratchZoneinfo scratch;
  CHECK(zf::TimeZone::load("Europe/Berlin").error().message == "unknown time zone 'Europe/Berlin'");
  std::filesystem::create_directories(scratch.dir() / "Test");
  std::filesystem::copy_file("/usr/share/zoneinfo/Europe/Berlin", scratch.dir() / "Test/Copy");
  auto copy = zf::TimeZone::load("Test/Copy");
  REQUIRE(copy.ok());
  CHECK(copy->utc_offset(at("2026-07-01T00:00:00Z")) == 7200);

  std::ofstream(scratch.dir() / "Test/Text") << "not a zone\n";
  CHECK(zf::TimeZone::load("Test/Text").error().message == "unknown time zone 'Test/Text'");

  std::ofstream(scratch.dir() / "Test/Short", std::ios::binary) << "TZif2";
  auto short_file = zf::TimeZone::load("Test/Short");
  REQUIRE_FALSE(short_file.ok());
  CHECK(short_file.error().message.find("is not a valid TZif file (truncated header)") !=
        std::string::npos);
}

TEST_CASE("time zone: a slim file with only a footer rule works") {
  // zic -b slim leaves out transitions the footer can compute, so this
  // exercises the rule alone. Skipped where zic is not installed.
  if (std::system("command -v zic >/dev/null 2>&1") != 0) return;
  ScratchZoneinfo scratch;
  std::filesystem::path source = scratch.dir() / "slim.zi";
  std::ofstream(source) << "Rule US 2007 max - Mar Sun>=8 2:00 1:00 D\n"
                           "Rule US 2007 max - Nov Sun>=1 2:00 0 S\n"
                           "Zone Test/Slim -5:00 US E%sT\n";
  std::string cmd = "zic -b slim -d '" + scratch.dir().string() + "' '" + source.string() + "'";
  REQUIRE(std::system(cmd.c_str()) == 0);
  zf::TimeZone slim = zone("Test/Slim");
  CHECK(slim.utc_offset(at("2026-03-08T06:59:59Z")) == -18000);
  CHECK(slim.utc_offset(at("2026-03-08T07:00:00Z")) == -14400);
  CHECK(slim.utc_offset(at("2026-11-01T05:59:59Z")) == -14400);
  CHECK(slim.utc_offset(at("2026-11-01T06:00:00Z")) == -18000);
  auto expr = zf::CronExpr::parse("30 2 * * *");
  CHECK(show(expr->next_after(at("2026-03-07T12:00:00Z"), slim)) == "2026-03-08T07:00:00Z");
}
