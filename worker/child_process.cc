#include "worker/child_process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
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

class SpawnAttrs {
 public:
  SpawnAttrs() { ok_ = posix_spawnattr_init(&attr_) == 0; }
  ~SpawnAttrs() {
    if (ok_) posix_spawnattr_destroy(&attr_);
  }
  SpawnAttrs(const SpawnAttrs&) = delete;
  SpawnAttrs& operator=(const SpawnAttrs&) = delete;
  bool ok() const { return ok_; }
  posix_spawnattr_t* get() { return &attr_; }

 private:
  posix_spawnattr_t attr_;
  bool ok_;
};

class FileActions {
 public:
  FileActions() { ok_ = posix_spawn_file_actions_init(&actions_) == 0; }
  ~FileActions() {
    if (ok_) posix_spawn_file_actions_destroy(&actions_);
  }
  FileActions(const FileActions&) = delete;
  FileActions& operator=(const FileActions&) = delete;
  bool ok() const { return ok_; }
  posix_spawn_file_actions_t* get() { return &actions_; }

 private:
  posix_spawn_file_actions_t actions_;
  bool ok_;
};

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

// posix_spawnp reports a failed chdir and a failed exec with the same kind of
// errno; look at the directory to tell the operator which one it was.
std::optional<int> cwd_problem(const std::string& cwd) {
  if (cwd.empty()) return std::nullopt;
  struct stat st {};
  if (::stat(cwd.c_str(), &st) == -1) return errno;
  if (!S_ISDIR(st.st_mode)) return ENOTDIR;
  if (::faccessat(AT_FDCWD, cwd.c_str(), X_OK, AT_EACCESS) == -1) return errno;
  return std::nullopt;
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

  SpawnAttrs attrs;
  FileActions actions;
  if (!attrs.ok() || !actions.ok()) return fail("out of memory");

  // The worker may block or ignore signals for its own reasons; a step starts
  // as if from a fresh shell: nothing blocked, every disposition default.
  sigset_t empty_set;
  sigset_t all_signals;
  sigemptyset(&empty_set);
  sigfillset(&all_signals);
  int rc = posix_spawnattr_setflags(
      attrs.get(), POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  if (rc == 0) rc = posix_spawnattr_setpgroup(attrs.get(), 0);
  if (rc == 0) rc = posix_spawnattr_setsigmask(attrs.get(), &empty_set);
  if (rc == 0) rc = posix_spawnattr_setsigdefault(attrs.get(), &all_signals);

  // Output first, then stdin: if the worker runs with 0, 1 or 2 closed, the
  // pipe may itself sit on one of them, and must be duplicated before that
  // slot is reused for /dev/null. glibc clears close-on-exec on a dup2 onto
  // the same number.
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(actions.get(), write_end.get(), 1);
  if (rc == 0) rc = posix_spawn_file_actions_adddup2(actions.get(), write_end.get(), 2);
  if (rc == 0) {
    rc = posix_spawn_file_actions_addopen(actions.get(), 0, "/dev/null", O_RDONLY, 0);
  }
  // Close-on-exec covers our own fds; this also drops any a library or our
  // parent left inheritable, so a step sees only 0, 1 and 2.
  if (rc == 0) rc = posix_spawn_file_actions_addclosefrom_np(actions.get(), 3);
  if (rc == 0 && !spec.cwd.empty()) {
    rc = posix_spawn_file_actions_addchdir_np(actions.get(), spec.cwd.c_str());
  }
  if (rc != 0) return fail("preparing to spawn: " + errno_text(rc));

  // glibc's posix_spawnp waits until the child has exec'd, so a missing
  // program or a failed chdir is reported here, with no child left over.
  pid_t pid = -1;
  rc = ::posix_spawnp(&pid, program.c_str(), actions.get(), attrs.get(), argv_ptrs.data(),
                      env_ptrs.data());
  if (rc != 0) {
    if (auto err = cwd_problem(spec.cwd)) {
      return fail("working directory '" + spec.cwd + "': " + errno_text(*err));
    }
    return fail(errno_text(rc));
  }
  write_end.reset();

  const int pidfd = ::pidfd_open(pid, 0);
  if (pidfd == -1) {
    const int err = errno;
    ::kill(-pid, SIGKILL);
    while (::waitpid(pid, nullptr, 0) == -1 && errno == EINTR) {
    }
    return fail("pidfd_open: " + errno_text(err));
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
