// The file builtins on a real worker: a job that makes, copies, moves and
// deletes files over a temp folder, a failing copy whose error the operator
// reads in `zforce instance show`, a bad argument refused at `job put`, and
// the example job examples/archive.toml run for real.
#include <doctest/doctest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>

#include "tests/cluster.h"

using namespace zf::test;
namespace fs = std::filesystem;

namespace {

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::set<std::string> names_in(const std::string& dir) {
  std::set<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) out.insert(e.path().filename().string());
  return out;
}

const char* kFilesJob = R"(
name = "files"
[params.dir]
[params.src]
default = "in.txt"

[[steps]]
name = "make-archive"
builtin = "mkdir"
path = "{{dir}}/out/archive"

[[steps]]
name = "copy-in"
builtin = "copy"
from = "{{src}}"
to = "out/"
cwd = "{{dir}}"

[[steps]]
name = "archive"
builtin = "move"
from = "out/{{src}}"
to = "out/archive/{{src}}.done"
cwd = "{{dir}}"

[[steps]]
name = "clean"
builtin = "delete"
path = "{{dir}}/scratch"
recursive = true

[[steps]]
builtin = "echo"
text = "filed {{src}}"
)";

}  // namespace

TEST_CASE("mkdir, copy, move and delete run on a worker and leave the files as the job says") {
  Cluster c;
  c.start_master();
  c.connect_tap();
  c.start_worker("w1", 2);
  REQUIRE(c.wait_for([&] { return c.count("member.joined") >= 1; }, 10s));
  std::string dir = c.dir() + "/work";
  c.write_file("work/in.txt", "payload\n");
  c.write_file("work/scratch/a.txt", "a");
  c.write_file("work/scratch/deep/b.txt", "b");
  auto put = c.zforce({"job", "put", c.write_file("files.toml", kFilesJob)});
  REQUIRE_MESSAGE(put.exit_code == 0, put.err);

  auto r = c.zforce({"run", "files", "-p", "dir=" + dir, "--wait"});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "filed in.txt\n");
  auto show = parse_ok(c.zforce({"--json", "instance", "show", "1"}));
  CHECK(show["state"] == "succeeded");
  CHECK(show["member"] == "w1");

  CHECK(read(dir + "/in.txt") == "payload\n");  // copied, not moved
  CHECK(read(dir + "/out/archive/in.txt.done") == "payload\n");
  CHECK(names_in(dir + "/out") == std::set<std::string>{"archive"});
  CHECK(names_in(dir + "/out/archive") == std::set<std::string>{"in.txt.done"});
  CHECK_FALSE(fs::exists(dir + "/scratch"));
  CHECK(names_in(dir) == std::set<std::string>{"in.txt", "out"});
}

TEST_CASE("a copy of a missing file fails the instance, and instance show names the file and the reason") {
  Cluster c;
  c.start_master();
  c.start_worker("w1", 1);
  std::string dir = c.dir() + "/work";
  c.write_file("work/scratch/a.txt", "a");
  REQUIRE(c.zforce({"job", "put", c.write_file("files.toml", kFilesJob)}).exit_code == 0);

  auto r = c.zforce({"run", "files", "-p", "dir=" + dir, "-p", "src=missing.txt", "--wait"});
  CHECK(r.exit_code == 1);
  const std::string error = "step 'copy-in': copy: cannot copy '" + dir + "/missing.txt' to '" + dir +
                            "/out/missing.txt': No such file or directory";

  auto json_show = parse_ok(c.zforce({"--json", "instance", "show", "1"}));
  CHECK(json_show["state"] == "failed");
  CHECK(json_show["failed_step"] == 1);
  CHECK(json_show["exit_code"] == 1);
  CHECK(json_show["error"] == error);

  auto show = c.zforce({"instance", "show", "1"});
  REQUIRE(show.exit_code == 0);
  CHECK(show.out.find("state failed") != std::string::npos);
  CHECK(show.out.find("\nerror: " + error + "\n") != std::string::npos);
  CHECK(show.out.find("zforce: " + error) != std::string::npos);  // in the output too

  // The steps after the failing one did not run.
  CHECK(fs::is_directory(dir + "/out/archive"));
  CHECK(names_in(dir + "/out/archive").empty());
  CHECK(fs::exists(dir + "/scratch/a.txt"));
}

TEST_CASE("a builtin argument that is not valid is refused at job put with its line and field") {
  Cluster c;
  c.start_master();
  auto job = c.write_file("bad.toml", "name = \"bad\"\n[[steps]]\nbuiltin = \"copy\"\nfrom = \"a\"\nto = \"b\"\n"
                                      "overwrite = \"yes\"\n");
  auto put = c.zforce({"job", "put", job});
  CHECK(put.exit_code != 0);
  CHECK(put.err.find("bad.toml:6:13: field 'steps[0].overwrite': expected \"true\" or \"false\", not 'yes'") !=
        std::string::npos);
  auto list = parse_ok(c.zforce({"--json", "job", "list"}));
  CHECK(list["jobs"].empty());
}

TEST_CASE("the example job examples/archive.toml runs: a copy archived, the file published, the inbox gone") {
  Cluster c;
  c.start_master();
  c.start_worker("w1", 1);
  const char* src = std::getenv("ZF_SOURCE_DIR");
  REQUIRE(src != nullptr);
  auto put = c.zforce({"job", "put", std::string(src) + "/examples/archive.toml"});
  REQUIRE_MESSAGE(put.exit_code == 0, put.err);
  std::string dir = c.dir() + "/archive";
  auto r = c.zforce({"run", "archive", "-p", "dir=" + dir, "-p", "day=2024-05-01", "--wait"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  std::string published = read(dir + "/published.txt");
  CHECK_FALSE(published.empty());
  CHECK(read(dir + "/archive/2024-05-01/report.txt") == published);
  CHECK(names_in(dir) == std::set<std::string>{"archive", "published.txt"});
}
