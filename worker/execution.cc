#include "worker/execution.h"

#include <poll.h>
#include <signal.h>

#include "common/duration.h"

namespace zf {

std::string_view phase_name(Execution::Phase p) {
  switch (p) {
    case Execution::Phase::Starting: return "starting";
    case Execution::Phase::Running: return "running";
    case Execution::Phase::Sleeping: return "sleeping";
    case Execution::Phase::Working: return "working";
    case Execution::Phase::Stopping: return "stopping";
    case Execution::Phase::Done: return "done";
  }
  return "?";
}

Execution::Execution(proto::Assign assign, const ExecutionConfig& cfg, Clock::time_point now)
    : assign_(std::move(assign)), cfg_(cfg), started_(now), output_(cfg.output_limit) {
  if (assign_.timeout_ms > 0) instance_deadline_ = now + std::chrono::milliseconds(assign_.timeout_ms);
}

void Execution::finish(std::string status, int exit_code, std::string error, Clock::time_point now) {
  status_ = std::move(status);
  exit_code_ = exit_code;
  if (status_ != "succeeded" && failed_step_ < 0) failed_step_ = static_cast<int>(step_);
  error_ = std::move(error);
  if (!error_.empty()) {
    std::string line = "zforce: " + error_ + "\n";
    output_.append(line.data(), line.size());
  }
  ended_ = now;
  child_.reset();      // kills and reaps anything left of the step
  file_task_.reset();  // cancels a file builtin still running (abandoned past the grace)
  phase_ = Phase::Done;
}

void Execution::start_step(Clock::time_point now) {
  while (phase_ == Phase::Starting) {
    if (step_ >= assign_.steps.size()) return finish("succeeded", 0, "", now);
    const auto& s = assign_.steps[step_];
    step_started_ = now;
    step_deadline_.reset();
    if (s.timeout_ms > 0) step_deadline_ = now + std::chrono::milliseconds(s.timeout_ms);
    if (s.kind == "run") {
      SpawnSpec spec;
      spec.argv = s.argv;
      spec.cwd = s.cwd;
      for (const auto& [k, v] : s.env) spec.env.emplace_back(k, v);
      spec.env.emplace_back("ZFORCE_INSTANCE", std::to_string(assign_.instance));
      spec.env.emplace_back("ZFORCE_ATTEMPT", std::to_string(assign_.attempt));
      spec.env.emplace_back("ZFORCE_JOB", assign_.job);
      spec.env.emplace_back("ZFORCE_STEP", s.name);
      auto child = ChildProcess::spawn(spec);
      if (!child.ok()) {
        failed_step_ = static_cast<int>(step_);
        return finish("failed", 127, "step '" + s.name + "': " + child.error().message, now);
      }
      child_ = std::move(child.value());
      phase_ = Phase::Running;
      return;
    }
    // Builtins run here, in the worker, without a process.
    if (s.builtin == "noop") {
      ++step_;
    } else if (s.builtin == "echo") {
      auto it = s.args.find("text");
      std::string text = (it == s.args.end() ? std::string() : it->second) + "\n";
      output_.append(text.data(), text.size());
      ++step_;
    } else if (s.builtin == "sleep") {
      auto it = s.args.find("duration");
      auto d = parse_duration(it == s.args.end() ? std::string() : it->second);
      if (!d.ok()) {
        failed_step_ = static_cast<int>(step_);
        return finish("failed", 2, "step '" + s.name + "': " + d.error().message, now);
      }
      sleep_until_ = now + *d;
      phase_ = Phase::Sleeping;
      return;
    } else if (is_file_builtin(s.builtin)) {
      // Off the loop: a copy may take minutes and heartbeats must go on.
      auto task = FileTask::start(s.builtin, s.args, s.cwd);
      if (!task.ok()) {
        failed_step_ = static_cast<int>(step_);
        return finish("failed", 1, "step '" + s.name + "': " + task.error().message, now);
      }
      file_task_ = std::move(task.value());
      phase_ = Phase::Working;
      return;
    } else {
      failed_step_ = static_cast<int>(step_);
      return finish("failed", 2, "step '" + s.name + "': this worker has no builtin '" + s.builtin + "'", now);
    }
  }
}

void Execution::drain_output() {
  if (child_)
    while (child_->output_fd() >= 0 && child_->read_output(output_)) {
      // read_output reads a bounded amount per call; stop once nothing is left.
      pollfd p{child_->output_fd(), POLLIN, 0};
      if (::poll(&p, 1, 0) <= 0) break;
    }
}

void Execution::on_child_exit(const ExitStatus& st, Clock::time_point now) {
  drain_output();
  child_->kill_leftovers();
  child_.reset();
  if (phase_ == Phase::Stopping) return finish(stop_status_, st.exit_code, stop_error_, now);
  if (st.exit_code == 0) {
    ++step_;
    phase_ = Phase::Starting;
    return start_step(now);
  }
  failed_step_ = static_cast<int>(step_);
  std::string why;
  if (st.signal != 0) why = "step '" + assign_.steps[step_].name + "' was killed by signal " + std::to_string(st.signal);
  finish("failed", st.exit_code, why, now);
}

void Execution::on_file_task_done(Clock::time_point now) {
  FileOutcome o = file_task_->outcome();
  file_task_.reset();
  if (phase_ == Phase::Stopping) return finish(stop_status_, -1, stop_error_, now);
  if (o.exit_code == 0) {
    ++step_;
    phase_ = Phase::Starting;
    return start_step(now);
  }
  failed_step_ = static_cast<int>(step_);
  finish("failed", o.exit_code, "step '" + assign_.steps[step_].name + "': " + o.error, now);
}

void Execution::begin_stopping(std::string status, std::string why, Clock::time_point now) {
  if (phase_ == Phase::Done || phase_ == Phase::Stopping) return;
  bool child_runs = phase_ == Phase::Running && child_;
  bool file_task_runs = phase_ == Phase::Working && file_task_;
  if (!child_runs && !file_task_runs) return finish(status, -1, why, now);
  stop_status_ = std::move(status);
  stop_error_ = std::move(why);
  if (child_runs) child_->signal_group(SIGTERM);
  else file_task_->cancel();  // it stops at its next chunk or directory entry
  kill_at_ = now + cfg_.kill_grace;
  phase_ = Phase::Stopping;
}

void Execution::stop(Clock::time_point now) { begin_stopping("cancelled", "", now); }

void Execution::advance(Clock::time_point now) {
  if (phase_ == Phase::Done) return;
  if (phase_ == Phase::Starting) {
    start_step(now);
    // A child spawned just now has neither output nor an exit to report yet:
    // its fds tell the loop when it has.
    if (phase_ == Phase::Running) return;
  }
  if (child_) {
    if (child_->output_fd() >= 0) child_->read_output(output_);
    if (auto st = child_->try_reap()) return on_child_exit(*st, now);
  }
  if (file_task_ && file_task_->finished()) return on_file_task_done(now);
  if (phase_ == Phase::Sleeping && sleep_until_ && now >= *sleep_until_) {
    sleep_until_.reset();
    ++step_;
    phase_ = Phase::Starting;
    start_step(now);
  }
  if (phase_ == Phase::Stopping) {
    if (kill_at_ && now >= *kill_at_) {
      kill_at_.reset();
      if (child_) {
        child_->signal_group(SIGKILL);  // the pidfd reports the end
      } else if (file_task_) {
        // A thread cannot be killed: one still blocked in the file system
        // after the grace is left behind (finish() detaches it) so that the
        // instance ends and its slot is freed.
        std::string why = stop_error_.empty() ? "" : stop_error_ + "; ";
        why += "builtin '" + assign_.steps[step_].builtin +
               "' did not stop within the kill grace and was abandoned while blocked in the file system";
        return finish(stop_status_, -1, why, now);
      }
    }
    return;
  }
  if (phase_ == Phase::Done) return;
  bool step_over = step_deadline_ && now >= *step_deadline_;
  bool instance_over = instance_deadline_ && now >= *instance_deadline_;
  if (step_over || instance_over) {
    std::string what = step_over ? "step '" + assign_.steps[step_].name + "' ran longer than its timeout"
                                 : "the instance ran longer than its timeout";
    begin_stopping("timed_out", what, now);
  }
}

void Execution::add_poll_items(std::vector<zmq::pollitem_t>& items) const {
  if (file_task_) items.push_back({nullptr, file_task_->fd(), ZMQ_POLLIN, 0});
  if (!child_) return;
  if (child_->pidfd() >= 0) items.push_back({nullptr, child_->pidfd(), ZMQ_POLLIN, 0});
  if (child_->output_fd() >= 0) items.push_back({nullptr, child_->output_fd(), ZMQ_POLLIN, 0});
}

std::optional<Clock::time_point> Execution::deadline() const {
  std::optional<Clock::time_point> d;
  auto take = [&](const std::optional<Clock::time_point>& t) {
    if (t && (!d || *t < *d)) d = t;
  };
  switch (phase_) {
    case Phase::Starting: return Clock::time_point::min();
    case Phase::Running: take(step_deadline_); take(instance_deadline_); break;
    case Phase::Sleeping: take(sleep_until_); take(step_deadline_); take(instance_deadline_); break;
    case Phase::Working: take(step_deadline_); take(instance_deadline_); break;
    case Phase::Stopping: take(kill_at_); break;
    case Phase::Done: break;
  }
  return d;
}

proto::Finished Execution::result() const {
  proto::Finished f;
  f.instance = assign_.instance;
  f.attempt = assign_.attempt;
  f.status = status_;
  f.exit_code = exit_code_;
  f.duration_ms = static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::milliseconds>(ended_ - started_).count());
  f.failed_step = failed_step_;
  f.error = error_;
  f.output = output_.str();
  return f;
}

}  // namespace zf
