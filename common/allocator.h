// Which memory allocator this executable runs on, for its start-up log line.
//
// The master and the worker are linked with jemalloc (Debian's libjemalloc2):
// they allocate and free many small objects per instance, and with glibc's
// malloc the master's loop spent up to half its time inside the allocator,
// more the longer it ran (docs/performance.md, session 6). Sanitizer builds
// keep the system allocator, which AddressSanitizer replaces.
#pragma once

#include <string>

namespace zf {

// "jemalloc 5.3.0-0-g…" or "the C library's malloc".
std::string allocator_description();

}  // namespace zf
