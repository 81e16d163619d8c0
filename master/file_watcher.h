// Finds new and changed files for the master's watch triggers.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "common/result.h"
#include "common/trigger.h"

namespace zf {

// What the watcher reports. Kind::File is one stable version of a file: the
// job's trigger creates one instance with parameter `file` = path.
struct FileEvent {
  enum class Kind {
    File,   // a new or changed file has stopped changing
    Ready,  // the watch has taken its first look at the folder: files there
            // now count as pre-existing (sent once per add())
    Error,  // the folder cannot be read (message says why); sent once until it
            // can be read again. The watch keeps trying every poll interval.
  };
  Kind kind = Kind::File;
  std::string job;
  std::size_t trigger = 0;  // index in the job's [[triggers]]
  std::string path;         // File: folder + "/" + name; else the folder
  std::uint64_t size = 0;   // File: bytes
  TimePoint mtime{};        // File: modification time
  std::string message;      // Error: what went wrong
};

// Watches the folders of watch triggers on a thread of its own and reports
// each stable file version once.
//
// Thread contract: every public member function may be called from any
// thread (in the master, the event loop); none of them blocks on the file
// system. All directory reads, stat calls and inotify reads happen on the
// watcher's own thread, which the constructor starts and the destructor
// stops and joins. The loop adds fd() to its zmq_poll set (ZMQ_POLLIN); the
// fd is readable while events are waiting, and take() returns them and
// clears the readiness. Events of a watch that remove()/remove_job() took
// away are never returned after that call returns.
//
// Rules (docs/triggers.md):
//  * Only regular files directly in the folder whose name matches the
//    pattern (fnmatch with FNM_PERIOD: "*" does not match ".name") count.
//  * A version is (path, size, mtime). It is taken once the same version
//    has been seen for at least one poll interval, with no inotify change
//    event for the file in that time; each version fires once. A rewritten
//    file is a new version and fires again; a deleted file is forgotten.
//  * Files present at the watch's first look are ignored unless `existing`;
//    if such a file changes later, the new version fires.
//  * inotify (IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_MODIFY |
//    IN_ATTRIB) makes the watcher look early; the folder is also scanned
//    every poll interval whatever inotify says, which covers file systems
//    where inotify sees nothing (NFS, FUSE), a full inotify queue and a
//    folder that was recreated.
class FileWatcher {
 public:
  struct Options {
    bool use_inotify = true;  // false: polling only (tests, odd file systems)
  };

  // Errors: the wake-up eventfds or the thread could not be created. No
  // inotify instance (limit reached) is not an error: watches then poll.
  static Result<std::unique_ptr<FileWatcher>> create(Options options);
  static Result<std::unique_ptr<FileWatcher>> create() { return create(Options{}); }
  ~FileWatcher();
  FileWatcher(const FileWatcher&) = delete;
  FileWatcher& operator=(const FileWatcher&) = delete;

  // Starts watching spec.watch for trigger `trigger` of `job` (spec.kind
  // must be Watch; other kinds are ignored). Replaces the watch of the same
  // (job, trigger) unless the spec is the same (same_trigger), in which case
  // the running watch and what it has seen are kept.
  void add(const std::string& job, std::size_t trigger, const TriggerSpec& spec);
  void remove(const std::string& job, std::size_t trigger);
  void remove_job(const std::string& job);

  // Readable (POLLIN) while events are waiting. Owned by the watcher.
  int fd() const { return events_fd_; }
  // The waiting events, oldest first; clears fd()'s readiness.
  std::vector<FileEvent> take();

 private:
  struct Watch;
  struct Request {
    enum class Op { Add, Remove } op = Op::Add;
    std::uint64_t id = 0;
    std::string job;
    std::size_t trigger = 0;
    TriggerSpec spec;
  };
  struct Live {
    std::uint64_t id;
    TriggerSpec spec;
  };

  FileWatcher(Options options, int events_fd, int wake_fd);
  void run();
  void push_request(Request r);
  // Queues an event if watch `id` is still live. Called on the watcher thread.
  void emit(std::uint64_t id, FileEvent e);
  void remove_locked(const std::string& job, std::size_t trigger);

  const Options options_;
  const int events_fd_;  // eventfd: watcher thread -> loop
  const int wake_fd_;    // eventfd: loop -> watcher thread (requests, stop)

  std::mutex mu_;  // guards stop_ .. events_
  bool stop_ = false;
  std::uint64_t next_id_ = 1;
  std::map<std::pair<std::string, std::size_t>, Live> live_;
  std::deque<Request> requests_;
  std::vector<FileEvent> events_;

  std::thread thread_;  // last member: started after everything else exists
};

}  // namespace zf
