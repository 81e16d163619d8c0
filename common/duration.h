// Durations as operators write them in job files and on the command line:
// "250ms", "5s", "1m30s", "2h", "1d". A bare number is refused so that the
// unit is never guessed.
#pragma once

#include <chrono>
#include <string>
#include <string_view>

#include "common/result.h"

namespace zf {

using Millis = std::chrono::milliseconds;

Result<Millis> parse_duration(std::string_view text);
std::string format_duration(Millis d);

}  // namespace zf
