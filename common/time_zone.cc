#include "common/time_zone.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <optional>
#include <system_error>
#include <vector>

namespace zf {
namespace {

using std::int64_t;
namespace chr = std::chrono;

constexpr int64_t kSecondsPerDay = 86400;
// RFC 8536 keeps offsets within -25:59:59 .. +25:59:59; anything wider
// would be a corrupt file, and the bound lets to_utc() look at a small window.
constexpr int kMaxOffset = 26 * 3600;
// The Gregorian calendar, weekdays included, repeats every 400 years
// (146097 days, exactly 20871 weeks), so a POSIX rule does too.
constexpr int64_t kGregorianCycle = 146097 * kSecondsPerDay;
constexpr std::size_t kMaxFileSize = 1 << 20;

int64_t floor_div(int64_t a, int64_t b) {
  int64_t q = a / b;
  return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}

int64_t days_of(const chr::year_month_day& ymd) {
  return chr::sys_days{ymd}.time_since_epoch().count();
}

// --- the footer: a POSIX TZ string such as "EST5EDT,M3.2.0,M11.1.0" ----------

// A day of the year as POSIX TZ rules write it.
struct RuleDay {
  enum Kind { kJulian1, kJulian0, kMonthWeekDay } kind = kMonthWeekDay;
  int n = 0;                             // Jn (1..365, Feb 29 never counted) or n (0..365)
  int month = 0, week = 0, weekday = 0;  // Mm.w.d; week 5 means "last"

  // Days since 1970-01-01 of this rule's day in `year`.
  int64_t days_in(int year) const {
    chr::year y{year};
    switch (kind) {
      case kJulian1: {
        int offset = n - 1;
        if (y.is_leap() && n >= 60) ++offset;
        return days_of(y / chr::January / 1) + offset;
      }
      case kJulian0:
        return days_of(y / chr::January / 1) + n;
      case kMonthWeekDay: {
        chr::year_month ym = y / chr::month{static_cast<unsigned>(month)};
        chr::sys_days first{ym / 1};
        unsigned first_wd = chr::weekday{first}.c_encoding();
        int64_t day = (static_cast<int>(weekday) - static_cast<int>(first_wd) + 7) % 7 +
                      int64_t{week - 1} * 7;
        int64_t month_len = static_cast<unsigned>((ym / chr::last).day());
        while (day >= month_len) day -= 7;  // week 5 = the last such weekday
        return first.time_since_epoch().count() + day;
      }
    }
    return 0;
  }
};

struct PosixRule {
  int std_offset = 0;  // east of UTC, unlike the string's west-positive sign
  bool has_dst = false;
  int dst_offset = 0;
  RuleDay start, end;
  int start_time = 7200, end_time = 7200;  // local wall time of day, may exceed 24h
};

class TzStringParser {
 public:
  explicit TzStringParser(std::string_view s) : s_(s) {}

  std::optional<PosixRule> parse() {
    PosixRule r;
    int west = 0;
    if (!name() || !hms(west, 24)) return std::nullopt;
    r.std_offset = -west;
    if (at_end()) return r;
    if (!name()) return std::nullopt;
    r.has_dst = true;
    r.dst_offset = r.std_offset + 3600;
    if (!at_end() && peek() != ',') {
      if (!hms(west, 24)) return std::nullopt;
      r.dst_offset = -west;
    }
    if (at_end()) {
      // No rule given: POSIX leaves it to the implementation; glibc uses
      // the US rules, and so do we. tzdata always spells the rule out.
      r.start = RuleDay{RuleDay::kMonthWeekDay, 0, 3, 2, 0};
      r.end = RuleDay{RuleDay::kMonthWeekDay, 0, 11, 1, 0};
      return r;
    }
    if (!eat(',') || !rule_day(r.start)) return std::nullopt;
    if (eat('/') && !hms(r.start_time, 167)) return std::nullopt;
    if (!eat(',') || !rule_day(r.end)) return std::nullopt;
    if (eat('/') && !hms(r.end_time, 167)) return std::nullopt;
    if (!at_end()) return std::nullopt;
    if (r.dst_offset == r.std_offset) r.has_dst = false;
    return r;
  }

