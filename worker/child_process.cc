#include "worker/child_process.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

// glibc 2.36's <sys/pidfd.h> forgets its extern "C" block (fixed in 2.37);
// nesting extern "C" is harmless once it is there.
extern "C" {
#include <sys/pidfd.h>
}

#include <array>
#include <cstring>
#include <string_view>
#include <system_error>

extern char** environ;

namespace zf {
namespace {

// Bounds one read_output() call: the loop has sockets to serve too, and the
// pipe is level-triggered, so whatever is left is read on the next turn.
constexpr std::size_t kMaxReadPerCall = 256 * 1024;

std::string errno_text(int err) { return std::generic_category().message(err); }

void close_fd(int& fd) {
  if (fd >= 0) {
    // Linux releases the fd even when close() reports EINTR, so no retry.
    ::close(fd);
    fd = -1;
  }
}

// Closes a descriptor on every early return from spawn().
class FdGuard {
 public:
  explicit FdGuard(int fd = -1) : fd_(fd) {}
  ~FdGuard() { close_fd(fd_); }
  FdGuard(const FdGuard&) = delete;
  FdGuard& operator=(const FdGuard&) = delete;
  int get() const { return fd_; }
  int release() { return std::exchange(fd_, -1); }
  void reset() { close_fd(fd_); }

 private:
  int fd_;
};

// What the child needs between clone() and exec, all built by the parent
// beforehand: the child shares the parent's memory and must not allocate,
// lock or touch anything but its own syscalls.
struct ChildPlan {
  // execve is tried on each in turn (the PATH search, done as execvp does).
  std::vector<const char*> candidates;
  char* const* argv = nullptr;
  char* const* envp = nullptr;
  const char* cwd = nullptr;  // nullptr: stay in the worker's directory
  int output_fd = -1;         // the pipe's write end: stdout and stderr
  // Written by the child when it fails before the program runs; the parent
  // reads them once clone() has returned (the child has exec'd or exited).
  int error = 0;
  bool chdir_failed = false;
};

// The child side of spawn(): runs on a stack of its own, in the parent's
// memory, with every signal blocked; ends in exec or _exit(127).
[[noreturn]] void child_fails(ChildPlan* plan, bool in_chdir) {
  plan->error = errno;
  plan->chdir_failed = in_chdir;
  _exit(127);
}

int run_child(void* arg) {
  auto* plan = static_cast<ChildPlan*>(arg);
  auto fail = [plan](bool in_chdir) { child_fails(plan, in_chdir); };
  // Its own process group, so the whole step can be signalled at once.
  if (::setpgid(0, 0) == -1) fail(false);
  // Output first, then stdin: if the worker runs with 0, 1 or 2 closed, the
  // pipe may itself sit on one of them, and must be duplicated before that
  // slot is reused for /dev/null. A dup2 onto the same number keeps
  // close-on-exec, so that case clears it by hand.
  for (int target : {1, 2}) {
    if (plan->output_fd == target) {
      if (::fcntl(target, F_SETFD, 0) == -1) fail(false);
    } else if (::dup2(plan->output_fd, target) == -1) {
      fail(false);
    }
  }
  const int null_fd = ::open("/dev/null", O_RDONLY);
  if (null_fd == -1) fail(false);
  if (null_fd != 0) {
    if (::dup2(null_fd, 0) == -1) fail(false);
  }
  // Close-on-exec covers our own fds; this also drops any a library or our
  // parent left inheritable, so a step sees only 0, 1 and 2.
  if (::close_range(3, ~0U, 0) == -1) fail(false);
  if (plan->cwd != nullptr && ::chdir(plan->cwd) == -1) fail(true);
  // A step starts as if from a fresh shell: every disposition default (an
  // ignored signal would stay ignored across exec, and no handler of the
  // worker may run in this child, which shares its memory), nothing blocked.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  for (int sig = 1; sig < NSIG; ++sig) {
    if (sig == SIGKILL || sig == SIGSTOP) continue;
    ::sigaction(sig, &dfl, nullptr);  // glibc's own signals refuse: harmless
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  // The PATH search of execvp, without its fallback to /bin/sh for a file
  // that is not a program (posix_spawnp drops that fallback too): a
  // permission error is kept while later directories are tried, a missing
  // file moves on, anything else stops the search.
  bool denied = false;
  for (const char* path : plan->candidates) {
    ::execve(path, plan->argv, plan->envp);
    switch (errno) {
      case EACCES: denied = true; [[fallthrough]];
      case ENOENT: case ENOTDIR: case ESTALE: case ENODEV: case ETIMEDOUT: continue;
      default: fail(false);
    }
  }
  if (denied) errno = EACCES;
  child_fails(plan, false);
}

// The child's stack: one per thread that spawns, mapped once with a guard
// page below it and reused for every spawn (posix_spawn maps and unmaps one
// per call, and the unmap costs a TLB shootdown on every core this
// multi-threaded process has run on). The child only runs run_child(), a
// few hundred bytes deep.
class ChildStack {
 public:
  static constexpr std::size_t kSize = 64 * 1024;
  ChildStack() {
    const long page = ::sysconf(_SC_PAGESIZE);
    guard_ = static_cast<std::size_t>(page > 0 ? page : 4096);
    void* p = ::mmap(nullptr, kSize + guard_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) return;
    if (::mprotect(p, guard_, PROT_NONE) == -1) {
      ::munmap(p, kSize + guard_);
      return;
    }
    base_ = static_cast<char*>(p);
  }
  ~ChildStack() {
    if (base_ != nullptr) ::munmap(base_, kSize + guard_);
  }
  ChildStack(const ChildStack&) = delete;
  ChildStack& operator=(const ChildStack&) = delete;
  // nullptr if it could not be mapped.
  void* top() const { return base_ == nullptr ? nullptr : base_ + guard_ + kSize; }

