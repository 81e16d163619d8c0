#include "worker/file_builtins.h"

#include <fcntl.h>
#include <stdio.h>  // renameat2
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <filesystem>
#include <system_error>
#include <vector>

#include "common/builtins.h"

namespace zf {

namespace fs = std::filesystem;

namespace {

// Bytes copied between two looks at the cancel flag.
constexpr size_t kChunk = size_t{8} << 20;
// The nice value of a file builtin's thread (0 normal, 19 lowest).
constexpr int kFileThreadNice = 10;

std::error_code errno_code(int e) { return {e, std::generic_category()}; }
std::error_code code(std::errc e) { return std::make_error_code(e); }

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

// `what` was tried and the OS said no: "cannot copy 'a' to 'b': Permission denied".
Error failure(const std::string& what, std::error_code ec) { return make_error(what + ": " + ec.message()); }

bool cancelled(const std::atomic<bool>& c) { return c.load(std::memory_order_relaxed); }
Error cancelled_error() { return make_error("cancelled"); }

// Relative paths are relative to the step's cwd, itself relative to the
// process's working directory, as for the cwd of a run step.
fs::path resolve(const std::string& cwd, const std::string& p) {
  fs::path path(p);
  if (path.is_absolute()) return path;
  fs::path base(cwd);
  if (!base.is_absolute()) {
    std::error_code ec;
    fs::path here = fs::current_path(ec);
    if (!ec) base = here / base;
  }
  return base / path;
}

// A name beside `target` for the data being written, renamed to `target`
// once complete so that the target is never seen half written.
fs::path temp_sibling(const fs::path& target) {
  static std::atomic<uint64_t> counter{0};
  std::string name = "." + target.filename().string() + ".zforce-" + std::to_string(::getpid()) + "-" +
                     std::to_string(++counter);
  return target.parent_path() / name;
}

// What cp and mv do with their target: a `to` that is an existing directory,
// or that ends in '/', receives `from` under its own name.
Result<fs::path> target_of(const fs::path& from, const fs::path& to) {
  std::error_code ec;
  bool into = !to.has_filename() || fs::is_directory(to, ec);
  if (!into) return to;
  fs::path name = from.has_filename() ? from.filename() : from.parent_path().filename();
  if (name.empty() || name == "." || name == "..")
    return make_error(quoted(from) + " has no name to take inside " + quoted(to) + "; give the full target path");
  return to / name;
}

// Whether `inner` is `outer` or lies below it, symlinks resolved.
bool is_within(const fs::path& inner, const fs::path& outer) {
  std::error_code ec;
  fs::path o = fs::canonical(outer, ec);
  if (ec) return false;
  fs::path i = fs::weakly_canonical(inner, ec);
  if (ec) return false;
  return std::mismatch(o.begin(), o.end(), i.begin(), i.end()).first == o.end();
}

// The same directory entry (not following a final symlink).
bool same_entry(const fs::path& a, const fs::path& b) {
  struct stat sa{}, sb{};
  return ::lstat(a.c_str(), &sa) == 0 && ::lstat(b.c_str(), &sb) == 0 && sa.st_dev == sb.st_dev &&
         sa.st_ino == sb.st_ino;
}

// rename(2); unless `replace`, an existing `to` is refused atomically where
// the file system can (RENAME_NOREPLACE), by a check just before elsewhere.
std::error_code rename_path(const fs::path& from, const fs::path& to, bool replace) {
  if (!replace) {
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) == 0) return {};
    if (errno != EINVAL && errno != ENOSYS) return errno_code(errno);
    struct stat st{};
    if (::lstat(to.c_str(), &st) == 0) return code(std::errc::file_exists);
  }
  if (::rename(from.c_str(), to.c_str()) != 0) return errno_code(errno);
  return {};
}

