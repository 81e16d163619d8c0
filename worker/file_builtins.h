// The file builtins: copy, move, delete and mkdir (their arguments are in
// common/builtins.cc, their meaning for operators in schemas/job-format.md).
// run_file_builtin() does the work on the calling thread; FileTask runs it on
// a thread of its own so that the worker loop keeps heartbeating and
// answering the master while a multi-gigabyte copy runs.
#pragma once

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <thread>

#include "common/result.h"

namespace zf {

// What a file builtin did. exit_code 0: done; 1: the operation failed; 2: an
// argument is invalid (after substitution). error names the builtin, the
// path(s) and the reason: "copy: cannot copy '/a/x' to '/b/x': No such file
// or directory".
struct FileOutcome {
  int exit_code = 0;
  std::string error;
};

bool is_file_builtin(std::string_view name);

// Runs the builtin `name` to its end on the calling thread and never throws
// for file system errors. Relative paths are taken relative to `cwd`; an
// empty or relative `cwd` is taken relative to the process's working
// directory. `cancel` is read between chunks of a file (8 MiB) and between
// directory entries: once set, the builtin stops and fails with
// "NAME: cancelled", leaving no partly written file under a target name
// (a partly copied directory tree stays, as with cp -r).
FileOutcome run_file_builtin(std::string_view name, const std::map<std::string, std::string>& args,
                             const std::string& cwd, const std::atomic<bool>& cancel);

// One file builtin on a thread of its own.
//
// Thread contract: start() creates the thread, which runs run_file_builtin()
// and then makes fd() readable. Every member function is called from the
// thread that called start() (the worker loop). The two threads share only
// the cancel flag, the finished flag and the outcome, which the helper
// thread writes before it sets finished.
class FileTask {
 public:
  // Error if no eventfd or no thread can be had (out of resources).
  static Result<std::unique_ptr<FileTask>> start(std::string name, std::map<std::string, std::string> args,
                                                 std::string cwd);
  // Cancels the builtin. Joins the thread if it has finished; otherwise
  // (blocked in a file system call past every grace period) detaches it:
  // the state it uses is shared and outlives this object.
  ~FileTask();
  FileTask(const FileTask&) = delete;
  FileTask& operator=(const FileTask&) = delete;

  // Readable once the builtin has finished; for the worker's poll.
  int fd() const;
  // Whether outcome() is final. Never blocks.
  bool finished() const;
  // Valid once finished().
  const FileOutcome& outcome() const;
  // Asks the builtin to stop at its next check; finished() follows.
  void cancel();

 private:
  struct Shared;
  explicit FileTask(std::shared_ptr<Shared> shared);

  std::shared_ptr<Shared> shared_;
  std::thread thread_;
};

}  // namespace zf
