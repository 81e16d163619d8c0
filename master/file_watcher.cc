#include "master/file_watcher.h"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <cstring>
#include <optional>
#include <set>
#include <system_error>

namespace zf {

namespace {

using Steady = std::chrono::steady_clock;

constexpr std::uint32_t kInotifyMask =
    IN_CLOSE_WRITE | IN_MOVED_TO | IN_CREATE | IN_MODIFY | IN_ATTRIB | IN_ONLYDIR;

void signal_fd(int fd) {
  std::uint64_t one = 1;
  // An eventfd write only fails if the counter would overflow, which cannot
  // happen here (readers drain it); EINTR cannot happen on a non-blocking fd.
  [[maybe_unused]] ssize_t n = ::write(fd, &one, sizeof one);
}

void drain_fd(int fd) {
  std::uint64_t count = 0;
  [[maybe_unused]] ssize_t n = ::read(fd, &count, sizeof count);
}

std::string join_path(const std::string& dir, const std::string& name) {
  return dir == "/" ? dir + name : dir + "/" + name;
}

}  // namespace

// One watch, owned by the watcher thread.
struct FileWatcher::Watch {
  struct File {
    std::uint64_t size = 0;
    std::int64_t mtime_ns = 0;
    Steady::time_point since{};  // when this version was first seen (or last touched)
    bool fired = false;          // this version was reported (or is pre-existing)
  };

  std::uint64_t id = 0;
  std::string job;
  std::size_t trigger = 0;
  TriggerSpec spec;
  int wd = -1;                   // inotify watch descriptor, -1 = polling only
  bool first_look_done = false;  // files seen before this are pre-existing
  bool error_reported = false;
  Steady::time_point next_poll{};
  std::optional<Steady::time_point> early;    // inotify asked for a look
  std::optional<Steady::time_point> confirm;  // earliest time an unfired version may be stable
  std::map<std::string, File> files;

  Steady::duration poll() const { return std::chrono::duration_cast<Steady::duration>(spec.poll); }
  Steady::time_point due() const {
    Steady::time_point t = next_poll;
    if (early) t = std::min(t, *early);
    if (confirm) t = std::min(t, *confirm);
    return t;
  }
};

Result<std::unique_ptr<FileWatcher>> FileWatcher::create(Options options) {
  int events_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (events_fd < 0) return make_error(std::string("file watcher: eventfd: ") + std::strerror(errno));
  int wake_fd = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (wake_fd < 0) {
    int e = errno;
    ::close(events_fd);
    return make_error(std::string("file watcher: eventfd: ") + std::strerror(e));
  }
  std::unique_ptr<FileWatcher> w(new FileWatcher(options, events_fd, wake_fd));
  try {
    w->thread_ = std::thread(&FileWatcher::run, w.get());
  } catch (const std::system_error& e) {
    return make_error(std::string("file watcher: cannot start its thread: ") + e.what());
  }
  return w;
}

FileWatcher::FileWatcher(Options options, int events_fd, int wake_fd)
    : options_(options), events_fd_(events_fd), wake_fd_(wake_fd) {}

FileWatcher::~FileWatcher() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  signal_fd(wake_fd_);
  if (thread_.joinable()) thread_.join();
  ::close(events_fd_);
  ::close(wake_fd_);
}

void FileWatcher::push_request(Request r) {
  requests_.push_back(std::move(r));
  signal_fd(wake_fd_);
}

void FileWatcher::add(const std::string& job, std::size_t trigger, const TriggerSpec& spec) {
  if (spec.kind != TriggerSpec::Kind::Watch) return;
  std::lock_guard<std::mutex> lock(mu_);
  auto key = std::make_pair(job, trigger);
  if (auto it = live_.find(key); it != live_.end()) {
    if (same_trigger(it->second.spec, spec)) return;
    remove_locked(job, trigger);
  }
  std::uint64_t id = next_id_++;
  live_.emplace(key, Live{id, spec});
  push_request(Request{Request::Op::Add, id, job, trigger, spec});
}

void FileWatcher::remove_locked(const std::string& job, std::size_t trigger) {
  auto it = live_.find(std::make_pair(job, trigger));
  if (it == live_.end()) return;
  push_request(Request{Request::Op::Remove, it->second.id, job, trigger, TriggerSpec{}});
  live_.erase(it);
  std::erase_if(events_, [&](const FileEvent& e) { return e.job == job && e.trigger == trigger; });
}