// Copies every byte from `in` to `out`, looking at `cancel` between chunks.
std::error_code copy_bytes(int in, int out, const std::atomic<bool>& cancel) {
  bool kernel_copy = true;  // copy_file_range(2) until the file system says no
  std::vector<char> buf;
  while (true) {
    if (cancelled(cancel)) return code(std::errc::operation_canceled);
    if (kernel_copy) {
      ssize_t n = ::copy_file_range(in, nullptr, out, nullptr, kChunk, 0);
      if (n > 0) continue;
      if (n == 0) return {};
      if (errno == EINTR) continue;
      if (errno != EXDEV && errno != EINVAL && errno != ENOSYS && errno != EOPNOTSUPP) return errno_code(errno);
      kernel_copy = false;
      buf.resize(size_t{1} << 20);
    }
    size_t copied = 0;
    while (copied < kChunk) {
      ssize_t n = ::read(in, buf.data(), buf.size());
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return errno_code(errno);
      if (n == 0) return {};
      for (ssize_t done = 0; done < n;) {
        ssize_t w = ::write(out, buf.data() + done, static_cast<size_t>(n - done));
        if (w < 0 && errno == EINTR) continue;
        if (w < 0) return errno_code(errno);
        done += w;
      }
      copied += static_cast<size_t>(n);
    }
  }
}

// Copies regular file `from` into the new file `dest` (which must not
// exist) with its permission bits (less the umask) and, if `keep_times`, its
// access and modification times. On failure `dest` is removed; the error
// starts with `what`.
Status copy_file_new(const fs::path& from, const fs::path& dest, const std::string& what, bool keep_times,
                     const std::atomic<bool>& cancel) {
  // O_NONBLOCK: a FIFO put in place of the file must not block the open.
  int in = ::open(from.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (in < 0) return failure(what, errno_code(errno));
  struct stat st{};
  if (::fstat(in, &st) != 0) {
    int e = errno;
    ::close(in);
    return failure(what, errno_code(e));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(in);
    return make_error(what + ": not a regular file");
  }
  int out = ::open(dest.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, st.st_mode & 0777);
  if (out < 0) {
    int e = errno;
    ::close(in);
    return failure(what, errno_code(e));
  }
  std::error_code ec = copy_bytes(in, out, cancel);
  if (!ec && keep_times) {
    timespec times[2] = {st.st_atim, st.st_mtim};
    if (::futimens(out, times) != 0) ec = errno_code(errno);
  }
  ::close(in);
  // Some file systems (NFS) report write errors only here.
  if (::close(out) != 0 && !ec) ec = errno_code(errno);
  if (!ec) return {};
  ::unlink(dest.c_str());
  if (ec == code(std::errc::operation_canceled)) return cancelled_error();
  return failure(what, ec);
}

// Copies regular file `from` to `to` through a temporary sibling, so `to` is
// either as before or complete.
Status copy_file_atomic(const fs::path& from, const fs::path& to, bool overwrite, const std::string& what,
                        bool keep_times, const std::atomic<bool>& cancel) {
  fs::path tmp = temp_sibling(to);
  if (auto s = copy_file_new(from, tmp, what, keep_times, cancel); !s.ok()) return s;
  if (auto ec = rename_path(tmp, to, overwrite)) {
    ::unlink(tmp.c_str());
    return failure(what, ec);
  }
  return {};
}

// Makes `to` a symlink with the same target as symlink `from`.
Status copy_symlink_atomic(const fs::path& from, const fs::path& to, bool overwrite, const std::string& what) {
  std::error_code ec;
  fs::path target = fs::read_symlink(from, ec);
  if (ec) return failure(what, ec);
  fs::path tmp = temp_sibling(to);
  fs::create_symlink(target, tmp, ec);
  if (ec) return failure(what, ec);
  if (auto rec = rename_path(tmp, to, overwrite)) {
    ::unlink(tmp.c_str());
    return failure(what, rec);
  }
  return {};
}

std::string copy_what(const fs::path& from, const fs::path& to) {
  return "cannot copy " + quoted(from) + " to " + quoted(to);
}

// Copies directory `from` and everything below it to `to`, as cp -r does:
// symlinks inside are copied as symlinks, never followed; an existing `to`
// directory is merged into (existing files replaced) only if `overwrite`.
// Permissions are copied; times too if `keep_times`.
Status copy_tree(const fs::path& from, const fs::path& to, bool overwrite, bool keep_times,
                 const std::atomic<bool>& cancel) {
  std::error_code ec;
  auto to_st = fs::status(to, ec);
  if (fs::exists(to_st)) {
    if (!fs::is_directory(to_st)) return failure(copy_what(from, to), code(std::errc::not_a_directory));
    if (!overwrite) return failure(copy_what(from, to), code(std::errc::file_exists));
  } else {
    // Owner-writable until filled: a read-only source directory gets its
    // permissions at the end.
    fs::create_directory(to, ec);
    if (ec) return failure(copy_what(from, to), ec);
  }
  fs::directory_iterator it(from, ec);
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (cancelled(cancel)) return cancelled_error();
    const fs::path& src = it->path();
    fs::path dst = to / src.filename();
    std::error_code sec;
    auto st = it->symlink_status(sec);
    if (sec) return failure(copy_what(src, dst), sec);
    Status s;
    if (fs::is_symlink(st)) {
      auto dst_st = fs::symlink_status(dst, sec);
      if (fs::is_directory(dst_st)) return failure(copy_what(src, dst), code(std::errc::is_a_directory));
      s = copy_symlink_atomic(src, dst, overwrite, copy_what(src, dst));
    } else if (fs::is_directory(st)) {
      s = copy_tree(src, dst, overwrite, keep_times, cancel);
    } else if (fs::is_regular_file(st)) {
      auto dst_st = fs::status(dst, sec);
      if (fs::is_directory(dst_st)) return failure(copy_what(src, dst), code(std::errc::is_a_directory));
      s = copy_file_atomic(src, dst, overwrite, copy_what(src, dst), keep_times, cancel);
    } else {
      s = make_error(copy_what(src, dst) + ": not a regular file, directory or symbolic link");
    }
    if (!s.ok()) return s;
  }
  if (ec) return failure("cannot read directory " + quoted(from), ec);
  auto from_st = fs::status(from, ec);
  if (!ec) fs::permissions(to, from_st.permissions(), ec);
  if (!ec && keep_times) {
    auto t = fs::last_write_time(from, ec);
    if (!ec) fs::last_write_time(to, t, ec);
  }
  if (ec) return failure(copy_what(from, to), ec);
  return {};
}