 private:
  bool at_end() const { return i_ >= s_.size(); }
  char peek() const { return s_[i_]; }
  bool eat(char c) {
    if (at_end() || peek() != c) return false;
    ++i_;
    return true;
  }
  static bool is_alpha(char c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }
  static bool is_digit(char c) { return c >= '0' && c <= '9'; }

  bool name() {
    std::size_t begin = i_;
    if (eat('<')) {
      while (!at_end() && peek() != '>') ++i_;
      return eat('>') && i_ - begin >= 5;  // "<" + at least 3 + ">"
    }
    while (!at_end() && is_alpha(peek())) ++i_;
    return i_ - begin >= 3;
  }

  bool number(int& out, int max) {
    if (at_end() || !is_digit(peek())) return false;
    int v = 0;
    while (!at_end() && is_digit(peek())) {
      v = v * 10 + (peek() - '0');
      if (v > max) return false;
      ++i_;
    }
    out = v;
    return true;
  }

  // [+-]hh[:mm[:ss]] in seconds.
  bool hms(int& out, int max_hours) {
    int sign = eat('-') ? -1 : 1;
    if (sign > 0) eat('+');
    int h = 0, m = 0, sec = 0;
    if (!number(h, max_hours)) return false;
    if (eat(':')) {
      if (!number(m, 59)) return false;
      if (eat(':') && !number(sec, 59)) return false;
    }
    out = sign * (h * 3600 + m * 60 + sec);
    return true;
  }

  bool rule_day(RuleDay& d) {
    if (eat('J')) {
      d.kind = RuleDay::kJulian1;
      return number(d.n, 365) && d.n >= 1;
    }
    if (eat('M')) {
      d.kind = RuleDay::kMonthWeekDay;
      return number(d.month, 12) && d.month >= 1 && eat('.') && number(d.week, 5) && d.week >= 1 &&
             eat('.') && number(d.weekday, 6);
    }
    d.kind = RuleDay::kJulian0;
    return number(d.n, 365);
  }

  std::string_view s_;
  std::size_t i_ = 0;
};

// --- the TZif file -----------------------------------------------------------

class ByteReader {
 public:
  ByteReader(const std::string& bytes, std::size_t pos) : b_(bytes), pos_(pos) {}

  bool has(std::size_t n) const { return pos_ <= b_.size() && b_.size() - pos_ >= n; }
  std::size_t pos() const { return pos_; }
  void skip(std::size_t n) { pos_ += n; }
  std::uint8_t u8() { return static_cast<std::uint8_t>(b_[pos_++]); }
  std::int64_t be(int width) {
    std::uint64_t v = 0;
    for (int k = 0; k < width; ++k) v = (v << 8) | u8();
    if (width == 4) return static_cast<std::int32_t>(static_cast<std::uint32_t>(v));
    return static_cast<std::int64_t>(v);
  }

 private:
  const std::string& b_;
  std::size_t pos_;
};

struct TzifHeader {
  char version = 0;
  std::uint32_t isutcnt = 0, isstdcnt = 0, leapcnt = 0, timecnt = 0, typecnt = 0, charcnt = 0;

