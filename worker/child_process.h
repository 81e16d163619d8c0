// Running one step's command as a child of the worker, without threads or
// signal handlers: the worker's loop polls pidfd() and output_fd() next to its
// sockets and calls back in here when either is readable.
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/result.h"
#include "worker/output_tail.h"

namespace zf {

// What to run. No shell is involved: argv is passed to the program as is.
struct SpawnSpec {
  // argv[0] is looked up in the worker's PATH unless it contains a '/'.
  // A relative argv[0] with a '/' is taken relative to cwd.
  std::vector<std::string> argv;
  // Set on top of the worker's own environment; a later entry for the same
  // name wins.
  std::vector<std::pair<std::string, std::string>> env;
  // Empty: the worker's own working directory.
  std::string cwd;
};

struct ExitStatus {
  // The exit code if the process exited, 128 + signal if a signal ended it
  // (as a shell reports it), -1 if the status was lost because something
  // else reaped the child (SIGCHLD set to SIG_IGN in the worker).
  int exit_code = 0;
  // The signal that ended the process, 0 if it exited.
  int signal = 0;

  bool operator==(const ExitStatus&) const = default;
};

// One spawned command and everything the worker holds for it: its pid, a
// pidfd that becomes readable when it exits, and the read end of the single
// pipe that carries both its stdout and stderr (one pipe, so their relative
// order survives). The child leads its own process group, so the whole step,
// including what it starts in the background, can be signalled at once.
//
// Lifecycle: spawn → (read_output while output_fd() >= 0; try_reap when
// pidfd() is readable) → kill_leftovers → destroy. try_reap() leaves the
// exited leader as a zombie until kill_leftovers() or the destructor, on
// purpose: while the zombie exists its pid, which is also the group id, cannot
// be reused by an unrelated process, so signalling the group stays safe.
//
// The destructor never leaves anything behind: it SIGKILLs the group if the
// leader has not been released, reaps the leader (blocking, which is short
// after SIGKILL) and closes every fd.
//
// Not copyable or movable; held by unique_ptr. Single-threaded: owned and
// used only by the worker's event loop. Assumes the worker does not reap
// children behind its back (no waitpid(-1), SIGCHLD not SIG_IGN).
class ChildProcess {
 public:
  // Starts the command. Every failure before the program runs (empty argv,
  // program not found or not executable, bad cwd, out of fds) comes back as
  // an Error naming the program, and leaves no process or fd behind.
  static Result<std::unique_ptr<ChildProcess>> spawn(const SpawnSpec& spec);

  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  // Also the process group id.
  int pid() const { return pid_; }
  // Readable once the child has exited; -1 once try_reap() has returned its
  // status, so the loop stops polling it.
  int pidfd() const { return status_ ? -1 : pidfd_; }
  // Non-blocking read end of the output pipe; -1 once EOF has been seen.
  // EOF comes only when every process holding the write end has gone,
  // including background children of the step.
  int output_fd() const { return output_fd_; }

  // Appends whatever output is available now, without blocking. Reads at
  // most a bounded amount per call so a chatty step cannot starve the loop;
  // the fd stays readable if more is waiting. Returns false once EOF (or a
  // read error) has been seen; the fd is then closed.
  bool read_output(OutputTail& tail);

  // The exit status once the child has exited, without blocking; nullopt
  // while it runs. Repeated calls return the same status.
  std::optional<ExitStatus> try_reap();

  // Sends sig to the child's process group; a group that is already gone is
  // not an error. Does nothing once the leader has been released, as its
  // pid may then belong to someone else.
  void signal_group(int sig);

  // After try_reap() returned a status: SIGKILLs whatever is still in the
  // group (background children of the step) and releases the leader's
  // zombie. Does nothing before the leader has exited or after release.
  void kill_leftovers();

 private:
  ChildProcess(int pid, int pidfd, int output_fd);
  // Reaps the leader, blocking; only called once it has exited or been sent
  // SIGKILL.
  void release_leader();

  int pid_;
  int pidfd_;
  int output_fd_;
  std::optional<ExitStatus> status_;
  bool released_ = false;
};

}  // namespace zf