// Removes `p` and, if it is a directory (a symlink is never followed),
// everything below it. The error names the entry that could not be removed.
Status remove_tree(const fs::path& p, const std::atomic<bool>& cancel) {
  std::error_code ec;
  auto st = fs::symlink_status(p, ec);
  if (st.type() == fs::file_type::not_found) return {};  // gone meanwhile: as wanted
  if (ec) return failure("cannot delete " + quoted(p), ec);
  if (fs::is_directory(st)) {
    // Listed first: removing entries while reading a directory may skip some.
    std::vector<fs::path> children;
    fs::directory_iterator it(p, ec);
    for (; !ec && it != fs::directory_iterator(); it.increment(ec)) children.push_back(it->path());
    if (ec) return failure("cannot delete " + quoted(p), ec);
    for (const auto& c : children) {
      if (cancelled(cancel)) return cancelled_error();
      if (auto s = remove_tree(c, cancel); !s.ok()) return s;
    }
  }
  fs::remove(p, ec);
  if (ec) return failure("cannot delete " + quoted(p), ec);
  return {};
}

Status copy_op(const fs::path& from, const fs::path& to, bool overwrite, bool recursive,
               const std::atomic<bool>& cancel) {
  auto target = target_of(from, to);
  if (!target.ok()) return target.error();
  const fs::path& dst = *target;
  std::string what = copy_what(from, dst);
  std::error_code ec;
  auto st = fs::status(from, ec);  // a symlink named as `from` is followed, as by cp
  if (!fs::exists(st)) return failure(what, ec ? ec : code(std::errc::no_such_file_or_directory));
  bool dir = fs::is_directory(st);
  if (dir) {
    if (!recursive)
      return make_error(what + ": " + code(std::errc::is_a_directory).message() +
                        " (set recursive = \"true\" to copy a directory with its contents)");
    if (is_within(dst, from)) return make_error(what + ": cannot copy a directory into itself");
  } else if (!fs::is_regular_file(st)) {
    return make_error(what + ": not a regular file or directory");
  }
  auto dst_st = fs::status(dst, ec);
  if (fs::exists(dst_st)) {
    if (fs::equivalent(from, dst, ec)) return make_error(what + ": they are the same file");
    if (!overwrite)
      return make_error(what + ": " + code(std::errc::file_exists).message() +
                        " (set overwrite = \"true\" to replace it)");
    if (dir && !fs::is_directory(dst_st)) return failure(what, code(std::errc::not_a_directory));
    if (!dir && fs::is_directory(dst_st)) return failure(what, code(std::errc::is_a_directory));
  }
  if (dir) return copy_tree(from, dst, overwrite, false, cancel);
  return copy_file_atomic(from, dst, overwrite, what, false, cancel);
}

