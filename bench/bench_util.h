// Small helpers every benchmark program uses: how a probe fails, the
// percentile it reports, and the descriptor limit that many sockets need.
#pragma once

#include <sys/resource.h>

#include <string>
#include <vector>

namespace zf::bench {

// Prints "PROGRAM: why" and exits 1 (a benchmark has nobody to hand an error to).
[[noreturn]] void die(const std::string& program, const std::string& why);

// The p-th percentile (0-100) of the samples, nearest rank; v must not be empty.
double percentile(std::vector<double> v, double p);

// Raises the soft RLIMIT_NOFILE to `want` if it is lower; dies (naming `what`
// needs them) if the hard limit does not allow it.
void raise_fd_limit(const std::string& program, rlim_t want, const std::string& what);

}  // namespace zf::bench
