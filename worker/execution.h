// One instance being run by a worker: its steps one after another, the child
// process or builtin of the current step, the deadlines (step timeout,
// instance timeout, kill grace) and the output tail. Single-threaded: owned
// and advanced by the worker loop, which polls the fds it exposes. The one
// exception is a file builtin (copy, move, delete, mkdir), which runs on a
// helper thread owned by its FileTask and reports through an eventfd, so the
// loop keeps heartbeating while a large copy runs.
#pragma once

#include <chrono>
#include <memory>
#include <optional>
#include <vector>

#include <zmq.hpp>

#include "common/protocol.h"
#include "worker/child_process.h"
#include "worker/file_builtins.h"
#include "worker/output_tail.h"

namespace zf {

using Clock = std::chrono::steady_clock;

struct ExecutionConfig {
  size_t output_limit = 64 * 1024;
  // Time between SIGTERM and SIGKILL when a step is cancelled or times out.
  std::chrono::milliseconds kill_grace{1000};
};

class Execution {
 public:
  // The phases of one execution; transitions happen only in advance(),
  // stop() and the private helpers named after the phase they enter.
  enum class Phase {
    Starting,    // between steps: the next step starts on the next advance()
    Running,     // a child process runs the current step
    Sleeping,    // a builtin sleep waits for its end time
    Working,     // a file builtin runs on its FileTask's thread
    Stopping,    // SIGTERM sent or file builtin cancelled (cancel or timeout);
                 // SIGKILL, or the file builtin abandoned, at kill_at_
    Done,        // result() is final
  };

  Execution(proto::Assign assign, const ExecutionConfig& cfg, Clock::time_point now);

  // Starts steps, reaps children, reads output and enforces deadlines.
  // Call after a poll that may have made one of its fds readable, or when
  // deadline() has passed. Cheap when nothing happened.
  void advance(Clock::time_point now);
  // Cancel (by the master) or stop (worker shutting down): SIGTERM to the
  // process group, SIGKILL after the grace period; ends as `cancelled`.
  void stop(Clock::time_point now);

  void add_poll_items(std::vector<zmq::pollitem_t>& items) const;
  std::optional<Clock::time_point> deadline() const;

  Phase phase() const { return phase_; }
  bool done() const { return phase_ == Phase::Done; }
  const proto::Assign& assign() const { return assign_; }
  // Valid once done().
  proto::Finished result() const;

 private:
  void start_step(Clock::time_point now);
  void finish(std::string status, int exit_code, std::string error, Clock::time_point now);
  void begin_stopping(std::string status, std::string why, Clock::time_point now);
  void on_child_exit(const ExitStatus& st, Clock::time_point now);
  void on_file_task_done(Clock::time_point now);
  void drain_output();

  proto::Assign assign_;
  ExecutionConfig cfg_;
  Phase phase_ = Phase::Starting;
  size_t step_ = 0;
  Clock::time_point started_;
  Clock::time_point step_started_;
  Clock::time_point ended_;
  std::optional<Clock::time_point> instance_deadline_;
  std::optional<Clock::time_point> step_deadline_;
  std::optional<Clock::time_point> sleep_until_;
  std::optional<Clock::time_point> kill_at_;
  std::string stop_status_;  // cancelled | timed_out while Stopping
  std::string stop_error_;
  std::unique_ptr<ChildProcess> child_;
  std::unique_ptr<FileTask> file_task_;
  OutputTail output_;
  std::string status_;
  int exit_code_ = 0;
  int failed_step_ = -1;
  std::string error_;
};

std::string_view phase_name(Execution::Phase p);

}  // namespace zf
