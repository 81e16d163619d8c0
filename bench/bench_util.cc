#include "bench/bench_util.h"

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace zf::bench {

void die(const std::string& program, const std::string& why) {
  std::fprintf(stderr, "%s: %s\n", program.c_str(), why.c_str());
  std::exit(1);
}

double percentile(std::vector<double> v, double p) {
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p / 100.0 * static_cast<double>(v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

void raise_fd_limit(const std::string& program, rlim_t want, const std::string& what) {
  rlimit r{};
  if (::getrlimit(RLIMIT_NOFILE, &r) != 0) die(program, std::string("getrlimit: ") + std::strerror(errno));
  if (r.rlim_cur >= want) return;
  if (r.rlim_max != RLIM_INFINITY && r.rlim_max < want)
    die(program, "need " + std::to_string(want) + " file descriptors for " + what + ", the hard limit is " +
                     std::to_string(r.rlim_max) + " (raise it: ulimit -Hn)");
  r.rlim_cur = want;
  if (::setrlimit(RLIMIT_NOFILE, &r) != 0) die(program, std::string("setrlimit: ") + std::strerror(errno));
}

}  // namespace zf::bench
