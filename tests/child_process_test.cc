// Runs real processes. Every wait is bounded, so a broken runner fails a test
// instead of hanging the suite.
#include "worker/child_process.h"

#include <dirent.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <doctest/doctest.h>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "worker/output_tail.h"

namespace zf {
namespace {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

constexpr auto kTimeout = 10s;

std::unique_ptr<ChildProcess> must_spawn(const SpawnSpec& spec) {
  auto child = ChildProcess::spawn(spec);
  REQUIRE_MESSAGE(child.ok(), (child.ok() ? "" : child.error().message));
  return std::move(child).value();
}

int ms_left(Clock::time_point deadline) {
  const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

// Drives a child the way the worker loop does: poll both fds, read output,
// collect the exit, release the group. Returns nullopt on timeout.
std::optional<ExitStatus> run_to_end(ChildProcess& child, OutputTail& tail,
                                     std::chrono::milliseconds timeout = kTimeout) {
  const auto deadline = Clock::now() + timeout;
  std::optional<ExitStatus> status = child.try_reap();
  if (status) child.kill_leftovers();
  while (!status || child.output_fd() >= 0) {
    pollfd fds[2] = {{child.output_fd(), POLLIN, 0}, {child.pidfd(), POLLIN, 0}};
    const int left = ms_left(deadline);
    if (left == 0) return std::nullopt;
    if (::poll(fds, 2, left) < 0 && errno != EINTR) return std::nullopt;
    if (fds[0].revents != 0) child.read_output(tail);
    if (fds[1].revents != 0) {
      status = child.try_reap();
      if (status) child.kill_leftovers();
    }
  }
  return status;
}

// Reads output until it contains a full first line; used to learn the pid of
// a background child the step prints.
std::string read_first_line(ChildProcess& child, OutputTail& tail) {
  const auto deadline = Clock::now() + kTimeout;
  while (ms_left(deadline) > 0) {
    const std::string text = tail.str();
    const auto nl = text.find('\n');
    if (nl != std::string::npos) return text.substr(0, nl);
    pollfd fd = {child.output_fd(), POLLIN, 0};
    ::poll(&fd, 1, ms_left(deadline));
    if (!child.read_output(tail)) break;
  }
  return {};
}

// A killed process reparented to init may stay a zombie if init does not
// reap (as in some containers); a zombie runs nothing, so it counts as gone.
bool process_gone(int pid) {
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  if (!stat) return true;
  std::string line;
  std::getline(stat, line);
  const auto close_paren = line.rfind(')');
  if (close_paren == std::string::npos || close_paren + 2 >= line.size()) return true;
  const char state = line[close_paren + 2];
  return state == 'Z' || state == 'X';
}

bool wait_until_gone(int pid) {
  const auto deadline = Clock::now() + kTimeout;
  while (Clock::now() < deadline) {
    if (process_gone(pid)) return true;
    std::this_thread::sleep_for(10ms);
  }
  return false;
}

int count_open_fds() {
  int count = 0;
  DIR* dir = ::opendir("/proc/self/fd");
  REQUIRE(dir != nullptr);
  while (const dirent* entry = ::readdir(dir)) {
    if (entry->d_name[0] != '.') ++count;
  }
  ::closedir(dir);
  return count - 1;  // the directory's own fd
}

struct TempDir {
  TempDir() {
    char tmpl[] = "/tmp/zf_child_test_XXXXXX";
    REQUIRE(::mkdtemp(tmpl) != nullptr);
    path = tmpl;
  }
  ~TempDir() { ::rmdir(path.c_str()); }
  std::string path;
};

std::string seq_output(int last) {
  std::string out;
  for (int i = 1; i <= last; ++i) out += std::to_string(i) + "\n";
  return out;
}

}  // namespace

TEST_SUITE("output tail") {
  TEST_CASE("a tail smaller than its capacity keeps everything") {
    OutputTail tail(16);
    tail.append("hello ", 6);
    tail.append("world", 5);
    CHECK(tail.str() == "hello world");
    CHECK(tail.total() == 11);
    CHECK_FALSE(tail.truncated());
  }

  TEST_CASE("a full tail keeps only the last bytes, across wraps") {
    OutputTail tail(8);
    std::string all;
    for (int i = 0; i < 50; ++i) {
      const std::string piece = std::to_string(i) + ",";
      tail.append(piece.data(), piece.size());
      all += piece;
      CHECK(tail.str() == all.substr(all.size() > 8 ? all.size() - 8 : 0));
    }
    CHECK(tail.total() == all.size());
    CHECK(tail.truncated());
  }

  TEST_CASE("one chunk larger than the capacity leaves its own end") {
    OutputTail tail(4);
    tail.append("ab", 2);
    tail.append("0123456789", 10);
    CHECK(tail.str() == "6789");
    tail.append("x", 1);
    CHECK(tail.str() == "789x");
    CHECK(tail.total() == 13);
  }

  TEST_CASE("exactly the capacity is not truncated") {
    OutputTail tail(4);
    tail.append("abcd", 4);
    CHECK(tail.str() == "abcd");
    CHECK_FALSE(tail.truncated());
    tail.append("e", 1);
    CHECK(tail.str() == "bcde");
    CHECK(tail.truncated());
  }

  TEST_CASE("a zero-capacity tail only counts") {
    OutputTail tail(0);
    tail.append("abc", 3);
    CHECK(tail.str().empty());
    CHECK(tail.total() == 3);
    CHECK(tail.truncated());
  }
}

TEST_SUITE("child process") {
  TEST_CASE("true exits 0 and false exits 1") {
    OutputTail tail(1024);
    auto t = must_spawn({{"true"}, {}, {}});
    CHECK(run_to_end(*t, tail) == ExitStatus{0, 0});
    auto f = must_spawn({{"false"}, {}, {}});
    CHECK(run_to_end(*f, tail) == ExitStatus{1, 0});
    CHECK(tail.total() == 0);
  }

  TEST_CASE("a shell's exit code comes back as is") {
    OutputTail tail(1024);
    auto child = must_spawn({{"sh", "-c", "exit 7"}, {}, {}});
    CHECK(run_to_end(*child, tail) == ExitStatus{7, 0});
  }

  TEST_CASE("stdout and stderr arrive in one stream, in order") {
    OutputTail tail(1024);
    auto child = must_spawn({{"sh", "-c", "echo a; echo b >&2; echo c"}, {}, {}});
    CHECK(run_to_end(*child, tail) == ExitStatus{0, 0});
    CHECK(tail.str() == "a\nb\nc\n");
    CHECK(child->output_fd() == -1);
    CHECK(child->pidfd() == -1);
  }

  TEST_CASE("stdin is empty") {
    OutputTail tail(1024);
    auto child = must_spawn({{"sh", "-c", "cat; echo done"}, {}, {}});
    CHECK(run_to_end(*child, tail) == ExitStatus{0, 0});
    CHECK(tail.str() == "done\n");
  }

  TEST_CASE("arguments reach the program without a shell") {
    OutputTail tail(1024);
    auto child = must_spawn({{"printf", "%s|", "a b", "$HOME", "*"}, {}, {}});
    CHECK(run_to_end(*child, tail) == ExitStatus{0, 0});
    CHECK(tail.str() == "a b|$HOME|*|");
  }

  TEST_CASE("the spec's environment overrides and extends the worker's") {
    ::setenv("ZF_INHERITED", "from-worker", 1);
    ::setenv("ZF_OVERRIDDEN", "old", 1);
    OutputTail tail(1024);
    auto child = must_spawn({{"sh", "-c", "echo $ZF_X $ZF_INHERITED $ZF_OVERRIDDEN"},
                             {{"ZF_X", "x1"}, {"ZF_OVERRIDDEN", "first"}, {"ZF_OVERRIDDEN", "new"}},
                             {}});
    CHECK(run_to_end(*child, tail) == ExitStatus{0, 0});
    CHECK(tail.str() == "x1 from-worker new\n");
    ::unsetenv("ZF_INHERITED");
    ::unsetenv("ZF_OVERRIDDEN");
  }

  TEST_CASE("an invalid environment name is an error") {
    auto child = ChildProcess::spawn({{"true"}, {{"A=B", "c"}}, {}});
    REQUIRE_FALSE(child.ok());
    CHECK(child.error().message.find("'A=B'") != std::string::npos);
  }

  TEST_CASE("the working directory is honoured") {
    TempDir dir;
    OutputTail tail(1024);
    auto child = must_spawn({{"pwd"}, {}, dir.path});
    CHECK(run_to_end(*child, tail) == ExitStatus{0, 0});
    CHECK(tail.str() == dir.path + "\n");
  }

  TEST_CASE("a missing program is an error that names it") {
    auto child = ChildProcess::spawn({{"zf-nosuch-program"}, {}, {}});
    REQUIRE_FALSE(child.ok());
    CHECK(child.error().message ==
          "cannot run 'zf-nosuch-program': No such file or directory");
  }

  TEST_CASE("a file that is not executable is an error") {
    TempDir dir;
    const std::string file = dir.path + "/script";
    std::ofstream(file) << "echo hi\n";
    REQUIRE(::chmod(file.c_str(), 0644) == 0);
    auto child = ChildProcess::spawn({{file}, {}, {}});
    ::unlink(file.c_str());
    REQUIRE_FALSE(child.ok());
    CHECK(child.error().message == "cannot run '" + file + "': Permission denied");
  }

  TEST_CASE("a missing working directory is an error that names it") {
    auto child = ChildProcess::spawn({{"pwd"}, {}, "/nonexistent/zf-dir"});
    REQUIRE_FALSE(child.ok());
    CHECK(child.error().message ==
          "cannot run 'pwd': working directory '/nonexistent/zf-dir': No such file or directory");
  }

  TEST_CASE("a working directory that is a file is an error") {
    auto child = ChildProcess::spawn({{"pwd"}, {}, "/etc/hostname"});
    REQUIRE_FALSE(child.ok());
    CHECK(child.error().message ==
          "cannot run 'pwd': working directory '/etc/hostname': Not a directory");
  }

  TEST_CASE("an empty command is an error") {
    auto child = ChildProcess::spawn({{}, {}, {}});
    REQUIRE_FALSE(child.ok());
    CHECK(child.error().message == "cannot run an empty command");
  }

  TEST_CASE("a large output keeps only the tail but counts every byte") {
    OutputTail tail(64 * 1024);
    auto child = must_spawn({{"seq", "1", "200000"}, {}, {}});
    CHECK(run_to_end(*child, tail) == ExitStatus{0, 0});
    const std::string expected = seq_output(200000);
    CHECK(tail.total() == expected.size());
    CHECK(tail.truncated());
    CHECK(tail.str() == expected.substr(expected.size() - 64 * 1024));
  }

  TEST_CASE("a signal that ends the child shows as 128 + signal") {
    OutputTail tail(1024);
    auto child = must_spawn({{"sh", "-c", "kill -TERM $$; sleep 5"}, {}, {}});
    CHECK(run_to_end(*child, tail) == ExitStatus{128 + SIGTERM, SIGTERM});
  }

  TEST_CASE("the child starts with no blocked or ignored signals") {
    sigset_t block;
    sigset_t old_mask;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    REQUIRE(::sigprocmask(SIG_BLOCK, &block, &old_mask) == 0);
    struct sigaction ignore {};
    struct sigaction old_pipe {};
    ignore.sa_handler = SIG_IGN;
    REQUIRE(::sigaction(SIGPIPE, &ignore, &old_pipe) == 0);

    OutputTail tail(1024);
    auto term = must_spawn({{"sh", "-c", "kill -TERM $$; sleep 5"}, {}, {}});
    // With SIGPIPE ignored, yes would complain of a broken pipe.
    auto pipe = must_spawn({{"sh", "-c", "yes | head -n 1"}, {}, {}});

    ::sigaction(SIGPIPE, &old_pipe, nullptr);
    ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);

    CHECK(run_to_end(*term, tail) == ExitStatus{128 + SIGTERM, SIGTERM});
    CHECK(run_to_end(*pipe, tail) == ExitStatus{0, 0});
    CHECK(tail.str() == "y\n");
  }

