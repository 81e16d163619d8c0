// The builtin steps: the argument table and its checks in the loader, each
// file builtin's success and error cases on a temp folder, and how an
// Execution runs a file builtin off the worker loop.
#include <doctest/doctest.h>

#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "common/builtins.h"
#include "common/job_loader.h"
#include "worker/execution.h"
#include "worker/file_builtins.h"

using namespace zf;
namespace fs = std::filesystem;

namespace {

// A fresh folder, removed with everything in it at the end of the test.
struct TempDir {
  explicit TempDir(const std::string& parent = fs::temp_directory_path().string()) {
    std::string tmpl = parent + "/zf-builtins-XXXXXX";
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
  std::string operator/(const std::string& rel) const { return (path / rel).string(); }
  fs::path path;
};

void write(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

bool exists(const std::string& path) {
  std::error_code ec;
  return fs::exists(fs::symlink_status(path, ec));
}

// The names in a folder: shows that no temporary file was left behind.
std::set<std::string> names_in(const fs::path& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

FileOutcome run(std::string_view name, const std::map<std::string, std::string>& args, const std::string& cwd = "") {
  std::atomic<bool> cancel{false};
  return run_file_builtin(name, args, cwd, cancel);
}

std::string load_error(const std::string& toml) {
  auto j = parse_job(toml, "jobs/x.toml");
  REQUIRE_MESSAGE(!j.ok(), "expected an error for:\n" << toml);
  return j.error().message;
}

}  // namespace

TEST_CASE("the table lists every builtin with typed arguments and safe defaults") {
  std::vector<std::string> names;
  for (const auto& b : all_builtins()) names.emplace_back(b.name);
  CHECK(names == std::vector<std::string>{"noop", "echo", "sleep", "copy", "move", "delete", "mkdir"});
  const BuiltinSpec* copy = find_builtin("copy");
  REQUIRE(copy != nullptr);
  CHECK(copy->arg_names() == "from, to, overwrite, recursive");
  CHECK(find_builtin("rm") == nullptr);

  auto a = resolve_builtin_args(*copy, {{"from", "a"}, {"to", "b"}});
  REQUIRE(a.ok());
  CHECK(a->at("overwrite") == "false");
  CHECK(a->at("recursive") == "false");
  CHECK(resolve_builtin_args(*find_builtin("mkdir"), {{"path", "d"}})->at("parents") == "true");
  auto del = resolve_builtin_args(*find_builtin("delete"), {{"path", "d"}});
  CHECK(del->at("recursive") == "false");
  CHECK(del->at("missing_ok") == "false");

  CHECK(resolve_builtin_args(*copy, {{"from", "a"}}).error().message == "argument 'to' is missing");
  CHECK(resolve_builtin_args(*copy, {{"from", ""}, {"to", "b"}}).error().message ==
        "argument 'from': expected a path, not an empty string");
  CHECK(resolve_builtin_args(*copy, {{"from", "a"}, {"to", "b"}, {"overwrite", "yes"}}).error().message ==
        "argument 'overwrite': expected \"true\" or \"false\", not 'yes'");
  CHECK(resolve_builtin_args(*copy, {{"from", "a"}, {"to", "b"}, {"force", "true"}}).error().message ==
        "unknown argument 'force' (allowed: from, to, overwrite, recursive)");
}

TEST_CASE("job files with file builtins load, TOML booleans read as flags, bad arguments are refused at put") {
  auto j = parse_job(R"(
name = "files"
[params.dir]
[params.ow]
default = "false"
[[steps]]
builtin = "mkdir"
path = "{{dir}}/out"
[[steps]]
builtin = "copy"
from = "in.txt"
to = "{{dir}}/out/"
overwrite = true
recursive = false
cwd = "{{dir}}"
[[steps]]
builtin = "move"
from = "{{dir}}/out/in.txt"
to = "{{dir}}/out/done.txt"
overwrite = "{{ow}}"
[[steps]]
builtin = "delete"
path = "{{dir}}/out"
recursive = "true"
missing_ok = true
)",
                     "files.toml");
  REQUIRE_MESSAGE(j.ok(), j.error().message);
  CHECK(j->steps[1].args.at("overwrite") == "true");
  CHECK(j->steps[1].args.at("recursive") == "false");
  auto r = resolve_instance(*j, {{"dir", "/srv"}, {"ow", "maybe"}});
  REQUIRE(r.ok());
  CHECK(r->steps[0].args.at("path") == "/srv/out");
  CHECK(r->steps[1].cwd == "/srv");
  // A template is checked once substituted: by the worker, exit code 2.
  auto bad = run(r->steps[2].builtin, r->steps[2].args);
  CHECK(bad.exit_code == 2);
  CHECK(bad.error == "move: argument 'overwrite': expected \"true\" or \"false\", not 'maybe'");

  const std::string head = "name = \"x\"\n[[steps]]\n";
  CHECK(load_error(head + "builtin = \"copy\"\nfrom = \"a\"\nto = \"b\"\noverwrite = \"yes\"\n")
            .find("jobs/x.toml:6:13: field 'steps[0].overwrite': expected \"true\" or \"false\", not 'yes'") !=
        std::string::npos);
  CHECK(load_error(head + "builtin = \"delete\"\npath = \"\"\n")
            .find("field 'steps[0].path': expected a path, not an empty string") != std::string::npos);
  CHECK(load_error(head + "builtin = \"copy\"\nfrom = \"a\"\n").find("field 'steps[0]': builtin 'copy' needs 'to'") !=
        std::string::npos);
  CHECK(load_error(head + "builtin = \"copy\"\nfrom = \"a\"\nto = \"b\"\nforce = true\n")
            .find("field 'steps[0].force': unknown argument for builtin 'copy' (allowed: from, to, overwrite, "
                  "recursive)") != std::string::npos);
  CHECK(load_error(head + "builtin = \"mkdir\"\npath = \"d\"\nparents = 1.5\n")
            .find("field 'steps[0].parents': expected a string") != std::string::npos);
  CHECK(load_error(head + "builtin = \"sleep\"\nduration = \"soon\"\n")
            .find("field 'steps[0].duration': invalid duration 'soon'") != std::string::npos);
}

TEST_CASE("mkdir creates a folder with its parents, and is fine when it exists") {
  TempDir t;
  auto r = run("mkdir", {{"path", t / "a/b/c"}});
  CHECK(r.exit_code == 0);
  CHECK(r.error == "");
  CHECK(fs::is_directory(t / "a/b/c"));
  CHECK(run("mkdir", {{"path", t / "a/b/c"}}).exit_code == 0);  // like mkdir -p
  CHECK(run("mkdir", {{"path", t / "a/b/d/"}}).exit_code == 0);  // a trailing '/' is fine
  CHECK(fs::is_directory(t / "a/b/d"));
}

TEST_CASE("mkdir with parents = false wants the parent and refuses an existing folder") {
  TempDir t;
  auto missing = run("mkdir", {{"path", t / "no/d"}, {"parents", "false"}});
  CHECK(missing.exit_code == 1);
  CHECK(missing.error == "mkdir: cannot create directory '" + t / "no/d" + "': No such file or directory");
  CHECK(run("mkdir", {{"path", t / "d"}, {"parents", "false"}}).exit_code == 0);
  CHECK(fs::is_directory(t / "d"));
  auto again = run("mkdir", {{"path", t / "d"}, {"parents", "false"}});
  CHECK(again.exit_code == 1);
  CHECK(again.error == "mkdir: cannot create directory '" + t / "d" + "': File exists");
}

TEST_CASE("mkdir refuses a path held by a file, or below one") {
  TempDir t;
  write(t / "f", "x");
  CHECK(run("mkdir", {{"path", t / "f"}}).error == "mkdir: cannot create directory '" + t / "f" + "': File exists");
  auto below = run("mkdir", {{"path", t / "f/sub"}});
  CHECK(below.exit_code == 1);
  CHECK(below.error == "mkdir: cannot create directory '" + t / "f/sub" + "': Not a directory");
  CHECK(read(t / "f") == "x");
}

TEST_CASE("copy copies a file's bytes and permissions and leaves the source") {
  TempDir t;
  std::string big(3 * 1024 * 1024 + 17, '\0');
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<char>(i * 31 % 251);
  write(t / "a.bin", big);
  fs::permissions(t / "a.bin", fs::perms::owner_read | fs::perms::owner_write | fs::perms::owner_exec);
  auto r = run("copy", {{"from", t / "a.bin"}, {"to", t / "b.bin"}});
  CHECK(r.exit_code == 0);
  CHECK(r.error == "");
  CHECK(read(t / "b.bin") == big);
  CHECK(read(t / "a.bin") == big);
  CHECK((fs::status(t / "b.bin").permissions() & fs::perms::owner_exec) != fs::perms::none);
  CHECK(names_in(t.path) == std::set<std::string>{"a.bin", "b.bin"});
}

TEST_CASE("copy into an existing folder, or to a path ending in '/', keeps the file's name") {
  TempDir t;
  write(t / "a.txt", "hello");
  fs::create_directory(t / "out");
  CHECK(run("copy", {{"from", t / "a.txt"}, {"to", t / "out"}}).exit_code == 0);
  CHECK(read(t / "out/a.txt") == "hello");
  auto r = run("copy", {{"from", t / "a.txt"}, {"to", t / "nowhere/"}});
  CHECK(r.exit_code == 1);
  CHECK(r.error == "copy: cannot copy '" + t / "a.txt" + "' to '" + t / "nowhere/a.txt" +
                       "': No such file or directory");
}

TEST_CASE("relative paths are taken relative to the step's cwd") {
  TempDir t;
  fs::create_directory(t / "work");
  write(t / "work/in.txt", "data");
  CHECK(run("mkdir", {{"path", "sub"}}, t / "work").exit_code == 0);
  CHECK(run("copy", {{"from", "in.txt"}, {"to", "sub/out.txt"}}, t / "work").exit_code == 0);
  CHECK(read(t / "work/sub/out.txt") == "data");
  auto r = run("copy", {{"from", "missing.txt"}, {"to", "x"}}, t / "work");
  CHECK(r.error == "copy: cannot copy '" + t / "work/missing.txt" + "' to '" + t / "work/x" +
                       "': No such file or directory");
}

TEST_CASE("copy of a missing file names both paths and the reason") {
  TempDir t;
  auto r = run("copy", {{"from", t / "missing"}, {"to", t / "b"}});
  CHECK(r.exit_code == 1);
  CHECK(r.error == "copy: cannot copy '" + t / "missing" + "' to '" + t / "b" + "': No such file or directory");
  CHECK_FALSE(exists(t / "b"));
}

TEST_CASE("copy keeps an existing target unless overwrite is true") {
  TempDir t;
  write(t / "a", "new");
  write(t / "b", "old");
  auto r = run("copy", {{"from", t / "a"}, {"to", t / "b"}});
  CHECK(r.exit_code == 1);
  CHECK(r.error == "copy: cannot copy '" + t / "a" + "' to '" + t / "b" +
                       "': File exists (set overwrite = \"true\" to replace it)");
  CHECK(read(t / "b") == "old");
  CHECK(run("copy", {{"from", t / "a"}, {"to", t / "b"}, {"overwrite", "true"}}).exit_code == 0);
  CHECK(read(t / "b") == "new");
  CHECK(names_in(t.path) == std::set<std::string>{"a", "b"});
}

TEST_CASE("copy refuses a file onto itself and a file over a folder") {
  TempDir t;
  write(t / "a", "x");
  auto same = run("copy", {{"from", t / "a"}, {"to", t / "a"}, {"overwrite", "true"}});
  CHECK(same.error == "copy: cannot copy '" + t / "a" + "' to '" + t / "a" + "': they are the same file");
  auto into_own_folder = run("copy", {{"from", t / "a"}, {"to", t.path.string()}, {"overwrite", "true"}});
  CHECK(into_own_folder.error == "copy: cannot copy '" + t / "a" + "' to '" + t / "a" + "': they are the same file");
  fs::create_directories(t / "e/a");
  auto r = run("copy", {{"from", t / "a"}, {"to", t / "e"}, {"overwrite", "true"}});
  CHECK(r.error == "copy: cannot copy '" + t / "a" + "' to '" + t / "e/a" + "': Is a directory");
}

TEST_CASE("copy of a folder needs recursive = true, then copies the tree with symlinks as symlinks") {
  TempDir t;
  fs::create_directories(t / "src/sub/deeper");
  write(t / "src/top.txt", "top");
  write(t / "src/sub/deeper/leaf.txt", "leaf");
  fs::create_symlink("top.txt", t / "src/link");
  auto r = run("copy", {{"from", t / "src"}, {"to", t / "dst"}});
  CHECK(r.exit_code == 1);
  CHECK(r.error == "copy: cannot copy '" + t / "src" + "' to '" + t / "dst" +
                       "': Is a directory (set recursive = \"true\" to copy a directory with its contents)");
  CHECK_FALSE(exists(t / "dst"));

  CHECK(run("copy", {{"from", t / "src"}, {"to", t / "dst"}, {"recursive", "true"}}).exit_code == 0);
  CHECK(read(t / "dst/top.txt") == "top");
  CHECK(read(t / "dst/sub/deeper/leaf.txt") == "leaf");
  CHECK(fs::is_symlink(t / "dst/link"));
  CHECK(fs::read_symlink(t / "dst/link") == "top.txt");

  // dst is now a folder: like cp -r, a second copy goes into it under its own name.
  CHECK(run("copy", {{"from", t / "src/"}, {"to", t / "dst"}, {"recursive", "true"}}).exit_code == 0);
  CHECK(read(t / "dst/src/sub/deeper/leaf.txt") == "leaf");

  // A third finds dst/src there: refused, or merged with overwrite = true.
  write(t / "dst/src/top.txt", "changed");
  write(t / "dst/src/extra.txt", "mine");
  auto again = run("copy", {{"from", t / "src"}, {"to", t / "dst"}, {"recursive", "true"}});
  CHECK(again.error == "copy: cannot copy '" + t / "src" + "' to '" + t / "dst/src" +
                           "': File exists (set overwrite = \"true\" to replace it)");
  CHECK(read(t / "dst/src/top.txt") == "changed");
  CHECK(run("copy", {{"from", t / "src"}, {"to", t / "dst"}, {"recursive", "true"}, {"overwrite", "true"}})
            .exit_code == 0);
  CHECK(read(t / "dst/src/top.txt") == "top");
  CHECK(read(t / "dst/src/extra.txt") == "mine");
  CHECK(names_in(t / "dst/src") == std::set<std::string>{"extra.txt", "link", "sub", "top.txt"});
}

TEST_CASE("copy refuses to copy a folder into itself") {
  TempDir t;
  fs::create_directories(t / "d/inner");
  auto r = run("copy", {{"from", t / "d"}, {"to", t / "d/inner/copy"}, {"recursive", "true"}});
  CHECK(r.exit_code == 1);
  CHECK(r.error == "copy: cannot copy '" + t / "d" + "' to '" + t / "d/inner/copy" +
                       "': cannot copy a directory into itself");
  CHECK_FALSE(exists(t / "d/inner/copy"));
}

TEST_CASE("a cancelled copy fails as cancelled and leaves no file behind") {
  TempDir t;
  write(t / "a", std::string(1 << 20, 'x'));
  std::atomic<bool> cancel{true};
  auto r = run_file_builtin("copy", {{"from", t / "a"}, {"to", t / "b"}}, "", cancel);
  CHECK(r.exit_code == 1);
  CHECK(r.error == "copy: cancelled");
  CHECK(names_in(t.path) == std::set<std::string>{"a"});
}

TEST_CASE("move renames a file, into a folder too, and the source is gone") {
  TempDir t;
  write(t / "a", "A");
  CHECK(run("move", {{"from", t / "a"}, {"to", t / "b"}}).exit_code == 0);
  CHECK_FALSE(exists(t / "a"));
  CHECK(read(t / "b") == "A");
  fs::create_directory(t / "d");
  CHECK(run("move", {{"from", t / "b"}, {"to", t / "d"}}).exit_code == 0);
  CHECK(read(t / "d/b") == "A");
  CHECK(run("move", {{"from", t / "d"}, {"to", t / "e"}}).exit_code == 0);  // folders need no flag
  CHECK(read(t / "e/b") == "A");
}

TEST_CASE("move keeps an existing target unless overwrite is true") {
  TempDir t;
  write(t / "a", "new");
  write(t / "b", "old");
  auto r = run("move", {{"from", t / "a"}, {"to", t / "b"}});
  CHECK(r.exit_code == 1);
  CHECK(r.error == "move: cannot move '" + t / "a" + "' to '" + t / "b" +
                       "': File exists (set overwrite = \"true\" to replace it)");
  CHECK(read(t / "a") == "new");
  CHECK(read(t / "b") == "old");
  CHECK(run("move", {{"from", t / "a"}, {"to", t / "b"}, {"overwrite", "true"}}).exit_code == 0);
  CHECK(read(t / "b") == "new");
  CHECK_FALSE(exists(t / "a"));
}

TEST_CASE("move errors: a missing source, a folder into itself, a folder over a non-empty one") {
  TempDir t;
  auto missing = run("move", {{"from", t / "nope"}, {"to", t / "b"}});
  CHECK(missing.error == "move: cannot move '" + t / "nope" + "' to '" + t / "b" + "': No such file or directory");
  fs::create_directories(t / "d/sub");
  auto self = run("move", {{"from", t / "d"}, {"to", t / "d/sub/x"}});
  CHECK(self.error == "move: cannot move '" + t / "d" + "' to '" + t / "d/sub/x" +
                          "': cannot move a directory into itself");
  CHECK(fs::is_directory(t / "d/sub"));
  fs::create_directories(t / "g/x");
  fs::create_directories(t / "h/g/y");
  // h is a folder: g goes into it, where h/g is in the way.
  auto not_empty = run("move", {{"from", t / "g"}, {"to", t / "h"}, {"overwrite", "true"}});
  CHECK(not_empty.error == "move: cannot move '" + t / "g" + "' to '" + t / "h/g" + "': Directory not empty");
}

TEST_CASE("move across file systems copies, then removes the source, times kept") {
  std::error_code ec;
  if (!fs::is_directory("/dev/shm", ec)) {
    MESSAGE("no /dev/shm: the cross-file-system move is not tested here");
    return;
  }
  TempDir other("/dev/shm");
  TempDir t;
  struct stat a{}, b{};
  REQUIRE(::stat(other.path.c_str(), &a) == 0);
  REQUIRE(::stat(t.path.c_str(), &b) == 0);
  if (a.st_dev == b.st_dev) {
    MESSAGE("/dev/shm and the temp folder share a file system: the cross-file-system move is not tested here");
    return;
  }
  write(other / "f.txt", "across");
  fs::create_directories(other / "tree/sub");
  write(other / "tree/sub/leaf", "leaf");
  fs::create_symlink("sub/leaf", other / "tree/link");
  auto old_time = fs::last_write_time(other / "f.txt") - std::chrono::hours(24);
  fs::last_write_time(other / "f.txt", old_time);

  CHECK(run("move", {{"from", other / "f.txt"}, {"to", t / "f.txt"}}).exit_code == 0);
  CHECK(read(t / "f.txt") == "across");
  CHECK_FALSE(exists(other / "f.txt"));
  CHECK(fs::last_write_time(t / "f.txt") == old_time);

  auto r = run("move", {{"from", other / "tree"}, {"to", t.path.string() + "/"}});
  CHECK(r.error == "");
  CHECK(read(t / "tree/sub/leaf") == "leaf");
  CHECK(fs::read_symlink(t / "tree/link") == "sub/leaf");
  CHECK_FALSE(exists(other / "tree"));
  CHECK(names_in(t.path) == std::set<std::string>{"f.txt", "tree"});

  // A target that exists stops the move before anything is copied.
  write(other / "g", "g");
  write(t / "g", "mine");
  auto kept = run("move", {{"from", other / "g"}, {"to", t / "g"}});
  CHECK(kept.error.find("File exists") != std::string::npos);
  CHECK(read(other / "g") == "g");
  CHECK(read(t / "g") == "mine");
}

TEST_CASE("delete removes a file; a missing path is an error unless missing_ok") {
  TempDir t;
  write(t / "f", "x");
  CHECK(run("delete", {{"path", t / "f"}}).exit_code == 0);
  CHECK_FALSE(exists(t / "f"));
  auto again = run("delete", {{"path", t / "f"}});
  CHECK(again.exit_code == 1);
  CHECK(again.error == "delete: cannot delete '" + t / "f" + "': No such file or directory");
  CHECK(run("delete", {{"path", t / "f"}, {"missing_ok", "true"}}).exit_code == 0);
}

TEST_CASE("delete of a folder needs recursive = true and never follows a symlink") {
  TempDir t;
  fs::create_directories(t / "d/sub");
  write(t / "d/sub/f", "x");
  fs::create_directories(t / "keep");
  write(t / "keep/precious", "p");
  fs::create_directory_symlink(t / "keep", t / "d/link");
  auto r = run("delete", {{"path", t / "d"}});
  CHECK(r.exit_code == 1);
  CHECK(r.error == "delete: cannot delete '" + t / "d" +
                       "': Is a directory (set recursive = \"true\" to delete a directory with its contents)");
  CHECK(exists(t / "d/sub/f"));
  CHECK(run("delete", {{"path", t / "d"}, {"recursive", "true"}}).exit_code == 0);
  CHECK_FALSE(exists(t / "d"));
  CHECK(read(t / "keep/precious") == "p");

  // "link/" names the link, not what it points to.
  fs::create_directory_symlink(t / "keep", t / "link2");
  CHECK(run("delete", {{"path", t / "link2/"}, {"recursive", "true"}}).exit_code == 0);
  CHECK_FALSE(exists(t / "link2"));
  CHECK(read(t / "keep/precious") == "p");
}

TEST_CASE("delete refuses the root, '.', '..' and an empty path") {
  TempDir t;
  for (std::string p : {"/", "//", "/tmp/..", "/./"}) {
    auto r = run("delete", {{"path", p}, {"recursive", "true"}, {"missing_ok", "true"}});
    CHECK(r.exit_code == 1);
    CHECK_MESSAGE(r.error.rfind("delete: refusing to delete '", 0) == 0, p << ": " << r.error);
  }
  CHECK(run("delete", {{"path", "/"}, {"recursive", "true"}}).error ==
        "delete: refusing to delete '/' (the root directory)");
  auto dot = run("delete", {{"path", "."}, {"recursive", "true"}}, t.path.string());
  CHECK(dot.error == "delete: refusing to delete '" + t / "." + "': it ends in '.' or '..'");
  auto empty = run("delete", {{"path", ""}});
  CHECK(empty.exit_code == 2);
  CHECK(empty.error == "delete: argument 'path': expected a path, not an empty string");
  CHECK(fs::exists(t.path));
}

TEST_CASE("a file builtin runs off the worker loop: the step works until its fd is readable") {
  TempDir t;
  write(t / "in.txt", "payload");
  proto::Assign a;
  a.instance = 7;
  a.attempt = 1;
  a.job = "files";
  a.steps = {
      {"mk", "builtin", {}, "mkdir", {{"path", "out"}}, {}, t.path.string(), 0},
      {"cp", "builtin", {}, "copy", {{"from", "in.txt"}, {"to", "out/"}}, {}, t.path.string(), 60000},
      {"say", "builtin", {}, "echo", {{"text", "copied"}}, {}, "", 0},
      {"cp2", "builtin", {}, "copy", {{"from", "missing.txt"}, {"to", "out/"}}, {}, t.path.string(), 0},
      {"never", "builtin", {}, "mkdir", {{"path", "never"}}, {}, t.path.string(), 0},
  };
  auto now = Clock::now();
  Execution ex(a, ExecutionConfig{}, now);
  ex.advance(now);
  // Only advance() moves the phase, so the step is seen working whatever the thread did.
  CHECK(ex.phase() == Execution::Phase::Working);
  CHECK(ex.deadline() == std::nullopt);  // mkdir has no timeout
  int turns = 0;
  bool saw_copy_deadline = false;
  while (!ex.done() && turns++ < 1000) {
    std::vector<zmq::pollitem_t> items;
    ex.add_poll_items(items);
    REQUIRE(items.size() == 1);  // the FileTask's eventfd
    // The loop is woken by the eventfd, not by a timer.
    CHECK(zmq::poll(items.data(), items.size(), std::chrono::milliseconds(10000)) == 1);
    ex.advance(now);
    if (ex.phase() == Execution::Phase::Working && ex.deadline() == now + std::chrono::milliseconds(60000))
      saw_copy_deadline = true;
  }
  REQUIRE(ex.done());
  CHECK(saw_copy_deadline);
  auto f = ex.result();
  CHECK(f.status == "failed");
  CHECK(f.exit_code == 1);
  CHECK(f.failed_step == 3);
  CHECK(f.error == "step 'cp2': copy: cannot copy '" + t / "missing.txt" + "' to '" + t / "out/missing.txt" +
                       "': No such file or directory");
  CHECK(f.output == "copied\nzforce: " + f.error + "\n");
  CHECK(read(t / "out/in.txt") == "payload");
  CHECK_FALSE(exists(t / "never"));
}

TEST_CASE("cancelling an instance during a copy ends it cancelled, with no partial file") {
  TempDir t;
  write(t / "big", std::string(32 << 20, 'z'));
  fs::create_directory(t / "out");
  proto::Assign a;
  a.instance = 8;
  a.attempt = 1;
  a.job = "files";
  a.steps = {{"cp", "builtin", {}, "copy", {{"from", t / "big"}, {"to", t / "out/big"}}, {}, "", 0}};
  auto now = Clock::now();
  Execution ex(a, ExecutionConfig{}, now);
  ex.advance(now);
  REQUIRE(ex.phase() == Execution::Phase::Working);
  ex.stop(now);
  CHECK(ex.phase() == Execution::Phase::Stopping);
  int turns = 0;
  while (!ex.done() && turns++ < 1000) {
    std::vector<zmq::pollitem_t> items;
    ex.add_poll_items(items);
    CHECK(zmq::poll(items.data(), items.size(), std::chrono::milliseconds(10000)) == 1);
    ex.advance(now);
  }
  REQUIRE(ex.done());
  CHECK(ex.result().status == "cancelled");
  // Either the copy finished before it saw the cancel, or nothing is there.
  auto left = names_in(t / "out");
  CHECK((left.empty() || left == std::set<std::string>{"big"}));
  if (!left.empty()) CHECK(fs::file_size(t / "out/big") == (32u << 20));
}

TEST_CASE("the example job with file builtins loads") {
  auto j = load_job_file(std::string(ZF_SCHEMAS_DIR) + "/../examples/archive.toml");
  REQUIRE_MESSAGE(j.ok(), j.error().message);
  CHECK(j->steps.size() == 6);
  CHECK(j->steps[3].builtin == "copy");
  CHECK(j->steps[3].args.at("overwrite") == "true");
}