 private:
  char* base_ = nullptr;
  std::size_t guard_ = 0;
};

// The directories of the worker's PATH joined with program, in order, as
// posix_spawnp and execvp search them; program itself if it has a '/'.
std::vector<std::string> exec_candidates(const std::string& program) {
  if (program.find('/') != std::string::npos) return {program};
  const char* path = ::getenv("PATH");
  std::string_view dirs = path != nullptr ? path : "/bin:/usr/bin";
  std::vector<std::string> out;
  while (true) {
    const auto colon = dirs.find(':');
    std::string_view dir = dirs.substr(0, colon);
    // An empty entry is the current directory.
    std::string c = dir.empty() ? std::string() : std::string(dir) + "/";
    c += program;
    out.push_back(std::move(c));
    if (colon == std::string_view::npos) break;
    dirs.remove_prefix(colon + 1);
  }
  return out;
}

bool has_nul(std::string_view s) { return s.find('\0') != std::string_view::npos; }

// The worker's environment with the spec's entries applied over it.
Result<std::vector<std::string>> build_environment(const SpawnSpec& spec) {
  std::vector<std::string> env;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) env.emplace_back(*e);
  for (const auto& [name, value] : spec.env) {
    if (name.empty() || name.find('=') != std::string::npos || has_nul(name)) {
      return Error{"environment variable name '" + name + "' is invalid"};
    }
    if (has_nul(value)) {
      return Error{"environment variable '" + name + "' contains a NUL byte"};
    }
    std::string entry = name + "=" + value;
    bool replaced = false;
    for (auto& existing : env) {
      if (existing.size() > name.size() && existing.compare(0, name.size(), name) == 0 &&
          existing[name.size()] == '=') {
        existing = entry;
        replaced = true;
        break;
      }
    }
    if (!replaced) env.push_back(std::move(entry));
  }
  return env;
}

ExitStatus exit_status_from(const siginfo_t& info) {
  if (info.si_code == CLD_EXITED) return ExitStatus{info.si_status, 0};
  return ExitStatus{128 + info.si_status, info.si_status};
}

}  // namespace

Result<std::unique_ptr<ChildProcess>> ChildProcess::spawn(const SpawnSpec& spec) {
  if (spec.argv.empty() || spec.argv[0].empty()) {
    return Error{"cannot run an empty command"};
  }
  const std::string& program = spec.argv[0];
  auto fail = [&program](const std::string& why) {
    return Error{"cannot run '" + program + "': " + why};
  };

  for (const auto& arg : spec.argv) {
    if (has_nul(arg)) return fail("an argument contains a NUL byte");
  }
  if (has_nul(spec.cwd)) return fail("the working directory contains a NUL byte");

  auto env = build_environment(spec);
  if (!env) return fail(env.error().message);

  std::vector<char*> argv_ptrs;
  argv_ptrs.reserve(spec.argv.size() + 1);
  for (const auto& arg : spec.argv) argv_ptrs.push_back(const_cast<char*>(arg.c_str()));
  argv_ptrs.push_back(nullptr);
  std::vector<char*> env_ptrs;
  env_ptrs.reserve(env->size() + 1);
  for (auto& entry : *env) env_ptrs.push_back(entry.data());
  env_ptrs.push_back(nullptr);

  // Close-on-exec so that no other child, spawned now or later, holds this
  // pipe open and keeps our EOF from coming.
  int pipe_fds[2];
  if (::pipe2(pipe_fds, O_CLOEXEC) == -1) return fail("pipe: " + errno_text(errno));
  FdGuard read_end(pipe_fds[0]);
  FdGuard write_end(pipe_fds[1]);
  if (::fcntl(read_end.get(), F_SETFL, O_NONBLOCK) == -1) {
    return fail("pipe: " + errno_text(errno));
  }

  const std::vector<std::string> candidates = exec_candidates(program);
  ChildPlan plan;
  plan.candidates.reserve(candidates.size());
  for (const auto& c : candidates) plan.candidates.push_back(c.c_str());
  plan.argv = argv_ptrs.data();
  plan.envp = env_ptrs.data();
  plan.cwd = spec.cwd.empty() ? nullptr : spec.cwd.c_str();
  plan.output_fd = write_end.get();

  thread_local ChildStack stack;
  if (stack.top() == nullptr) return fail("cannot map a stack for the child: " + errno_text(ENOMEM));

  // What posix_spawn does, minus its per-call stack: the child shares our
  // memory (nothing is copied, whatever the worker's size) and this thread
  // waits until it has exec'd or failed, so a missing program or a failed
  // chdir is reported here, with no child left over. Signals stay blocked
  // meanwhile so that no handler of ours runs on the child's side.
  // CLONE_PIDFD hands over the pidfd with the process: no window in which
  // the child could exit and be reaped by someone else first.
  sigset_t all_signals;
  sigset_t old_mask;
  sigfillset(&all_signals);
  ::pthread_sigmask(SIG_SETMASK, &all_signals, &old_mask);
  int pidfd = -1;
  const pid_t pid = ::clone(run_child, stack.top(), CLONE_VM | CLONE_VFORK | CLONE_PIDFD | SIGCHLD, &plan, &pidfd);
  const int clone_error = errno;
  ::pthread_sigmask(SIG_SETMASK, &old_mask, nullptr);
  if (pid == -1) return fail("clone: " + errno_text(clone_error));
  write_end.reset();

  if (plan.error != 0) {
    // It has exited already (_exit(127)); release it.
    siginfo_t info;
    while (::waitid(P_PIDFD, static_cast<id_t>(pidfd), &info, WEXITED) == -1 && errno == EINTR) {
    }
    ::close(pidfd);
    if (plan.chdir_failed) {
      return fail("working directory '" + spec.cwd + "': " + errno_text(plan.error));
    }
    return fail(errno_text(plan.error));
  }
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, pidfd, read_end.release()));
}

