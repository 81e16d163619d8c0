// The floor for `run = ["true"]` jobs: starts N /bin/true processes with at
// most P alive at once (posix_spawn, as the worker does; no ZeroMQ, no master)
// and prints the rate. Used by scripts/bench.sh as bare_true_per_s.
//
//   zforce-bench-bare-spawn N P [PROGRAM]   ->   "bare_spawn: N processes, P parallel, X.XX s, R per s"

#include <spawn.h>
#include <sys/wait.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s N P [PROGRAM]\n", argv[0]);
    return 2;
  }
  long n = std::strtol(argv[1], nullptr, 10);
  long p = std::strtol(argv[2], nullptr, 10);
  std::string prog = argc > 3 ? argv[3] : "/bin/true";
  if (n < 1 || p < 1) {
    std::fprintf(stderr, "N and P must be at least 1\n");
    return 2;
  }
  // P threads, each spawning one child and reaping it (waitpid on its own
  // pid) until N have run: like P slots, several of which may be in
  // posix_spawn at once, as slots on several workers are.
  std::atomic<long> next{0}, failed{0};
  auto slot = [&] {
    char* child_argv[] = {prog.data(), nullptr};
    while (next.fetch_add(1) < n) {
      pid_t pid = -1;
      int st = 0;
      if (posix_spawn(&pid, prog.c_str(), nullptr, nullptr, child_argv, environ) != 0 ||
          ::waitpid(pid, &st, 0) != pid || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
        failed.fetch_add(1);
    }
  };
  auto t0 = std::chrono::steady_clock::now();
  std::vector<std::thread> slots;
  for (long i = 0; i < p; ++i) slots.emplace_back(slot);
  for (auto& t : slots) t.join();
  double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("bare_spawn: %ld processes, %ld parallel, %.3f s, %.1f per s\n", n, p, s, n / s);
  if (failed) std::fprintf(stderr, "%ld processes failed\n", failed.load());
  return failed ? 1 : 0;
}
