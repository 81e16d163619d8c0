// Triggers with real processes: a timer fires at its rate, a watched folder
// gives one instance per stable file, a disabled job fires nothing.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "tests/cluster.h"

using namespace zf::test;

namespace {
double wall_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
std::string rfc3339_in(std::chrono::seconds from_now) {
  auto t = std::chrono::system_clock::to_time_t(std::chrono::system_clock::now() + from_now);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[64];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}
}  // namespace

TEST_CASE("an every = 200ms trigger fires 50 times in 10 s, and job show says when it fires next") {
  Cluster c;
  c.start_master({"--local-slots", "2"});
  c.connect_tap();
  auto job = c.write_file("tick.toml", R"(
name = "tick"
[params.who]
default = "nobody"
[[triggers]]
every = "200ms"
params = { who = "timer" }
[[steps]]
builtin = "noop"
)");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  auto show = json::parse(c.zforce({"--json", "job", "show", "tick"}).out);
  REQUIRE(show["triggers"].size() == 1);
  CHECK(show["triggers"][0]["kind"] == "every");
  CHECK(show["triggers"][0].contains("next"));

  REQUIRE(c.wait_for([&] { return c.count("trigger.fired") >= 1; }, 5s));
  double t0 = 0;
  for (const auto& e : c.events())
    if (e["type"] == "trigger.fired") {
      t0 = e["ts"];
      break;
    }
  c.wait_for([&] { return wall_now() > t0 + 10.5; }, 12s);
  int in_window = 0;
  for (const auto& e : c.events())
    if (e["type"] == "trigger.fired" && e["ts"].get<double>() < t0 + 10.0) {
      ++in_window;
      CHECK(e["trigger"] == 0);
      CHECK(e["job"] == "tick");
    }
  MESSAGE(in_window << " firings in the first 10 s");
  CHECK(in_window >= 49);
  CHECK(in_window <= 51);
  // The trigger's parameters reach the instance.
  auto inst = json::parse(c.zforce({"--json", "instance", "show", "1"}).out);
  CHECK(inst["params"]["who"] == "timer");
}

TEST_CASE("a watched folder gives exactly one instance per file, each after the file stopped changing") {
  Cluster c;
  c.start_master({"--local-slots", "2"});
  c.connect_tap();
  std::string inbox = c.dir() + "/inbox";
  std::filesystem::create_directories(inbox);
  {
    std::ofstream(inbox + "/old.csv") << "was here before\n";  // ignored: existing = false
  }
  auto job = c.write_file("ingest.toml", "name = \"ingest\"\n[params.file]\n[[triggers]]\nwatch = \"" + inbox +
                                             "\"\npattern = \"*.csv\"\npoll = \"200ms\"\n[[steps]]\n"
                                             "run = [\"wc\", \"-c\", \"{{file}}\"]\n");
  auto put = c.zforce({"job", "put", job});
  REQUIRE_MESSAGE(put.exit_code == 0, put.err);
  std::this_thread::sleep_for(500ms);  // the watch takes its first look

  std::map<std::string, double> last_write;  // path -> wall time of its last write
  for (int i = 0; i < 40; ++i) {
    std::string p = inbox + "/quick-" + std::to_string(i) + ".csv";
    std::ofstream(p) << "row " << i << "\n";
    last_write[p] = wall_now();
  }
  std::ofstream(inbox + "/ignored.txt") << "not a csv\n";
  // Ten files written slowly, a piece every 100 ms for a second.
  std::vector<std::ofstream> slow;
  for (int i = 0; i < 10; ++i) slow.emplace_back(inbox + "/slow-" + std::to_string(i) + ".csv");
  for (int piece = 0; piece < 10; ++piece) {
    for (int i = 0; i < 10; ++i) {
      slow[i] << "piece " << piece << "\n" << std::flush;
      last_write[inbox + "/slow-" + std::to_string(i) + ".csv"] = wall_now();
    }
    std::this_thread::sleep_for(100ms);
  }
  slow.clear();
  REQUIRE(c.wait_for([&] { return c.count("instance.succeeded") >= 50; }, 20s));
  std::this_thread::sleep_for(1s);  // nothing more may come
  c.wait_for([] { return false; }, 200ms);
  CHECK(c.count("trigger.fired") == 50);

  std::map<uint64_t, double> queued_at;
  for (const auto& e : c.events())
    if (e["type"] == "instance.queued") queued_at[e["instance"]] = e["ts"];
  std::set<std::string> files;
  int early = 0;
  for (const auto& [id, ts] : queued_at) {
    auto show = json::parse(c.zforce({"--json", "instance", "show", std::to_string(id)}).out);
    std::string f = show["params"]["file"];
    files.insert(f);
    REQUIRE(last_write.count(f));
    if (ts < last_write[f]) ++early;
    if (f.find("slow-") != std::string::npos) CHECK(show["output"].get<std::string>().rfind("80 ", 0) == 0);  // all 10 pieces
  }
  CHECK(files.size() == 50);
  CHECK(early == 0);
}

TEST_CASE("a disabled job fires nothing; enabled again, it fires") {
  Cluster c;
  c.start_master({"--local-slots", "1"});
  c.connect_tap();
  auto job = c.write_file("later.toml", "name = \"later\"\n[[triggers]]\nevery = \"100ms\"\nstart = \"" +
                                            rfc3339_in(2s) + "\"\n[[steps]]\nbuiltin = \"noop\"\n");
  REQUIRE(c.zforce({"job", "put", job}).exit_code == 0);
  CHECK(c.zforce({"job", "disable", "later"}).out == "later disabled\n");
  c.wait_for([] { return false; }, 3500ms);
  CHECK(c.count("trigger.fired") == 0);
  auto show = json::parse(c.zforce({"--json", "job", "show", "later"}).out);
  CHECK(show["enabled"] == false);
  CHECK_FALSE(show["triggers"][0].contains("next"));
  // Manual runs still work while disabled.
  CHECK(c.zforce({"run", "later", "--wait"}).exit_code == 0);
  REQUIRE(c.zforce({"job", "enable", "later"}).exit_code == 0);
  CHECK(c.wait_for([&] { return c.count("trigger.fired") >= 3; }, 5s));
}
