#include "common/duration.h"

#include <cctype>
#include <cstdint>
#include <limits>

namespace zf {

Result<Millis> parse_duration(std::string_view text) {
  auto bad = [&](std::string_view why) {
    return make_error("invalid duration '" + std::string(text) + "': " + std::string(why) +
                      " (use e.g. 250ms, 5s, 1m30s, 2h, 1d)");
  };
  if (text.empty()) return bad("empty");
  int64_t total = 0;
  size_t i = 0;
  while (i < text.size()) {
    if (!std::isdigit(static_cast<unsigned char>(text[i]))) return bad("expected a number");
    int64_t n = 0;
    while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
      if (n > std::numeric_limits<int64_t>::max() / 10 - 10) return bad("too large");
      n = n * 10 + (text[i++] - '0');
    }
    size_t u = i;
    while (i < text.size() && std::isalpha(static_cast<unsigned char>(text[i]))) ++i;
    std::string_view unit = text.substr(u, i - u);
    int64_t scale = 0;
    if (unit == "ms") scale = 1;
    else if (unit == "s") scale = 1000;
    else if (unit == "m") scale = 60'000;
    else if (unit == "h") scale = 3'600'000;
    else if (unit == "d") scale = 86'400'000;
    else if (unit.empty()) return bad("missing unit");
    else return bad("unknown unit '" + std::string(unit) + "'");
    if (n > (std::numeric_limits<int64_t>::max() - total) / scale) return bad("too large");
    total += n * scale;
  }
  return Millis(total);
}

std::string format_duration(Millis d) {
  int64_t ms = d.count();
  if (ms == 0) return "0s";
  std::string out;
  const std::pair<int64_t, const char*> units[] = {
      {86'400'000, "d"}, {3'600'000, "h"}, {60'000, "m"}, {1000, "s"}, {1, "ms"}};
  for (const auto& [scale, name] : units) {
    if (ms >= scale) {
      out += std::to_string(ms / scale) + name;
      ms %= scale;
    }
  }
  return out;
}

}  // namespace zf