  TEST_CASE("signal_group reaches the shell and its background child") {
    OutputTail tail(1024);
    auto child = must_spawn({{"sh", "-c", "sleep 30 & echo $!; sleep 30; wait"}, {}, {}});
    const std::string line = read_first_line(*child, tail);
    REQUIRE_FALSE(line.empty());
    const int grandchild = std::stoi(line);
    CHECK_FALSE(process_gone(grandchild));

    child->signal_group(SIGKILL);
    CHECK(run_to_end(*child, tail) == ExitStatus{128 + SIGKILL, SIGKILL});
    CHECK(process_gone(child->pid()));
    CHECK(wait_until_gone(grandchild));
  }

  TEST_CASE("kill_leftovers ends what the step left running") {
    OutputTail tail(1024);
    // The background sleep keeps the output pipe open after the shell exits,
    // so EOF comes only once it is gone.
    auto child = must_spawn({{"sh", "-c", "sleep 30 & echo $!"}, {}, {}});
    const std::string line = read_first_line(*child, tail);
    REQUIRE_FALSE(line.empty());
    const int grandchild = std::stoi(line);

    const auto deadline = Clock::now() + kTimeout;
    std::optional<ExitStatus> status;
    while (!status && ms_left(deadline) > 0) {
      pollfd fd = {child->pidfd(), POLLIN, 0};
      ::poll(&fd, 1, ms_left(deadline));
      status = child->try_reap();
    }
    REQUIRE(status == ExitStatus{0, 0});
    CHECK(child->try_reap() == status);  // repeated calls agree
    CHECK(child->output_fd() >= 0);
    CHECK_FALSE(process_gone(grandchild));

    child->kill_leftovers();
    CHECK(wait_until_gone(grandchild));
    CHECK(run_to_end(*child, tail) == ExitStatus{0, 0});
    CHECK(child->output_fd() == -1);
  }