// mv across file systems: copy to a temporary sibling of the target, rename
// it into place, then remove the source. A failed or cancelled copy leaves
// the source as it was and no target.
Status move_across(const fs::path& from, const fs::path& dst, fs::file_status st, bool overwrite,
                   const std::string& what, const std::atomic<bool>& cancel) {
  static const std::atomic<bool> never{false};
  fs::path tmp = temp_sibling(dst);
  Status s;
  if (fs::is_symlink(st)) s = copy_symlink_atomic(from, tmp, false, what);
  else if (fs::is_directory(st)) s = copy_tree(from, tmp, false, true, cancel);
  else if (fs::is_regular_file(st)) s = copy_file_new(from, tmp, what, true, cancel);
  else s = make_error(what + ": not a regular file, directory or symbolic link (cannot cross file systems)");
  if (!s.ok()) {
    (void)remove_tree(tmp, never);
    // Errors inside a tree name the entry (and the temporary name): say what the move was.
    const std::string& m = s.error().message;
    if (cancelled(cancel) || m.rfind(what, 0) == 0) return s;
    return make_error(what + ": " + m);
  }
  if (auto ec = rename_path(tmp, dst, overwrite)) {
    (void)remove_tree(tmp, never);
    return failure(what, ec);
  }
  // The target is complete: the source goes, even if a cancel comes meanwhile.
  if (auto r = remove_tree(from, never); !r.ok())
    return make_error(what + ": copied across file systems, but the source was not removed: " + r.error().message);
  return {};
}

Status move_op(const fs::path& from, const fs::path& to, bool overwrite, const std::atomic<bool>& cancel) {
  auto target = target_of(from, to);
  if (!target.ok()) return target.error();
  const fs::path& dst = *target;
  std::string what = "cannot move " + quoted(from) + " to " + quoted(dst);
  std::error_code ec;
  auto st = fs::symlink_status(from, ec);  // a symlink is moved, not what it points to
  if (!fs::exists(st)) return failure(what, ec ? ec : code(std::errc::no_such_file_or_directory));
  auto dst_st = fs::symlink_status(dst, ec);
  if (fs::exists(dst_st)) {
    if (same_entry(from, dst)) return make_error(what + ": they are the same file");
    if (!overwrite)
      return make_error(what + ": " + code(std::errc::file_exists).message() +
                        " (set overwrite = \"true\" to replace it)");
  }
  if (fs::is_directory(st) && is_within(dst, from)) return make_error(what + ": cannot move a directory into itself");
  ec = rename_path(from, dst, overwrite);
  if (!ec) return {};
  if (ec != code(std::errc::cross_device_link)) return failure(what, ec);
  return move_across(from, dst, st, overwrite, what, cancel);
}

Status delete_op(fs::path p, bool recursive, bool missing_ok, const std::atomic<bool>& cancel) {
  // "dir/" would resolve a symlink named dir; the entry itself is meant.
  while (!p.has_filename() && p.has_relative_path()) p = p.parent_path();
  if (p.lexically_normal() == p.root_path()) return make_error("refusing to delete " + quoted(p) + " (the root directory)");
  if (p.filename() == "." || p.filename() == "..")
    return make_error("refusing to delete " + quoted(p) + ": it ends in '.' or '..'");
  std::string what = "cannot delete " + quoted(p);
  std::error_code ec;
  auto st = fs::symlink_status(p, ec);
  if (st.type() == fs::file_type::not_found) {
    if (missing_ok) return {};
    return failure(what, code(std::errc::no_such_file_or_directory));
  }
  if (ec) return failure(what, ec);
  // The same refusal by identity, whatever the spelling of the path.
  if (fs::is_directory(st) && same_entry(p, "/"))
    return make_error("refusing to delete " + quoted(p) + " (the root directory)");
  if (fs::is_directory(st) && !recursive)
    return make_error(what + ": " + code(std::errc::is_a_directory).message() +
                      " (set recursive = \"true\" to delete a directory with its contents)");
  return remove_tree(p, cancel);
}

