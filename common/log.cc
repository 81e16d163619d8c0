#include "common/log.h"

#include <unistd.h>

#include <ctime>
#include <mutex>

namespace zf::log {

namespace {
std::mutex g_mu;
std::string g_component = "zforce";
Level g_min = Level::Info;

const char* level_name(Level l) {
  switch (l) {
    case Level::Debug: return "DEBUG";
    case Level::Info: return "INFO";
    case Level::Warn: return "WARN";
    case Level::Error: return "ERROR";
  }
  return "?";
}
}  // namespace

void set_component(std::string name) {
  std::lock_guard lk(g_mu);
  g_component = std::move(name);
}

void set_min_level(Level level) {
  std::lock_guard lk(g_mu);
  g_min = level;
}

void write(Level level, std::string_view message) {
  std::lock_guard lk(g_mu);
  if (level < g_min) return;
  auto now = std::chrono::system_clock::now();
  auto secs = std::chrono::system_clock::to_time_t(now);
  auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000;
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char stamp[96];
  std::snprintf(stamp, sizeof stamp, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
                tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, static_cast<int>(ms));
  std::string line;
  line.reserve(message.size() + 64);
  line += stamp;
  line += ' ';
  line += g_component;
  line += ' ';
  line += level_name(level);
  line += ' ';
  line += message;
  line += '\n';
  // One write(2) per line keeps lines whole when several threads log.
  ssize_t ignored = ::write(2, line.data(), line.size());
  (void)ignored;
}

bool RateLimit::allow(std::chrono::steady_clock::time_point now, uint64_t& suppressed) {
  if (now - window_start_ >= window_) {
    window_start_ = now;
    in_window_ = 0;
  }
  if (in_window_ < burst_) {
    ++in_window_;
    suppressed = suppressed_;
    suppressed_ = 0;
    return true;
  }
  ++suppressed_;
  return false;
}

}  // namespace zf::log