  TEST_CASE("destroying a running child leaves no process behind") {
    OutputTail tail(1024);
    auto child = must_spawn({{"sh", "-c", "sleep 30 & echo $!; sleep 30"}, {}, {}});
    const std::string line = read_first_line(*child, tail);
    REQUIRE_FALSE(line.empty());
    const int grandchild = std::stoi(line);
    const int leader = child->pid();

    const auto start = Clock::now();
    child.reset();
    CHECK(Clock::now() - start < 5s);
    CHECK(process_gone(leader));
    CHECK(wait_until_gone(grandchild));
  }

  TEST_CASE("destroying an exited child releases its zombie") {
    OutputTail tail(1024);
    auto child = must_spawn({{"true"}, {}, {}});
    const int pid = child->pid();
    const auto deadline = Clock::now() + kTimeout;
    while (!child->try_reap() && ms_left(deadline) > 0) {
      pollfd fd = {child->pidfd(), POLLIN, 0};
      ::poll(&fd, 1, ms_left(deadline));
    }
    child.reset();
    CHECK(::kill(pid, 0) == -1);
  }

  TEST_CASE("a child inherits none of the worker's fds") {
    OutputTail tail(1024);
    auto other = must_spawn({{"sleep", "30"}, {}, {}});
    struct stat other_pipe {};
    REQUIRE(::fstat(other->output_fd(), &other_pipe) == 0);

    auto child = must_spawn({{"ls", "-l", "/proc/self/fd"}, {}, {}});
    CHECK(run_to_end(*child, tail) == ExitStatus{0, 0});
    const std::string listing = tail.str();
    INFO(listing);
    CHECK(listing.find("pipe:[" + std::to_string(other_pipe.st_ino) + "]") == std::string::npos);
    CHECK(listing.find("pidfd") == std::string::npos);
    CHECK(listing.find(" 3 -> ") != std::string::npos);   // ls's own directory
    CHECK(listing.find(" 4 -> ") == std::string::npos);
  }