  std::size_t body_size(int time_width) const {
    return std::size_t{timecnt} * (time_width + 1) + std::size_t{typecnt} * 6 + charcnt +
           std::size_t{leapcnt} * (time_width + 4) + isstdcnt + isutcnt;
  }
};

std::optional<TzifHeader> read_header(ByteReader& r, std::string& why) {
  if (!r.has(44)) {
    why = "truncated header";
    return std::nullopt;
  }
  if (r.u8() != 'T' || r.u8() != 'Z' || r.u8() != 'i' || r.u8() != 'f') {
    why = "no TZif signature";
    return std::nullopt;
  }
  TzifHeader h;
  h.version = static_cast<char>(r.u8());
  r.skip(15);
  h.isutcnt = static_cast<std::uint32_t>(r.be(4));
  h.isstdcnt = static_cast<std::uint32_t>(r.be(4));
  h.leapcnt = static_cast<std::uint32_t>(r.be(4));
  h.timecnt = static_cast<std::uint32_t>(r.be(4));
  h.typecnt = static_cast<std::uint32_t>(r.be(4));
  h.charcnt = static_cast<std::uint32_t>(r.be(4));
  // Counts are bounded so body_size() cannot overflow and a hostile file
  // cannot ask for more than it holds (has() checks the rest).
  constexpr std::uint32_t kLimit = 1 << 20;
  if (h.isutcnt > kLimit || h.isstdcnt > kLimit || h.leapcnt > kLimit || h.timecnt > kLimit ||
      h.typecnt > 256 || h.charcnt > kLimit) {
    why = "implausible counts";
    return std::nullopt;
  }
  return h;
}

}  // namespace

namespace {

// The parsed file. Only instants where the offset really changes are kept;
// offsets[i] holds from times[i] until times[i + 1].
struct ZoneTables {
  std::string name;
  std::vector<int64_t> times;
  std::vector<int> offsets;
  int initial_offset = 0;  // before times[0] (RFC 8536: time type 0)
  std::optional<PosixRule> footer;
};

// Fills `data` from the TZif bytes; returns an empty string or what is wrong.
std::string parse_tzif(const std::string& bytes, ZoneTables& data) {
  std::string why;
  ByteReader r(bytes, 0);
  auto h = read_header(r, why);
  if (!h) return why;
  int width = 4;
  if (h->version >= '2') {
    // Skip the 32-bit block; the 64-bit one after it is the one to trust.
    std::size_t skip = h->body_size(4);
    if (!r.has(skip)) return "truncated version 1 data";
    r.skip(skip);
    h = read_header(r, why);
    if (!h) return why;
    width = 8;
  }
  if (h->typecnt == 0) return "no local time types";
  if (h->leapcnt != 0) return "leap-second zones are not supported";
  if ((h->isstdcnt != 0 && h->isstdcnt != h->typecnt) ||
      (h->isutcnt != 0 && h->isutcnt != h->typecnt)) {
    return "inconsistent indicator counts";
  }
  if (!r.has(h->body_size(width))) return "truncated data";

  std::vector<int64_t> times(h->timecnt);
  for (auto& t : times) t = r.be(width);
  std::vector<std::uint8_t> type_of(h->timecnt);
  for (auto& i : type_of) {
    i = r.u8();
    if (i >= h->typecnt) return "transition to a nonexistent type";
  }
  std::vector<int> type_offset(h->typecnt);
  for (auto& off : type_offset) {
    int64_t v = r.be(4);
    r.skip(2);  // isdst and abbreviation index are not needed
    if (v < -kMaxOffset || v > kMaxOffset) return "UTC offset out of range";
    off = static_cast<int>(v);
  }
  r.skip(h->charcnt + h->isstdcnt + h->isutcnt);
  for (std::size_t i = 1; i < times.size(); ++i) {
    if (times[i] <= times[i - 1]) return "transition times are not ascending";
  }

  data.initial_offset = type_offset[0];
  int current = data.initial_offset;
  for (std::size_t i = 0; i < times.size(); ++i) {
    // Clamp so that adding an offset later never overflows.
    int64_t t = std::clamp(times[i], TimeZone::kMinTime + 1, TimeZone::kMaxTime - 1);
    int off = type_offset[type_of[i]];
    if (off == current) continue;  // only an abbreviation or isdst change
    if (!data.times.empty() && t <= data.times.back()) continue;
    data.times.push_back(t);
    data.offsets.push_back(off);
    current = off;
  }

  if (width == 8) {
    if (!r.has(1) || r.u8() != '\n') return "missing footer";
    std::size_t begin = r.pos();
    std::size_t nl = bytes.find('\n', begin);
    if (nl == std::string::npos) return "unterminated footer";
    std::string_view footer(bytes.data() + begin, nl - begin);
    if (!footer.empty()) {
      data.footer = TzStringParser(footer).parse();
      if (!data.footer) return "unsupported TZ string '" + std::string(footer) + "'";
    }
  }
  return {};
}

std::string zoneinfo_dir() {
  const char* env = std::getenv("ZFORCE_ZONEINFO");
  return env && *env ? env : "/usr/share/zoneinfo";
}

Status check_name(std::string_view name) {
  std::string quoted = "'" + std::string(name) + "'";
  if (name.empty()) return Error{"empty time zone name"};
  if (name.find("..") != std::string_view::npos) {
    return Error{"time zone name " + quoted + " must not contain '..'"};
  }
  if (name.front() == '/') {
    return Error{"time zone name " + quoted +
                 " must be an IANA name such as 'Europe/Berlin', "
                 "not a path"};
  }
  bool ok = name.size() <= 255 && name.back() != '/' && name.find("//") == std::string_view::npos;
  for (char c : name) {
    bool allowed = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '/' || c == '_' || c == '-' || c == '+';
    ok = ok && allowed;
  }
  if (!ok) return Error{"unknown time zone " + quoted};
  return {};
}

// Events of the footer rule in one year: (instant, offset from then on).
struct RuleEvent {
  int64_t at;
  int offset;
};

std::array<RuleEvent, 2> rule_events(const PosixRule& r, int year) {
  int64_t start = r.start.days_in(year) * kSecondsPerDay + r.start_time - r.std_offset;
  int64_t end = r.end.days_in(year) * kSecondsPerDay + r.end_time - r.dst_offset;
  return {RuleEvent{start, r.dst_offset}, RuleEvent{end, r.std_offset}};
}

// The span of the footer rule around t, ignoring the transition table.
TimeZone::Span rule_span(const PosixRule& r, int64_t t) {
  if (!r.has_dst) return {TimeZone::kMinTime, TimeZone::kMaxTime, r.std_offset, r.std_offset};
  // Move t into years where std::chrono::year is comfortable, then back.
  int64_t base = 946684800;  // 2000-01-01
  int64_t cycles = floor_div(t - base, kGregorianCycle);
  int64_t shift = cycles * kGregorianCycle;
  int64_t local_t = t - shift;
  int year = static_cast<int>(
      chr::year_month_day{chr::sys_days{chr::days{floor_div(local_t, kSecondsPerDay)}}}.year());
  std::vector<RuleEvent> events;
  events.reserve(10);
  for (int y = year - 2; y <= year + 2; ++y) {
    for (const RuleEvent& e : rule_events(r, y)) events.push_back(e);
  }
  // On a tie (permanent DST written as "J1/0,J365/25") DST wins.
  std::stable_sort(events.begin(), events.end(), [&](const RuleEvent& a, const RuleEvent& b) {
    if (a.at != b.at) return a.at < b.at;
    return a.offset == r.std_offset && b.offset != r.std_offset;
  });
  // Collapse runs with the same offset and ties, keeping the last of a tie.
  std::vector<RuleEvent> changes;
  for (const RuleEvent& e : events) {
    if (!changes.empty() && changes.back().at == e.at) changes.pop_back();
    if (!changes.empty() && changes.back().offset == e.offset) continue;
    changes.push_back(e);
  }
  auto after = std::upper_bound(changes.begin(), changes.end(), local_t,
                                [](int64_t v, const RuleEvent& e) { return v < e.at; });
  // Five years of events always surround t, so both neighbours exist.
  auto cur = std::prev(after);
  TimeZone::Span s;
  s.begin = cur->at + shift;
  s.end = after != changes.end() ? after->at + shift : TimeZone::kMaxTime;
  s.utc_offset = cur->offset;
  s.offset_before = cur != changes.begin() ? std::prev(cur)->offset : cur->offset;
  return s;
}

}  // namespace

struct TimeZone::Data : ZoneTables {};

Result<TimeZone> TimeZone::load(std::string_view iana_name) {
  if (iana_name == "UTC") return utc();
  if (Status s = check_name(iana_name); !s) return s.error();
  std::string quoted = "'" + std::string(iana_name) + "'";

  std::filesystem::path path = std::filesystem::path(zoneinfo_dir()) / std::string(iana_name);
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) {
    return Error{"unknown time zone " + quoted};
  }
  std::ifstream in(path, std::ios::binary);
  std::string bytes;
  if (in) {
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  if (!in && !in.eof()) return Error{"time zone " + quoted + ": cannot read " + path.string()};
  if (bytes.size() > kMaxFileSize || bytes.compare(0, 4, "TZif") != 0) {
    // zone.tab, tzdata.zi and friends live in the same directory.
    return Error{"unknown time zone " + quoted};
  }
  auto data = std::make_shared<Data>();
  data->name = std::string(iana_name);
  if (std::string why = parse_tzif(bytes, *data); !why.empty()) {
    return Error{"time zone " + quoted + ": " + path.string() + " is not a valid TZif file (" +
                 why + ")"};
  }
  return TimeZone(std::move(data));
}

TimeZone TimeZone::utc() {
  static const auto data = [] {
    auto d = std::make_shared<Data>();
    d->name = "UTC";
    return d;
  }();
  return TimeZone(data);
}

const std::string& TimeZone::name() const { return data_->name; }

int TimeZone::utc_offset(chr::sys_seconds t) const {
  return span_at(t.time_since_epoch().count()).utc_offset;
}

TimeZone::Span TimeZone::span_at(int64_t t) const {
  const Data& d = *data_;
  const auto& times = d.times;
  auto it = std::upper_bound(times.begin(), times.end(), t);
  if (it == times.begin()) {
    if (times.empty() && d.footer) return rule_span(*d.footer, t);
    int64_t end = times.empty() ? kMaxTime : times.front();
    return {kMinTime, end, d.initial_offset, d.initial_offset};
  }
  std::size_t i = static_cast<std::size_t>(it - times.begin()) - 1;
  int before = i > 0 ? d.offsets[i - 1] : d.initial_offset;
  if (i + 1 < times.size()) return {times[i], times[i + 1], d.offsets[i], before};
  if (!d.footer) return {times[i], kMaxTime, d.offsets[i], before};
  // Past the table the footer rules, but its spans start no earlier than
  // the last listed transition.
  Span s = rule_span(*d.footer, t);
  if (s.begin <= times[i]) {
    s.begin = times[i];
    s.offset_before = before;
  }
  return s;
}

TimeZone::LocalInstants TimeZone::to_utc(chr::local_seconds local) const {
  int64_t l = local.time_since_epoch().count();
  LocalInstants out;
  out.count = 0;
  std::optional<int64_t> gap_end;
  std::vector<int64_t> found;
  // Any instant showing `l` lies within kMaxOffset of it.
  Span s = span_at(l - kMaxOffset);
  while (true) {
    int64_t candidate = l - s.utc_offset;
    if (candidate >= s.begin && candidate < s.end) {
      found.push_back(candidate);
    } else if (!gap_end && l >= s.begin + s.offset_before && l < s.begin + s.utc_offset) {
      gap_end = s.begin;
    }
    if (s.end >= kMaxTime || s.end > l + kMaxOffset) break;
    s = span_at(s.end);
  }
  auto to_sys = [](int64_t v) { return chr::sys_seconds{chr::seconds{v}}; };
  if (found.empty()) {
    // Every reading not covered by a span is in some gap; the fallback is
    // for a corrupt table only.
    out.first = out.second = to_sys(gap_end.value_or(l - utc_offset(to_sys(l))));
    return out;
  }
  out.count = found.size() == 1 ? 1 : 2;
  out.first = to_sys(found.front());
  out.second = to_sys(found.back());
  return out;
}

}  // namespace zf