Status mkdir_op(const fs::path& p, bool parents) {
  std::string what = "cannot create directory " + quoted(p);
  std::error_code ec;
  if (parents) {
    auto st = fs::status(p, ec);
    if (fs::is_directory(st)) return {};  // like mkdir -p
    if (fs::exists(st)) return failure(what, code(std::errc::file_exists));
    ec.clear();
    fs::create_directories(p, ec);
    if (ec) return failure(what, ec);
    return {};
  }
  bool made = fs::create_directory(p, ec);
  if (ec) return failure(what, ec);
  if (!made) return failure(what, code(std::errc::file_exists));
  return {};
}

}  // namespace

bool is_file_builtin(std::string_view name) {
  return name == "copy" || name == "move" || name == "delete" || name == "mkdir";
}

FileOutcome run_file_builtin(std::string_view name, const std::map<std::string, std::string>& args,
                             const std::string& cwd, const std::atomic<bool>& cancel) {
  std::string b(name);
  const BuiltinSpec* spec = find_builtin(name);
  if (!spec || !is_file_builtin(name)) return {2, b + ": not a file builtin"};
  // The loader checked values without templates; these are substituted.
  auto a = resolve_builtin_args(*spec, args);
  if (!a.ok()) return {2, b + ": " + a.error().message};
  auto path = [&](const char* arg) { return resolve(cwd, a->at(arg)); };
  auto flag = [&](const char* arg) { return parse_flag(a->at(arg)).value(); };
  Status s;
  if (name == "copy") s = copy_op(path("from"), path("to"), flag("overwrite"), flag("recursive"), cancel);
  else if (name == "move") s = move_op(path("from"), path("to"), flag("overwrite"), cancel);
  else if (name == "delete") s = delete_op(path("path"), flag("recursive"), flag("missing_ok"), cancel);
  else s = mkdir_op(path("path"), flag("parents"));
  if (s.ok()) return {};
  if (cancelled(cancel)) return {1, b + ": cancelled"};
  return {1, b + ": " + s.error().message};
}

struct FileTask::Shared {
  std::atomic<bool> cancel{false};
  std::atomic<bool> finished{false};
  FileOutcome outcome;  // written by the helper thread before `finished`
  int efd = -1;
  ~Shared() {
    if (efd >= 0) ::close(efd);
  }
};

FileTask::FileTask(std::shared_ptr<Shared> shared) : shared_(std::move(shared)) {}

Result<std::unique_ptr<FileTask>> FileTask::start(std::string name, std::map<std::string, std::string> args,
                                                  std::string cwd) {
  auto shared = std::make_shared<Shared>();
  shared->efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (shared->efd < 0) return make_error(name + ": cannot create an eventfd: " + errno_code(errno).message());
  std::unique_ptr<FileTask> task(new FileTask(shared));
  try {
    task->thread_ = std::thread([shared, name, args = std::move(args), cwd = std::move(cwd)] {
      // Background work: the worker loop and ZeroMQ's I/O thread come first
      // when the cores are busy, so heartbeats keep their interval. (Linux:
      // the nice value is per thread. Best effort; on failure it stays 0.)
      (void)::setpriority(PRIO_PROCESS, static_cast<id_t>(::gettid()), kFileThreadNice);
      FileOutcome o;
      try {
        o = run_file_builtin(name, args, cwd, shared->cancel);
      } catch (const std::exception& e) {  // bad_alloc and the like: the step fails, the worker lives
        o = {1, name + ": " + e.what()};
      }
      shared->outcome = std::move(o);
      shared->finished.store(true, std::memory_order_release);
      uint64_t one = 1;
      [[maybe_unused]] ssize_t n = ::write(shared->efd, &one, sizeof one);
    });
  } catch (const std::system_error& e) {
    return make_error(name + ": cannot start a thread: " + e.what());
  }
  return task;
}

FileTask::~FileTask() {
  shared_->cancel.store(true, std::memory_order_relaxed);
  if (!thread_.joinable()) return;
  if (shared_->finished.load(std::memory_order_acquire)) thread_.join();
  else thread_.detach();
}

int FileTask::fd() const { return shared_->efd; }

bool FileTask::finished() const { return shared_->finished.load(std::memory_order_acquire); }

const FileOutcome& FileTask::outcome() const { return shared_->outcome; }

void FileTask::cancel() { shared_->cancel.store(true, std::memory_order_relaxed); }

}  // namespace zf