  // The PATH search happens in the child spawn() clones, as execvp does it
  // (docs/source-map.md: worker/child_process.*).
  TEST_CASE("a program is taken from the first PATH directory where it can run") {
    TempDir first;
    TempDir second;
    const std::string locked = first.path + "/zf-path-probe";
    const std::string usable = second.path + "/zf-path-probe";
    std::ofstream(locked) << "#!/bin/sh\necho first\n";
    std::ofstream(usable) << "#!/bin/sh\necho second\n";
    REQUIRE(::chmod(locked.c_str(), 0644) == 0);
    REQUIRE(::chmod(usable.c_str(), 0755) == 0);
    const std::string old_path = ::getenv("PATH") != nullptr ? ::getenv("PATH") : "";
    REQUIRE(::setenv("PATH", (first.path + ":" + second.path + ":" + old_path).c_str(), 1) == 0);
    auto found = ChildProcess::spawn({{"zf-path-probe"}, {}, {}});
    REQUIRE(::setenv("PATH", (first.path + ":" + old_path).c_str(), 1) == 0);
    auto denied = ChildProcess::spawn({{"zf-path-probe"}, {}, {}});
    ::setenv("PATH", old_path.c_str(), 1);
    OutputTail tail(1024);
    if (found.ok()) CHECK(run_to_end(*found.value(), tail) == ExitStatus{0, 0});
    ::unlink(locked.c_str());
    ::unlink(usable.c_str());

    REQUIRE(found.ok());
    CHECK(tail.str() == "second\n");
    REQUIRE_FALSE(denied.ok());
    CHECK(denied.error().message == "cannot run 'zf-path-probe': Permission denied");
  }