ChildProcess::ChildProcess(int pid, int pidfd, int output_fd)
    : pid_(pid), pidfd_(pidfd), output_fd_(output_fd) {}

ChildProcess::~ChildProcess() {
  if (!released_) {
    ::kill(-pid_, SIGKILL);
    // The leader may have moved to another process group; the pidfd reaches
    // it wherever it is, and the blocking reap below must not wait forever.
    if (!status_) ::pidfd_send_signal(pidfd_, SIGKILL, nullptr, 0);
    release_leader();
  }
  close_fd(pidfd_);
  close_fd(output_fd_);
}

bool ChildProcess::read_output(OutputTail& tail) {
  if (output_fd_ < 0) return false;
  std::array<char, 64 * 1024> buf;
  std::size_t taken = 0;
  while (taken < kMaxReadPerCall) {
    const ssize_t n = ::read(output_fd_, buf.data(), buf.size());
    if (n > 0) {
      tail.append(buf.data(), static_cast<std::size_t>(n));
      taken += static_cast<std::size_t>(n);
      continue;
    }
    if (n == -1 && errno == EINTR) continue;
    if (n == -1 && (errno == EAGAIN || errno == EWOULDBLOCK)) return true;
    // EOF, or an error that a retry would not cure (EIO, EBADF): either way
    // there is no more output to be had.
    close_fd(output_fd_);
    return false;
  }
  return true;
}

std::optional<ExitStatus> ChildProcess::try_reap() {
  if (status_ || released_) return status_;
  siginfo_t info;
  std::memset(&info, 0, sizeof info);
  // WNOWAIT: see the class comment on why the zombie is kept.
  int rc;
  do {
    rc = ::waitid(P_PIDFD, static_cast<id_t>(pidfd_), &info, WEXITED | WNOHANG | WNOWAIT);
  } while (rc == -1 && errno == EINTR);
  if (rc == -1) {
    // ECHILD: the child was reaped by someone else and its status is gone.
    // Its pid may already be reused, so the group must not be signalled.
    status_ = ExitStatus{-1, 0};
    released_ = true;
    close_fd(pidfd_);
    return status_;
  }
  if (info.si_pid == 0) return std::nullopt;
  status_ = exit_status_from(info);
  return status_;
}

void ChildProcess::signal_group(int sig) {
  if (released_) return;
  if (::kill(-pid_, sig) == -1 && errno == ESRCH && !status_) {
    // The group is empty but the leader runs: it moved to another group.
    ::pidfd_send_signal(pidfd_, sig, nullptr, 0);
  }
}

void ChildProcess::kill_leftovers() {
  if (!status_ || released_) return;
  ::kill(-pid_, SIGKILL);
  release_leader();
}

void ChildProcess::release_leader() {
  siginfo_t info;
  int rc;
  do {
    std::memset(&info, 0, sizeof info);
    rc = ::waitid(P_PIDFD, static_cast<id_t>(pidfd_), &info, WEXITED);
  } while (rc == -1 && errno == EINTR);
  if (rc == 0 && !status_) status_ = exit_status_from(info);
  released_ = true;
  close_fd(pidfd_);
}

}  // namespace zf
