// Log lines on stderr: "2026-11-29T04:27:35.123Z master INFO what, where, why".
// Thread-safe (one write per line). RateLimit keeps hostile traffic from
// flooding the log: it lets N lines through per window and counts the rest.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

namespace zf::log {

enum class Level { Debug, Info, Warn, Error };

// Component name printed on every line ("master", "worker w1", "zforce").
void set_component(std::string name);
void set_min_level(Level level);
void write(Level level, std::string_view message);

inline void debug(std::string_view m) { write(Level::Debug, m); }
inline void info(std::string_view m) { write(Level::Info, m); }
inline void warn(std::string_view m) { write(Level::Warn, m); }
inline void error(std::string_view m) { write(Level::Error, m); }

// Lets at most `burst` lines through per `window`; the first line after a
// quiet window reports how many were suppressed. Not thread-safe: one per loop.
class RateLimit {
 public:
  RateLimit(uint32_t burst, std::chrono::milliseconds window) : burst_(burst), window_(window) {}
  // True if the caller may log now; `suppressed` is how many were held back before.
  bool allow(std::chrono::steady_clock::time_point now, uint64_t& suppressed);

 private:
  uint32_t burst_;
  std::chrono::milliseconds window_;
  std::chrono::steady_clock::time_point window_start_{};
  uint32_t in_window_ = 0;
  uint64_t suppressed_ = 0;
};

}  // namespace zf::log