  TEST_CASE("an empty PATH entry is the working directory") {
    TempDir dir;
    const std::string script = dir.path + "/zf-here";
    std::ofstream(script) << "#!/bin/sh\necho here\n";
    REQUIRE(::chmod(script.c_str(), 0755) == 0);
    const std::string old_path = ::getenv("PATH") != nullptr ? ::getenv("PATH") : "";
    REQUIRE(::setenv("PATH", (":" + old_path).c_str(), 1) == 0);
    auto child = ChildProcess::spawn({{"zf-here"}, {}, dir.path});
    ::setenv("PATH", old_path.c_str(), 1);
    OutputTail tail(1024);
    if (child.ok()) CHECK(run_to_end(*child.value(), tail) == ExitStatus{0, 0});
    ::unlink(script.c_str());
    REQUIRE(child.ok());
    CHECK(tail.str() == "here\n");
  }

  // The child runs on a small stack of its own: argv and the environment
  // must not be copied onto it.
  TEST_CASE("a long argument list and environment reach the program") {
    SpawnSpec spec{{"sh", "-c", "echo $# ${#ZF_BIG}", "sh"}, {{"ZF_BIG", std::string(100 * 1024, 'x')}}, {}};
    for (int i = 0; i < 20000; ++i) spec.argv.push_back("argument-" + std::to_string(i));
    OutputTail tail(1024);
    auto child = must_spawn(spec);
    CHECK(run_to_end(*child, tail) == ExitStatus{0, 0});
    CHECK(tail.str() == "20000 102400\n");
  }

  // Each spawning thread has its own child stack.
  TEST_CASE("several threads can spawn at once") {
    std::vector<std::thread> threads;
    std::vector<int> ok(4, 0);
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([t, &ok] {
        for (int i = 0; i < 25; ++i) {
          auto child = ChildProcess::spawn({{"sh", "-c", "echo " + std::to_string(t)}, {}, {}});
          if (!child.ok()) continue;
          OutputTail tail(64);
          if (run_to_end(*child.value(), tail) == ExitStatus{0, 0} && tail.str() == std::to_string(t) + "\n") ++ok[t];
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(ok == std::vector<int>{25, 25, 25, 25});
  }

  // The pidfd comes with the process (CLONE_PIDFD): even a child reaped by
  // someone else at once (SIGCHLD ignored) is spawned, and reports its
  // status as lost. (With posix_spawn and then pidfd_open, a few in fifty
  // failed: the child was gone before its pidfd was opened.)
  TEST_CASE("with SIGCHLD ignored a child still spawns and its status is lost") {
    struct sigaction ignore {};
    struct sigaction old_chld {};
    ignore.sa_handler = SIG_IGN;
    REQUIRE(::sigaction(SIGCHLD, &ignore, &old_chld) == 0);
    int spawned = 0;
    int lost = 0;
    for (int i = 0; i < 50; ++i) {
      auto child = ChildProcess::spawn({{"true"}, {}, {}});
      if (!child.ok()) continue;
      ++spawned;
      OutputTail tail(64);
      if (run_to_end(*child.value(), tail) == ExitStatus{-1, 0}) ++lost;
    }
    ::sigaction(SIGCHLD, &old_chld, nullptr);
    CHECK(spawned == 50);
    CHECK(lost == 50);
  }

  // A worker started with stdout and stderr closed: the pipe's write end may
  // then be fd 1 or 2 itself, and must still reach the child on both.
  TEST_CASE("output arrives when the worker runs with stdout and stderr closed") {
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
      ::close(1);
      ::close(2);
      auto child = ChildProcess::spawn({{"sh", "-c", "echo out; echo err >&2"}, {}, {}});
      if (!child.ok()) ::_exit(2);
      OutputTail tail(1024);
      const bool good = run_to_end(*child.value(), tail) == ExitStatus{0, 0} && tail.str() == "out\nerr\n";
      ::_exit(good ? 0 : 1);
    }
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }

  TEST_CASE("spawning, running and destroying children leaks no fds") {
    const int before = count_open_fds();
    {
      OutputTail tail(1024);
      auto done = must_spawn({{"sh", "-c", "echo hi"}, {}, {}});
      CHECK(run_to_end(*done, tail) == ExitStatus{0, 0});
      auto running = must_spawn({{"sleep", "30"}, {}, {}});
      auto exited = must_spawn({{"true"}, {}, {}});
      CHECK_FALSE(ChildProcess::spawn({{"zf-nosuch-program"}, {}, {}}).ok());
      CHECK_FALSE(ChildProcess::spawn({{"true"}, {}, "/nonexistent"}).ok());
    }
    CHECK(count_open_fds() == before);
  }
}

}  // namespace zf
