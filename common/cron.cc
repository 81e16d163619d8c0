#include "common/cron.h"

#include <algorithm>
#include <array>
#include <bit>
#include <cctype>
#include <vector>

namespace zf {
namespace {

using std::int64_t;
namespace chr = std::chrono;

constexpr int64_t kSecondsPerDay = 86400;
constexpr std::uint32_t kAllHours = (std::uint32_t{1} << 24) - 1;

constexpr std::array<std::string_view, 12> kMonthNames = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                                          "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
constexpr std::array<std::string_view, 7> kDayNames = {"SUN", "MON", "TUE", "WED",
                                                       "THU", "FRI", "SAT"};

struct FieldSpec {
  const char* label;
  int min;
  int max;
  int star_max;  // what '*' and "a/n" run up to; day of week stops at 6
  const std::string_view* names;
  std::size_t name_count;
  int first_named;  // value of names[0]
  const char* name_hint;
};

constexpr std::array<FieldSpec, 5> kFields = {{
    {"minute", 0, 59, 59, nullptr, 0, 0, ""},
    {"hour", 0, 23, 23, nullptr, 0, 0, ""},
    {"day of month", 1, 31, 31, nullptr, 0, 0, ""},
    {"month", 1, 12, 12, kMonthNames.data(), kMonthNames.size(), 1, "JAN-DEC"},
    {"day of week", 0, 7, 6, kDayNames.data(), kDayNames.size(), 0, "SUN-SAT"},
}};

struct Macro {
  std::string_view name;
  std::string_view fields;
};

constexpr std::array<Macro, 7> kMacros = {{
    {"@yearly", "0 0 1 1 *"},
    {"@annually", "0 0 1 1 *"},
    {"@monthly", "0 0 1 * *"},
    {"@weekly", "0 0 * * 0"},
    {"@daily", "0 0 * * *"},
    {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
}};

std::string upper(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  return out;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::vector<std::string_view> split_words(std::string_view s) {
  std::vector<std::string_view> words;
  std::size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    std::size_t begin = i;
    while (i < s.size() && !std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    if (i > begin) words.push_back(s.substr(begin, i - begin));
  }
  return words;
}

bool all_digits(std::string_view s) {
  return !s.empty() && std::all_of(s.begin(), s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

// Parses one field into a bit set. Errors are the text after "field N (...): ".
class FieldParser {
 public:
  explicit FieldParser(const FieldSpec& spec) : spec_(spec) {}

  Result<std::uint64_t> parse(std::string_view field) {
    std::uint64_t bits = 0;
    std::size_t begin = 0;
    while (true) {
      std::size_t comma = field.find(',', begin);
      std::string_view item = field.substr(
          begin, comma == std::string_view::npos ? std::string_view::npos : comma - begin);
      Result<std::uint64_t> r = parse_item(item);
      if (!r) return r;
      bits |= *r;
      if (comma == std::string_view::npos) break;
      begin = comma + 1;
    }
    return bits;
  }

 private:
  std::string range_text() const {
    return std::to_string(spec_.min) + "-" + std::to_string(spec_.max);
  }

  Result<int> value(std::string_view text) const {
    if (text.empty()) return Error{"missing value"};
    if (all_digits(text)) {
      // Long digit strings are out of range anyway; avoid overflowing int.
      int v = text.size() > 6 ? spec_.max + 1 : std::stoi(std::string(text));
      if (v < spec_.min || v > spec_.max) {
        return Error{"value " + std::string(text) + " out of range " + range_text()};
      }
      return v;
    }
    if (spec_.names == nullptr) {
      return Error{"'" + std::string(text) + "' is not a number"};
    }
    std::string name = upper(text);
    for (std::size_t i = 0; i < spec_.name_count; ++i) {
      if (spec_.names[i] == name) return spec_.first_named + static_cast<int>(i);
    }
    return Error{"unknown name '" + std::string(text) + "' (expected " + spec_.name_hint + " or " +
                 range_text() + ")"};
  }

  Result<std::uint64_t> parse_item(std::string_view item) const {
    if (item.empty()) return Error{"empty list item"};
    std::size_t slash = item.find('/');
    std::string_view base = item.substr(0, slash);
    int step = 1;
    if (slash != std::string_view::npos) {
      std::string_view step_text = item.substr(slash + 1);
      if (step_text.empty()) return Error{"missing step after '/' in '" + std::string(item) + "'"};
      if (!all_digits(step_text)) {
        return Error{"step '" + std::string(step_text) + "' is not a number"};
      }
      step = step_text.size() > 6 ? spec_.max + 1 : std::stoi(std::string(step_text));
      if (step == 0) return Error{"step 0 in '" + std::string(item) + "' must be at least 1"};
      if (step > spec_.max) {
        return Error{"step " + std::string(step_text) + " out of range 1-" +
                     std::to_string(spec_.max)};
      }
    }
    int lo = 0, hi = 0;
    if (base == "*") {
      lo = spec_.min;
      hi = spec_.star_max;
    } else if (std::size_t dash = base.find('-'); dash != std::string_view::npos) {
      Result<int> a = value(base.substr(0, dash));
      if (!a) return a.error();
      Result<int> b = value(base.substr(dash + 1));
      if (!b) return b.error();
      if (*a > *b) {
        return Error{"range " + std::string(base) + " is reversed (start is after end)"};
      }
      lo = *a;
      hi = *b;
    } else {
      Result<int> a = value(base);
      if (!a) return a.error();
      lo = *a;
      // "a/n" means every n-th value from a to the end of the field.
      hi = slash != std::string_view::npos ? std::max(spec_.star_max, lo) : lo;
    }
    std::uint64_t bits = 0;
    for (int v = lo; v <= hi; v += step) bits |= std::uint64_t{1} << v;
    return bits;
  }

  const FieldSpec& spec_;
};

// Lowest set bit at or above `from`, or -1.
int next_bit(std::uint64_t bits, int from) {
  if (from >= 64) return -1;
  std::uint64_t rest = bits >> from;
  if (rest == 0) return -1;
  return from + std::countr_zero(rest);
}

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

// std::chrono::year stops at +-32767; searches stay well inside.
constexpr int64_t kFirstSearchable =
    chr::sys_days{chr::year{-30000} / 1 / 1}.time_since_epoch().count() * kSecondsPerDay;
constexpr int64_t kLastSearchable =
    chr::sys_days{chr::year{30000} / 1 / 1}.time_since_epoch().count() * kSecondsPerDay;

}  // namespace

Result<CronExpr> CronExpr::parse(std::string_view text) {
  std::vector<std::string_view> words = split_words(text);
  std::string prefix = "cron '";
  for (std::size_t i = 0; i < words.size(); ++i) {
    prefix += (i ? " " : "") + std::string(words[i]);
  }
  prefix += "': ";

  CronExpr expr;
  std::string macro_fields;
  if (!words.empty() && words[0].front() == '@') {
    std::string name = lower(words[0]);
    if (words.size() > 1) return Error{prefix + "macro " + name + " must stand alone"};
    if (name == "@reboot") {
      return Error{prefix +
                   "@reboot is not supported (timers fire at times of day, not at "
                   "start-up)"};
    }
    for (const Macro& m : kMacros) {
      if (m.name == name) macro_fields = std::string(m.fields);
    }
    if (macro_fields.empty()) {
      return Error{prefix + "unknown macro '" + std::string(words[0]) +
                   "' (expected @yearly, @annually, @monthly, @weekly, @daily, @midnight or "
                   "@hourly)"};
    }
    expr.text_ = name;
    words = split_words(macro_fields);
  }
  if (words.size() != 5) {
    return Error{prefix + "expected 5 fields (minute hour day-of-month month day-of-week), got " +
                 std::to_string(words.size())};
  }

  std::array<std::uint64_t, 5> bits{};
  std::string normalized;
  for (std::size_t i = 0; i < 5; ++i) {
    Result<std::uint64_t> r = FieldParser(kFields[i]).parse(words[i]);
    if (!r) {
      return Error{prefix + "field " + std::to_string(i + 1) + " (" + kFields[i].label +
                   "): " + r.error().message};
    }
    bits[i] = *r;
    normalized += (i ? " " : "") + upper(words[i]);
  }
  // 7 is another name for Sunday.
  if (bits[4] & (1u << 7)) bits[4] = (bits[4] | 1u) & 0x7F;

  expr.minutes_ = bits[0];
  expr.hours_ = static_cast<std::uint32_t>(bits[1]);
  expr.doms_ = static_cast<std::uint32_t>(bits[2]);
  expr.months_ = static_cast<std::uint16_t>(bits[3]);
  expr.dows_ = static_cast<std::uint8_t>(bits[4]);
  expr.dom_star_ = words[2].front() == '*';
  expr.dow_star_ = words[4].front() == '*';
  if (expr.text_.empty()) expr.text_ = normalized;

  // Over 400 Gregorian years every valid (month, day, weekday) triple
  // occurs, Feb 29 included, so this decides whether the job ever fires.
  constexpr std::array<unsigned, 13> kLongestMonth = {0,  31, 29, 31, 30, 31, 30,
                                                      31, 31, 30, 31, 30, 31};
  for (unsigned m = 1; m <= 12 && !expr.can_fire_; ++m) {
    for (unsigned d = 1; d <= kLongestMonth[m] && !expr.can_fire_; ++d) {
      for (unsigned w = 0; w < 7 && !expr.can_fire_; ++w) {
        expr.can_fire_ = expr.day_matches(m, d, w);
      }
    }
  }
  return expr;
}

bool CronExpr::day_matches(unsigned month, unsigned dom, unsigned dow) const {
  if (!(months_ >> month & 1u)) return false;
  bool dom_ok = doms_ >> dom & 1u;
  bool dow_ok = dows_ >> dow & 1u;
  if (dom_star_ || dow_star_) return dom_ok && dow_ok;
  return dom_ok || dow_ok;
}

std::optional<int64_t> CronExpr::first_local_match(int64_t from, int64_t limit) const {
  from = floor_div(from + 59, 60) * 60;
  int64_t day = floor_div(from, kSecondsPerDay);
  int64_t second_of_day = from - day * kSecondsPerDay;
  int hour = static_cast<int>(second_of_day / 3600);
  int minute = static_cast<int>(second_of_day % 3600 / 60);
  chr::year_month_day ymd{chr::sys_days{chr::days{day}}};

  auto next_day = [&] {
    ++day;
    ymd = chr::year_month_day{chr::sys_days{chr::days{day}}};
    hour = minute = 0;
  };
  // Each step moves to the next candidate month, day, hour or minute, so a
  // search visits at most 12 months, 31 days, 24 hours and 60 minutes per
  // year, day and hour it passes, and usually far fewer.
  while (true) {
    int64_t now = day * kSecondsPerDay + hour * 3600 + minute * 60;
    if (now >= limit) return std::nullopt;
    unsigned month = static_cast<unsigned>(ymd.month());
    if (!(months_ >> month & 1u)) {
      chr::year_month next = chr::year_month{ymd.year(), ymd.month()} + chr::months{1};
      day = chr::sys_days{next / 1}.time_since_epoch().count();
      ymd = chr::year_month_day{next / 1};
      hour = minute = 0;
      continue;
    }
    unsigned dow = chr::weekday{chr::sys_days{chr::days{day}}}.c_encoding();
    if (!day_matches(month, static_cast<unsigned>(ymd.day()), dow)) {
      next_day();
      continue;
    }
    if (!(hours_ >> hour & 1u)) {
      int h = next_bit(hours_, hour);
      if (h < 0) {
        next_day();
      } else {
        hour = h;
        minute = 0;
      }
      continue;
    }
    int m = next_bit(minutes_, minute);
    if (m < 0) {
      if (++hour == 24) next_day();
      minute = 0;
      continue;
    }
    if (m != minute) {
      minute = m;
      continue;  // re-check the limit
    }
    return now;
  }
}

std::optional<chr::sys_seconds> CronExpr::next_after(chr::sys_seconds after,
                                                     const TimeZone& tz) const {
  int64_t a = after.time_since_epoch().count();
  if (!can_fire_ || a < kFirstSearchable || a > kLastSearchable) return std::nullopt;
  // 365.25 days per year keeps the horizon at least kSearchYears calendar years.
  int64_t horizon = a + int64_t{kSearchYears} * 31557600;
  bool every_hour = hours_ == kAllHours;

  // Walk the zone's spans of constant offset; inside one, local time runs
  // straight, so a plain calendar search finds the next wall-clock match.
  int64_t t = a + 1;
  while (t < horizon) {
    TimeZone::Span s = tz.span_at(t);
    int64_t off = s.utc_offset;
    int64_t before = s.offset_before;
    bool gap = off > before;
    bool repeat = off < before;
    // A fixed-hour time that the clocks jumped over fires as the gap ends.
    if (gap && !every_hour && t == s.begin && first_local_match(s.begin + before, s.begin + off)) {
      return chr::sys_seconds{chr::seconds{s.begin}};
    }
    int64_t from = t + off;
    // Wall times the clocks show a second time already fired the first time.
    if (repeat && !every_hour) from = std::max(from, s.begin + before);
    int64_t end = std::min(s.end, horizon);
    if (auto local = first_local_match(from, end + off)) {
      return chr::sys_seconds{chr::seconds{*local - off}};
    }
    t = s.end;
  }
  return std::nullopt;
}

}  // namespace zf