void FileWatcher::remove(const std::string& job, std::size_t trigger) {
  std::lock_guard<std::mutex> lock(mu_);
  remove_locked(job, trigger);
}

void FileWatcher::remove_job(const std::string& job) {
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<std::size_t> triggers;
  for (auto it = live_.lower_bound(std::make_pair(job, std::size_t{0})); it != live_.end() && it->first.first == job;
       ++it)
    triggers.push_back(it->first.second);
  for (auto t : triggers) remove_locked(job, t);
}

std::vector<FileEvent> FileWatcher::take() {
  std::lock_guard<std::mutex> lock(mu_);
  drain_fd(events_fd_);
  std::vector<FileEvent> out;
  out.swap(events_);
  return out;
}

void FileWatcher::emit(std::uint64_t id, FileEvent e) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = live_.find(std::make_pair(e.job, e.trigger));
  if (it == live_.end() || it->second.id != id) return;  // removed meanwhile
  events_.push_back(std::move(e));
  signal_fd(events_fd_);
}

void FileWatcher::run() {
  const int ino = options_.use_inotify ? ::inotify_init1(IN_NONBLOCK | IN_CLOEXEC) : -1;
  std::map<std::uint64_t, Watch> watches;
  std::map<int, std::set<std::uint64_t>> by_wd;  // one folder may serve several watches

  auto drop_inotify = [&](Watch& w) {
    if (w.wd < 0) return;
    auto it = by_wd.find(w.wd);
    if (it != by_wd.end()) {
      it->second.erase(w.id);
      if (it->second.empty()) {
        ::inotify_rm_watch(ino, w.wd);
        by_wd.erase(it);
      }
    }
    w.wd = -1;
  };

  auto event_for = [](const Watch& w, FileEvent::Kind kind, std::string path) {
    FileEvent e;
    e.kind = kind;
    e.job = w.job;
    e.trigger = w.trigger;
    e.path = std::move(path);
    return e;
  };

  // One look at the folder: record versions, report the stable ones.
  auto scan = [&](Watch& w, Steady::time_point now) {
    w.early.reset();
    w.next_poll = now + w.poll();
    int dfd = ::open(w.spec.watch.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0) {
      int err = errno;
      if (!w.error_reported) {
        FileEvent e = event_for(w, FileEvent::Kind::Error, w.spec.watch);
        e.message = "watch folder '" + w.spec.watch + "': " + std::strerror(err);
        emit(w.id, std::move(e));
        w.error_reported = true;
      }
      // A folder that does not exist holds no pre-existing files; for any
      // other failure we cannot tell, so the first look waits for success.
      if (!w.first_look_done && err == ENOENT) {
        w.first_look_done = true;
        emit(w.id, event_for(w, FileEvent::Kind::Ready, w.spec.watch));
      }
      return;  // keep what we knew: a passing failure must not re-fire everything
    }
    w.error_reported = false;
    if (ino >= 0 && w.wd < 0) {
      int wd = ::inotify_add_watch(ino, w.spec.watch.c_str(), kInotifyMask);
      if (wd >= 0) {
        w.wd = wd;
        by_wd[wd].insert(w.id);
      }  // else (watch limit, odd file system): polling alone
    }
    DIR* dir = ::fdopendir(dfd);
    if (!dir) {
      ::close(dfd);
      return;
    }
    std::set<std::string> seen;
    std::vector<std::pair<std::string, Watch::File>> stable;
    while (dirent* de = ::readdir(dir)) {
      std::string name = de->d_name;
      if (name == "." || name == "..") continue;
      if (::fnmatch(w.spec.pattern.c_str(), name.c_str(), FNM_PERIOD) != 0) continue;
      struct stat st;
      if (::fstatat(dfd, name.c_str(), &st, 0) != 0 || !S_ISREG(st.st_mode)) continue;
      std::uint64_t size = static_cast<std::uint64_t>(st.st_size);
      std::int64_t mtime_ns = static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
      seen.insert(name);
      // A new version's stability wait starts after the stat that saw it,
      // never before, so a write just before the stat cannot shorten it.
      auto [it, inserted] = w.files.try_emplace(name);
      Watch::File& f = it->second;
      if (inserted) {
        f = Watch::File{size, mtime_ns, Steady::now(), !w.first_look_done && !w.spec.existing};
      } else if (f.size != size || f.mtime_ns != mtime_ns) {
        f = Watch::File{size, mtime_ns, Steady::now(), false};
      } else if (!f.fired && now - f.since >= w.poll()) {
        f.fired = true;
        stable.emplace_back(name, f);
      }
    }
    ::closedir(dir);  // also closes dfd
    std::erase_if(w.files, [&](const auto& kv) { return !seen.count(kv.first); });
    if (!w.first_look_done) {
      w.first_look_done = true;
      emit(w.id, event_for(w, FileEvent::Kind::Ready, w.spec.watch));
    }
    for (auto& [name, f] : stable) {
      FileEvent e = event_for(w, FileEvent::Kind::File, join_path(w.spec.watch, name));
      e.size = f.size;
      e.mtime = TimePoint{std::chrono::duration_cast<TimePoint::duration>(std::chrono::nanoseconds(f.mtime_ns))};
      emit(w.id, std::move(e));
    }
    w.confirm.reset();
    for (const auto& [name, f] : w.files) {
      if (f.fired) continue;
      auto t = f.since + w.poll();
      if (!w.confirm || t < *w.confirm) w.confirm = t;
    }
  };

  alignas(inotify_event) char buf[16 * 1024];
  for (;;) {
    std::deque<Request> requests;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (stop_) break;
      requests.swap(requests_);
    }
    drain_fd(wake_fd_);
    for (auto& r : requests) {
      if (r.op == Request::Op::Add) {
        Watch w;
        w.id = r.id;
        w.job = r.job;
        w.trigger = r.trigger;
        w.spec = std::move(r.spec);
        w.next_poll = Steady::now();  // first look at once
        watches.emplace(w.id, std::move(w));
      } else if (auto it = watches.find(r.id); it != watches.end()) {
        drop_inotify(it->second);
        watches.erase(it);
      }
    }

    Steady::time_point now = Steady::now();
    std::optional<Steady::time_point> next;
    for (auto& [id, w] : watches) {
      if (w.due() <= now) scan(w, now);
      if (!next || w.due() < *next) next = w.due();
    }

    int timeout_ms = -1;
    if (next) {
      auto wait = std::chrono::ceil<std::chrono::milliseconds>(*next - Steady::now()).count();
      timeout_ms = static_cast<int>(std::clamp<std::int64_t>(wait, 0, INT_MAX));
    }
    pollfd fds[2] = {{wake_fd_, POLLIN, 0}, {ino, POLLIN, 0}};
    int n = ::poll(fds, ino >= 0 ? 2 : 1, timeout_ms);
    if (n <= 0 || ino < 0 || !(fds[1].revents & POLLIN)) continue;

    // inotify: a change in a watched folder. Look early at new names and
    // restart the stability wait of versions not yet reported.
    now = Steady::now();
    for (;;) {
      ssize_t len = ::read(ino, buf, sizeof buf);
      if (len <= 0) break;
      for (ssize_t off = 0; off < len;) {
        const auto* ev = reinterpret_cast<const inotify_event*>(buf + off);
        off += static_cast<ssize_t>(sizeof(inotify_event) + ev->len);
        if (ev->mask & IN_Q_OVERFLOW) {
          for (auto& [id, w] : watches) w.early = now;
          continue;
        }
        auto wit = by_wd.find(ev->wd);
        if (wit == by_wd.end()) continue;
        if (ev->mask & IN_IGNORED) {  // folder deleted or unmounted: poll until it is back
          for (auto id : wit->second)
            if (auto it = watches.find(id); it != watches.end()) it->second.wd = -1;
          by_wd.erase(wit);
          continue;
        }
        if ((ev->mask & IN_ISDIR) || ev->len == 0) continue;
        std::string name = ev->name;
        for (auto id : wit->second) {
          auto it = watches.find(id);
          if (it == watches.end()) continue;
          Watch& w = it->second;
          if (::fnmatch(w.spec.pattern.c_str(), name.c_str(), FNM_PERIOD) != 0) continue;
          auto f = w.files.find(name);
          if (f != w.files.end() && !f->second.fired) f->second.since = now;
          else w.early = now;
        }
      }
    }
  }
  for (auto& [id, w] : watches) drop_inotify(w);
  if (ino >= 0) ::close(ino);
}

}  // namespace zf
