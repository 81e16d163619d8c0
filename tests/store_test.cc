// The master's durable store: round trips, group commit, crash recovery,
// refusal of files that are not ours, migrations, pruning.
//
// A few cases build a database "by hand" (a foreign SQLite file, a version-1
// zforce file) with the sqlite3 command-line shell, since only master/store.*
// may include sqlite3.h; they are skipped, with a message, where the shell is
// not installed.
#include "master/persistence.h"
#include "master/store.h"
#include "master/store_writer.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <future>
#include <fstream>
#include <iterator>
#include <set>
#include <string>
#include <vector>

#include <doctest/doctest.h>

namespace fs = std::filesystem;
using namespace zf;

namespace {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "zf-store-test-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) FAIL("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }
  std::string db() const { return path_ + "/zforce.db"; }

 private:
  std::string path_;
};

std::unique_ptr<Store> open_ok(const std::string& dir, const StoreOptions& options = {}) {
  auto s = Store::open(dir, options);
  if (!s.ok()) FAIL("Store::open failed: " << s.error().message);
  return std::move(s.value());
}

void ok(const Status& s) {
  if (!s.ok()) FAIL(s.error().message);
}

template <class T>
T ok(Result<T> r) {
  if (!r.ok()) FAIL(r.error().message);
  return std::move(r.value());
}

InstanceRecord instance(uint64_t id, InstanceState state = InstanceState::Queued, std::string job = "build") {
  InstanceRecord r;
  r.id = id;
  r.job = std::move(job);
  r.queue = "default";
  r.priority = static_cast<int>(id % 3);
  r.state = state;
  r.params = {{"branch", "main"}, {"n", std::to_string(id)}};
  r.steps_json = R"([{"name":"compile","run":["make"]}])";
  r.retry_json = R"({"attempts":3})";
  r.created_us = 1'000'000 + static_cast<int64_t>(id);
  r.updated_us = r.created_us;
  return r;
}

TransitionRecord transition(uint32_t seq, InstanceState state, int64_t ts_us, std::string member = "",
                            std::optional<int32_t> exit_code = std::nullopt) {
  TransitionRecord t;
  t.seq = seq;
  t.state = state;
  t.ts_us = ts_us;
  t.member = std::move(member);
  t.exit_code = exit_code;
  return t;
}

bool same(const TransitionRecord& a, const TransitionRecord& b) {
  return a.seq == b.seq && a.state == b.state && a.ts_us == b.ts_us && a.attempt == b.attempt && a.member == b.member &&
         a.exit_code == b.exit_code;
}

void check_same(const InstanceRecord& a, const InstanceRecord& b) {
  CHECK(a.id == b.id);
  CHECK(a.job == b.job);
  CHECK(a.queue == b.queue);
  CHECK(a.priority == b.priority);
  CHECK(a.attempt == b.attempt);
  CHECK(a.state == b.state);
  CHECK(a.params == b.params);
  CHECK(a.steps_json == b.steps_json);
  CHECK(a.retry_json == b.retry_json);
  CHECK(a.timeout_ms == b.timeout_ms);
  CHECK(a.member == b.member);
  CHECK(a.slot == b.slot);
  CHECK(a.exit_code == b.exit_code);
  CHECK(a.failed_step == b.failed_step);
  CHECK(a.duration_ms == b.duration_ms);
  CHECK(a.error == b.error);
  CHECK(a.output == b.output);
  CHECK(a.created_us == b.created_us);
  CHECK(a.updated_us == b.updated_us);
  CHECK(a.cancel_requested == b.cancel_requested);
  CHECK(a.retry_at_us == b.retry_at_us);
}

std::vector<uint64_t> ids(const std::vector<InstanceRecord>& v) {
  std::vector<uint64_t> out;
  for (const auto& r : v) out.push_back(r.id);
  return out;
}

std::vector<std::string> job_names(const StoreContents& c) {
  std::vector<std::string> out;
  for (const auto& j : c.jobs) out.push_back(j.name);
  return out;
}

bool have_sqlite_shell() { return std::system("sqlite3 -version >/dev/null 2>&1") == 0; }

// Runs SQL on a database with the sqlite3 shell; returns its output.
std::string shell(const std::string& db, const std::string& sql) {
  std::string script = db + ".sql";
  {
    std::ofstream f(script);
    f << sql;
  }
  std::string cmd = "sqlite3 -batch '" + db + "' < '" + script + "' 2>&1";
  std::string out;
  if (FILE* p = ::popen(cmd.c_str(), "r")) {
    char buf[512];
    size_t n;
    while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
    ::pclose(p);
  }
  fs::remove(script);
  return out;
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << bytes;
}

// What "untouched" means: same bytes, same mtime (set to a day in 2001 first,
// so any write would move it), no file added to or removed from the folder.
struct Snapshot {
  std::string bytes;
  int64_t mtime_ns;
  std::set<std::string> folder;
  bool operator==(const Snapshot&) const = default;
};

void age(const std::string& path) {
  struct timespec times[2] = {{1'000'000'000, 0}, {1'000'000'000, 0}};
  REQUIRE(::utimensat(AT_FDCWD, path.c_str(), times, 0) == 0);
}

Snapshot snapshot(const std::string& path) {
  Snapshot s;
  s.bytes = read_file(path);
  struct stat st;
  REQUIRE(::stat(path.c_str(), &st) == 0);
  s.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec;
  for (const auto& e : fs::directory_iterator(fs::path(path).parent_path())) s.folder.insert(e.path().filename());
  return s;
}

// Opening `dir` must fail with a message naming the file and containing
// `reason`, and must leave the file exactly as it was.
void check_refused(const TempDir& dir, const std::string& reason) {
  age(dir.db());
  Snapshot before = snapshot(dir.db());
  auto s = Store::open(dir.path());
  REQUIRE_FALSE(s.ok());
  INFO("error: " << s.error().message);
  CHECK(s.error().message.find(dir.db()) != std::string::npos);
  CHECK(s.error().message.find(reason) != std::string::npos);
  CHECK(snapshot(dir.db()) == before);
}

// A store with enough rows to span many pages.
void fill(const std::string& dir, int n) {
  auto store = open_ok(dir);
  store->begin_turn();
  for (int i = 1; i <= n; ++i) {
    auto r = instance(static_cast<uint64_t>(i));
    r.output = std::string(200, 'x');
    ok(store->upsert_instance(r));
    ok(store->add_transition(r.id, transition(0, InstanceState::Queued, 5)));
  }
  ok(store->commit_turn());
}

constexpr const char* kVersion1Schema = R"sql(
PRAGMA application_id = 1514558019;  -- 0x5A465243, "ZFRC"
CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_us INTEGER NOT NULL);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE jobs (name TEXT PRIMARY KEY, source_name TEXT NOT NULL, toml TEXT NOT NULL,
                   enabled INTEGER NOT NULL DEFAULT 1);
CREATE TABLE queues (name TEXT PRIMARY KEY, source_name TEXT NOT NULL, toml TEXT NOT NULL);
CREATE TABLE instances (
  id INTEGER PRIMARY KEY, job TEXT NOT NULL, queue TEXT NOT NULL, priority INTEGER NOT NULL,
  attempt INTEGER NOT NULL, state TEXT NOT NULL, params TEXT NOT NULL, steps TEXT NOT NULL,
  retry TEXT NOT NULL, timeout_ms INTEGER NOT NULL, member TEXT NOT NULL, slot INTEGER NOT NULL,
  exit_code INTEGER NOT NULL, failed_step INTEGER NOT NULL, duration_ms INTEGER NOT NULL,
  error TEXT NOT NULL, output BLOB NOT NULL, created_us INTEGER NOT NULL, updated_us INTEGER NOT NULL,
  cancel_requested INTEGER NOT NULL, retry_at_us INTEGER);
CREATE TABLE transitions (instance INTEGER NOT NULL, seq INTEGER NOT NULL, state TEXT NOT NULL,
  ts_us INTEGER NOT NULL, attempt INTEGER NOT NULL, member TEXT NOT NULL, exit_code INTEGER,
  PRIMARY KEY (instance, seq)) WITHOUT ROWID;
INSERT INTO schema_version VALUES (1, 0);
)sql";

}  // namespace

TEST_CASE("a new data folder gets an empty store at the current schema version") {
  TempDir dir;
  auto store = open_ok(dir.path() + "/data");
  CHECK(store->schema_version() == kStoreSchemaVersion);
  CHECK(store->path() == dir.path() + "/data/zforce.db");
  auto c = ok(store->load());
  CHECK(c.jobs.empty());
  CHECK(c.queues.empty());
  CHECK(c.instances.empty());
  CHECK(c.next_instance_id == 1);
  CHECK(c.last_event_seq == 0);
  CHECK_FALSE(fs::exists(dir.path() + "/data/zforce.db.new"));
}

TEST_CASE("jobs and queues round trip, in the order they were first put") {
  TempDir dir;
  auto store = open_ok(dir.path());
  ok(store->put_job({"zeta", "jobs/zeta.toml", "name = \"zeta\"\n", true}));
  ok(store->put_job({"alpha", "jobs/alpha.toml", "name = \"alpha\"\n", false}));
  ok(store->put_job({"mid", "jobs/mid.toml", "x", true}));
  ok(store->put_job({"zeta", "jobs/zeta2.toml", "name = \"zeta\" # v2\n", false}));  // an update keeps its place
  ok(store->remove_job("mid"));
  ok(store->remove_job("never-there"));
  ok(store->put_queue({"slow", "queues/slow.toml", "max_parallel = 1\n"}));
  ok(store->put_queue({"fast", "queues/fast.toml", "max_parallel = 8\n"}));
  ok(store->put_queue({"gone", "queues/gone.toml", ""}));
  ok(store->remove_queue("gone"));

  auto c = ok(store->load());
  REQUIRE(c.jobs.size() == 2);
  CHECK(job_names(c) == std::vector<std::string>{"zeta", "alpha"});
  CHECK(c.jobs[0].source_name == "jobs/zeta2.toml");
  CHECK(c.jobs[0].text == "name = \"zeta\" # v2\n");
  CHECK_FALSE(c.jobs[0].enabled);
  CHECK_FALSE(c.jobs[1].enabled);
  REQUIRE(c.queues.size() == 2);
  CHECK(c.queues[0].name == "slow");
  CHECK(c.queues[0].source_name == "queues/slow.toml");
  CHECK(c.queues[0].text == "max_parallel = 1\n");
  CHECK(c.queues[1].name == "fast");
}

TEST_CASE("an instance and its history round trip with every field") {
  TempDir dir;
  auto store = open_ok(dir.path());
  InstanceRecord r = instance(7, InstanceState::Running);
  r.attempt = 2;
  r.priority = -5;
  r.params = {{"empty", ""}, {"quote", "a \"b\" \\ c"}, {"unicode", "grüße ✓"}};
  r.timeout_ms = 90'000;
  r.member = "worker-3";
  r.slot = 2;
  r.exit_code = -9;
  r.failed_step = 1;
  r.duration_ms = 12'345;
  r.error = "step 'compile' exited with 2";
  static constexpr char kOutput[] = "line 1\n\0binary\xff\xfe tail";
  r.output = std::string(kOutput, sizeof kOutput - 1);  // the NUL inside included (found by ASan: was 24, 2 too many)
  r.updated_us = 9'999'999'999;
  r.cancel_requested = true;
  r.retry_at_us = 1'700'000'000'000'000;
  ok(store->upsert_instance(r));
  ok(store->add_transition(7, transition(0, InstanceState::Queued, 100)));
  ok(store->add_transition(7, transition(1, InstanceState::Assigned, 200, "worker-3")));
  auto t2 = transition(2, InstanceState::Lost, 300, "worker-3");
  t2.attempt = 1;
  ok(store->add_transition(7, t2));
  auto t3 = transition(3, InstanceState::Failed, 400, "worker-3", -9);
  t3.attempt = 2;
  ok(store->add_transition(7, t3));

  auto got = ok(store->load_instance(7));
  REQUIRE(got.has_value());
  check_same(*got, r);
  REQUIRE(got->history.size() == 4);
  CHECK(same(got->history[1], transition(1, InstanceState::Assigned, 200, "worker-3")));
  CHECK(same(got->history[3], t3));
  CHECK_FALSE(got->history[0].exit_code.has_value());

  SUBCASE("an upsert replaces every field and keeps the history") {
    InstanceRecord r2 = instance(7, InstanceState::Succeeded, "other");
    r2.output = "";
    ok(store->upsert_instance(r2));
    auto again = ok(store->load_instance(7));
    REQUIRE(again.has_value());
    check_same(*again, r2);
    CHECK(again->history.size() == 4);
  }
  SUBCASE("an unknown id is no instance, not an error") { CHECK_FALSE(ok(store->load_instance(8)).has_value()); }
  SUBCASE("an entry written again keeps its last version, in seq order") {
    auto again = transition(1, InstanceState::Assigned, 250, "worker-4");
    ok(store->add_transition(7, again));
    auto got2 = ok(store->load_instance(7));
    REQUIRE(got2.has_value());
    REQUIRE(got2->history.size() == 4);
    CHECK(same(got2->history[1], again));
    CHECK(same(got2->history[3], t3));
  }
  SUBCASE("a member name with quotes and a backslash round-trips") {
    ok(store->add_transition(7, transition(4, InstanceState::Queued, 500, "odd \"name\\ \n")));
    auto got2 = ok(store->load_instance(7));
    REQUIRE(got2.has_value());
    REQUIRE(got2->history.size() == 5);
    CHECK(got2->history[4].member == "odd \"name\\ \n");
  }
  SUBCASE("a damaged history is an error naming the instance, not a crash") {
    if (!have_sqlite_shell()) {
      MESSAGE("skipped: no sqlite3 shell");
      return;
    }
    store.reset();
    REQUIRE(shell(dir.db(), "UPDATE instances SET history = history || '[5,\"nonsense\",1,1,\"\",null]' || char(10);")
                .empty());
    store = open_ok(dir.path());
    auto bad = store->load_instance(7);
    REQUIRE_FALSE(bad.ok());
    CHECK(bad.error().message.find("instance 7") != std::string::npos);
    CHECK(bad.error().message.find("history line 5") != std::string::npos);
    CHECK(bad.error().message.find("unknown state 'nonsense'") != std::string::npos);
  }
}

TEST_CASE("load returns the live instances in id order; final ones stay browsable") {
  TempDir dir;
  auto store = open_ok(dir.path());
  const InstanceState states[] = {InstanceState::Running,   InstanceState::Succeeded, InstanceState::Queued,
                                  InstanceState::Failed,    InstanceState::Assigned,  InstanceState::Cancelled,
                                  InstanceState::TimedOut,  InstanceState::Lost,      InstanceState::Queued};
  store->begin_turn();
  // Written out of order: the order of load() is the id's, not the write's.
  for (uint64_t id = 9; id >= 1; --id) {
    ok(store->upsert_instance(instance(id, states[id - 1], id % 2 ? "odd" : "even")));
    ok(store->add_transition(id, transition(0, InstanceState::Queued, 10)));
  }
  ok(store->commit_turn());

  auto c = ok(store->load());
  CHECK(ids(c.instances) == std::vector<uint64_t>{1, 3, 5, 9});
  for (const auto& r : c.instances) CHECK(r.history.size() == 1);
  CHECK(c.next_instance_id == 10);

  CHECK(ids(ok(store->list_instances({}))) == std::vector<uint64_t>{9, 8, 7, 6, 5, 4, 3, 2, 1});
  InstanceFilter odd;
  odd.job = "odd";
  CHECK(ids(ok(store->list_instances(odd))) == std::vector<uint64_t>{9, 7, 5, 3, 1});
  InstanceFilter queued_odd = odd;
  queued_odd.state = InstanceState::Queued;
  CHECK(ids(ok(store->list_instances(queued_odd))) == std::vector<uint64_t>{9, 3});
  InstanceFilter page;
  page.limit = 3;
  page.before_id = 8;
  page.with_history = true;
  auto p = ok(store->list_instances(page));
  CHECK(ids(p) == std::vector<uint64_t>{7, 6, 5});
  CHECK(p[0].history.size() == 1);
  InstanceFilter failed;
  failed.state = InstanceState::Failed;
  auto f = ok(store->list_instances(failed));
  CHECK(ids(f) == std::vector<uint64_t>{4});
  CHECK(f[0].history.empty());  // not asked for
}

TEST_CASE("a turn's writes are invisible to another connection until commit_turn") {
  TempDir dir;
  auto master = open_ok(dir.path());
  auto reader = open_ok(dir.path());

  master->begin_turn();
  CHECK(master->in_turn());
  ok(master->put_job({"a", "a.toml", "", true}));
  ok(master->upsert_instance(instance(1)));
  ok(master->add_transition(1, transition(0, InstanceState::Queued, 1)));
  ok(master->set_last_event_seq(5));

  // The master sees its own turn; nobody else does yet.
  CHECK(ok(master->load()).instances.size() == 1);
  auto before = ok(reader->load());
  CHECK(before.jobs.empty());
  CHECK(before.instances.empty());
  CHECK(before.last_event_seq == 0);

  ok(master->commit_turn());
  CHECK_FALSE(master->in_turn());
  auto after = ok(reader->load());
  CHECK(after.jobs.size() == 1);
  CHECK(after.instances.size() == 1);
  CHECK(after.last_event_seq == 5);

  SUBCASE("a turn without writes commits nothing and succeeds") {
    master->begin_turn();
    ok(master->commit_turn());
  }
  SUBCASE("commit_turn outside a turn is a no-op") { ok(master->commit_turn()); }
}

TEST_CASE("a turn that cannot write is rolled back whole and says why") {
  TempDir dir;
  StoreOptions impatient;
  impatient.busy_timeout_ms = 20;
  auto master = open_ok(dir.path(), impatient);
  auto other = open_ok(dir.path());

  // Another connection holds the write lock for the whole of the master's turn.
  other->begin_turn();
  ok(other->put_job({"held", "", "", true}));

  master->begin_turn();
  auto first = master->put_job({"a", "", "", true});
  CHECK_FALSE(first.ok());
  CHECK(first.error().message.find("locked") != std::string::npos);
  // Later writes of the same turn are refused too: the turn is all or nothing.
  CHECK_FALSE(master->upsert_instance(instance(1)).ok());
  auto commit = master->commit_turn();
  REQUIRE_FALSE(commit.ok());
  CHECK(commit.error().message.find("rolled back") != std::string::npos);

  ok(other->commit_turn());
  master->begin_turn();
  ok(master->put_job({"b", "", "", true}));
  ok(master->commit_turn());
  CHECK(job_names(ok(master->load())) == std::vector<std::string>{"held", "b"});
}

TEST_CASE("reopening a store gives back the same state in the same order") {
  TempDir dir;
  {
    auto store = open_ok(dir.path());
    store->begin_turn();
    ok(store->put_job({"j2", "j2.toml", "two", true}));
    ok(store->put_job({"j1", "j1.toml", "one", true}));
    ok(store->put_queue({"q", "q.toml", "max_parallel = 2", }));
    for (uint64_t id : {3, 1, 2, 5}) {
      ok(store->upsert_instance(instance(id)));
      ok(store->add_transition(id, transition(0, InstanceState::Queued, int64_t(id))));
    }
    ok(store->set_meta("trigger.nightly.last_fired_us", "1700000000000000"));
    ok(store->commit_turn());
  }
  auto store = open_ok(dir.path());
  auto c = ok(store->load());
  CHECK(job_names(c) == std::vector<std::string>{"j2", "j1"});
  REQUIRE(c.queues.size() == 1);
  CHECK(ids(c.instances) == std::vector<uint64_t>{1, 2, 3, 5});
  check_same(c.instances[2], instance(3));
  CHECK(c.meta["trigger.nightly.last_fired_us"] == "1700000000000000");
  CHECK(ok(store->get_meta("trigger.nightly.last_fired_us")) == std::optional<std::string>("1700000000000000"));
  CHECK_FALSE(ok(store->get_meta("nothing")).has_value());
}

TEST_CASE("event sequence numbers and instance ids continue after a restart") {
  TempDir dir;
  {
    auto store = open_ok(dir.path());
    ok(store->set_last_event_seq(41));
    ok(store->set_next_instance_id(100));  // ids up to 99 were handed out, even if pruned since
    ok(store->upsert_instance(instance(12, InstanceState::Succeeded)));
  }
  {
    auto store = open_ok(dir.path());
    auto c = ok(store->load());
    CHECK(c.last_event_seq == 41);
    CHECK(c.next_instance_id == 100);
    ok(store->upsert_instance(instance(150)));  // the store never hands out an id below a stored one
  }
  auto store = open_ok(dir.path());
  CHECK(ok(store->load()).next_instance_id == 151);
}

namespace {

// In a child process: opens the store, commits `turns` turns of one instance
// each, writes one more turn without committing it, then dies as `how` says.
// Returns only in the parent, with the child's wait status.
int run_child_and_die(const std::string& dir, int turns, bool sigkill) {
  std::fflush(nullptr);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    auto s = Store::open(dir);
    if (!s.ok()) ::_exit(10);
    Store& store = *s.value();
    for (int t = 1; t <= turns; ++t) {
      store.begin_turn();
      auto r = instance(static_cast<uint64_t>(t));
      if (!store.upsert_instance(r).ok()) ::_exit(11);
      if (!store.add_transition(r.id, transition(0, InstanceState::Queued, t)).ok()) ::_exit(12);
      if (!store.set_last_event_seq(static_cast<uint64_t>(t)).ok()) ::_exit(13);
      if (!store.commit_turn().ok()) ::_exit(14);
    }
    store.begin_turn();
    (void)store.upsert_instance(instance(static_cast<uint64_t>(turns + 1)));
    (void)store.set_last_event_seq(static_cast<uint64_t>(turns + 1));
    if (sigkill) ::raise(SIGKILL);
    ::_exit(0);  // no destructor, no close, no checkpoint
  }
  int status = 0;
  REQUIRE(::waitpid(pid, &status, 0) == pid);
  return status;
}

}  // namespace

TEST_CASE("every committed turn survives the process dying; the uncommitted one does not") {
  TempDir dir;
  constexpr int kTurns = 50;
  bool sigkill = false;
  SUBCASE("killed with SIGKILL in the middle of a turn") { sigkill = true; }
  SUBCASE("exiting without closing the store") { sigkill = false; }

  int status = run_child_and_die(dir.path(), kTurns, sigkill);
  if (sigkill) {
    REQUIRE(WIFSIGNALED(status));
    CHECK(WTERMSIG(status) == SIGKILL);
  } else {
    REQUIRE(WIFEXITED(status));
    CHECK(WEXITSTATUS(status) == 0);
  }
  CHECK(fs::exists(dir.db() + "-wal"));  // the committed turns are (at least partly) only in the WAL

  auto store = open_ok(dir.path());
  auto c = ok(store->load());
  REQUIRE(c.instances.size() == kTurns);
  for (int i = 0; i < kTurns; ++i) CHECK(c.instances[i].id == uint64_t(i + 1));
  CHECK(c.last_event_seq == kTurns);
  CHECK(c.next_instance_id == kTurns + 1);
  CHECK_FALSE(ok(store->load_instance(kTurns + 1)).has_value());
}

TEST_CASE("files that are not a zforce database are refused and left untouched") {
  TempDir dir;
  SUBCASE("garbage") {
    std::string bytes(8192, '\0');
    for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 7919 + 13) & 0xff);
    write_file(dir.db(), bytes);
    check_refused(dir, "not an SQLite database");
  }
  SUBCASE("a text file") {
    write_file(dir.db(), "these are my notes, not a database\n");
    check_refused(dir, "shorter than an SQLite header");
  }
  SUBCASE("an empty file") {
    write_file(dir.db(), "");
    check_refused(dir, "empty");
  }
  SUBCASE("a zforce database truncated to a few bytes") {
    fill(dir.path(), 10);
    write_file(dir.db(), read_file(dir.db()).substr(0, 60));
    check_refused(dir, "shorter than an SQLite header");
  }
  SUBCASE("a zforce database that lost its last pages") {
    fill(dir.path(), 300);
    std::string bytes = read_file(dir.db());
    REQUIRE(bytes.size() > 5 * 4096);
    write_file(dir.db(), bytes.substr(0, bytes.size() - 2 * 4096));
    check_refused(dir, "truncated");
  }
  SUBCASE("a zforce database cut in the middle of a page") {
    fill(dir.path(), 300);
    std::string bytes = read_file(dir.db());
    write_file(dir.db(), bytes.substr(0, bytes.size() - 1000));
    check_refused(dir, "truncated");
  }
  SUBCASE("a zforce database whose pages are garbage") {
    fill(dir.path(), 300);
    std::string bytes = read_file(dir.db());
    for (size_t i = 4096; i < bytes.size(); ++i) bytes[i] = static_cast<char>((i * 31 + 7) & 0xff);
    write_file(dir.db(), bytes);
    check_refused(dir, "corrupt");
  }
  SUBCASE("a database written by a newer zforce") {
    fill(dir.path(), 1);
    StoreOptions older;
    older.schema_version = 1;  // this "build" knows only version 1
    age(dir.db());
    Snapshot before = snapshot(dir.db());
    auto s = Store::open(dir.path(), older);
    REQUIRE_FALSE(s.ok());
    CHECK(s.error().message.find("newer zforce") != std::string::npos);
    CHECK(s.error().message.find(dir.db()) != std::string::npos);
    CHECK(snapshot(dir.db()) == before);
  }
  SUBCASE("an SQLite database of another application") {
    if (!have_sqlite_shell()) {
      MESSAGE("skipped: no sqlite3 shell");
      return;
    }
    shell(dir.db(), "PRAGMA application_id = 42; CREATE TABLE accounts (id INTEGER PRIMARY KEY, owner TEXT);");
    check_refused(dir, "another application");
  }
  SUBCASE("a plain SQLite database (application id 0)") {
    if (!have_sqlite_shell()) {
      MESSAGE("skipped: no sqlite3 shell");
      return;
    }
    shell(dir.db(), "PRAGMA journal_mode = WAL; CREATE TABLE jobs (name TEXT);");
    check_refused(dir, "application_id 0x00000000");
  }
}

TEST_CASE("a version-1 database is migrated to the current schema, keeping its data") {
  TempDir dir;
  if (!have_sqlite_shell()) {
    MESSAGE("skipped: no sqlite3 shell");
    return;
  }
  // Instance rows of an old schema are written with SQL: the store reads and
  // writes instances at the current version only.
  const std::string old_instance = R"sql(
INSERT INTO instances VALUES (4, 'build', 'default', 1, 1, 'queued', '{"branch":"main","n":"4"}',
  '[{"name":"compile","run":["make"]}]', '{"attempts":3}', 0, '', -1, 0, -1, 0, '', x'', 1000004, 1000004, 0, NULL);
INSERT INTO transitions VALUES (4, 0, 'queued', 1000004, 1, '', NULL);
)sql";
  SUBCASE("made by this code at version 1") {
    StoreOptions v1;
    v1.schema_version = 1;
    {
      auto store = open_ok(dir.path(), v1);
      CHECK(store->schema_version() == 1);
      ok(store->put_job({"old", "old.toml", "text", true}));
      ok(store->set_last_event_seq(77));
      auto refused = store->upsert_instance(instance(4));
      REQUIRE_FALSE(refused.ok());
      CHECK(refused.error().message.find("only at version") != std::string::npos);
    }
    REQUIRE(shell(dir.db(), old_instance).empty());
  }
  SUBCASE("made by hand with the version-1 SQL") {
    std::string out = shell(dir.db(), std::string(kVersion1Schema) + R"sql(
INSERT INTO jobs VALUES ('old', 'old.toml', 'text', 1);
INSERT INTO meta VALUES ('last_event_seq', '77');
)sql" + old_instance);
    REQUIRE(out.empty());
  }
  auto store = open_ok(dir.path());
  CHECK(store->schema_version() == kStoreSchemaVersion);
  auto c = ok(store->load());
  CHECK(job_names(c) == std::vector<std::string>{"old"});
  REQUIRE(c.instances.size() == 1);
  check_same(c.instances[0], instance(4));
  REQUIRE(c.instances[0].history.size() == 1);
  CHECK(c.instances[0].history[0].ts_us == 1000004);
  CHECK(c.last_event_seq == 77);
  store.reset();
  CHECK(shell(dir.db(), "SELECT group_concat(version) FROM schema_version;") == "1,2,3,4,5,6\n");
  CHECK(shell(dir.db(), "SELECT group_concat(name) FROM (SELECT name FROM sqlite_master WHERE type = 'index' "
                        "AND name LIKE 'instances_%' ORDER BY name);") ==
        "instances_by_job,instances_unsuccessful\n");
  CHECK(shell(dir.db(), "SELECT count(*) FROM sqlite_master WHERE name = 'transitions';") == "0\n");
  CHECK(shell(dir.db(), "PRAGMA journal_mode;") == "wal\n");
}

TEST_CASE("a version-2 database is migrated to the current schema, keeping its data and history; states are listed "
          "as before") {
  TempDir dir;
  if (!have_sqlite_shell()) {
    MESSAGE("skipped: no sqlite3 shell");
    return;
  }
  const InstanceState states[] = {InstanceState::Succeeded, InstanceState::Failed,  InstanceState::Queued,
                                  InstanceState::Running,   InstanceState::Lost,    InstanceState::Succeeded,
                                  InstanceState::Failed,    InstanceState::Assigned, InstanceState::Cancelled,
                                  InstanceState::TimedOut};
  {
    StoreOptions v2;
    v2.schema_version = 2;
    auto store = open_ok(dir.path(), v2);
    CHECK(store->schema_version() == 2);
  }
  // The rows as a version-2 store wrote them (the same as instance() gives).
  std::string sql = "BEGIN;\n";
  for (uint64_t id = 1; id <= 10; ++id) {
    const std::string n = std::to_string(id);
    sql += "INSERT INTO instances VALUES (" + n + ", '" + (id % 2 ? "odd" : "even") + "', 'default', " +
           std::to_string(id % 3) + ", 1, '" + std::string(state_name(states[id - 1])) +
           "', '{\"branch\":\"main\",\"n\":\"" + n +
           "\"}', '[{\"name\":\"compile\",\"run\":[\"make\"]}]', '{\"attempts\":3}', 0, '', -1, 0, -1, 0, '', "
           "x'', " +
           std::to_string(1'000'000 + id) + ", " + std::to_string(1'000'000 + id) + ", 0, NULL);\n";
    sql += "INSERT INTO transitions VALUES (" + n + ", 0, 'queued', 10, 1, '', NULL);\n";
  }
  // Instance 4's history, entered out of order, with a member name that
  // needs quoting and an exit code.
  sql += "INSERT INTO transitions VALUES (4, 2, 'running', 30, 2, 'w\"1', NULL);\n"
         "INSERT INTO transitions VALUES (4, 1, 'assigned', 20, 2, 'w\"1', 7);\n"
         "COMMIT;\n";
  REQUIRE(shell(dir.db(), sql).empty());
  CHECK(shell(dir.db(), "SELECT group_concat(version) FROM schema_version;") == "1,2\n");
  auto store = open_ok(dir.path());
  CHECK(store->schema_version() == kStoreSchemaVersion);
  auto c = ok(store->load());
  CHECK(ids(c.instances) == std::vector<uint64_t>{3, 4, 8});
  check_same(c.instances[0], instance(3, InstanceState::Queued, "odd"));
  REQUIRE(c.instances[0].history.size() == 1);
  CHECK(same(c.instances[0].history[0], transition(0, InstanceState::Queued, 10)));
  const auto& h4 = c.instances[1].history;
  REQUIRE(h4.size() == 3);
  CHECK(same(h4[0], transition(0, InstanceState::Queued, 10)));
  auto t1 = transition(1, InstanceState::Assigned, 20, "w\"1", 7);
  t1.attempt = 2;
  auto t2 = transition(2, InstanceState::Running, 30, "w\"1");
  t2.attempt = 2;
  CHECK(same(h4[1], t1));
  CHECK(same(h4[2], t2));
  auto by_state = [&](InstanceState st, std::optional<std::string> job = std::nullopt) {
    InstanceFilter f;
    f.state = st;
    f.job = std::move(job);
    return ids(ok(store->list_instances(f)));
  };
  CHECK(by_state(InstanceState::Failed) == std::vector<uint64_t>{7, 2});  // indexed
  CHECK(by_state(InstanceState::Failed, "odd") == std::vector<uint64_t>{7});
  CHECK(by_state(InstanceState::Lost) == std::vector<uint64_t>{5});
  CHECK(by_state(InstanceState::Cancelled) == std::vector<uint64_t>{9});
  CHECK(by_state(InstanceState::TimedOut) == std::vector<uint64_t>{10});
  CHECK(by_state(InstanceState::Succeeded) == std::vector<uint64_t>{6, 1});  // walked from the newest
  CHECK(by_state(InstanceState::Queued) == std::vector<uint64_t>{3});
  CHECK(by_state(InstanceState::Running, "even") == std::vector<uint64_t>{4});
  InstanceFilter page;
  page.state = InstanceState::Failed;
  page.before_id = 7;
  CHECK(ids(ok(store->list_instances(page))) == std::vector<uint64_t>{2});
  store.reset();
  CHECK(shell(dir.db(), "SELECT group_concat(version) FROM schema_version;") == "1,2,3,4,5,6\n");
  // The listing of an unsuccessful state can use the partial index: the
  // condition the store adds is the index's own.
  std::string plan = shell(dir.db(),
                           "EXPLAIN QUERY PLAN SELECT id FROM instances WHERE 1 AND state = 'failed' AND (state = "
                           "'failed' OR state = 'cancelled' OR state = 'timed_out' OR state = 'lost') ORDER BY id "
                           "DESC LIMIT 5;");
  CHECK(plan.find("instances_unsuccessful") != std::string::npos);
}

TEST_CASE("pruning removes old final instances and their history, never live ones") {
  TempDir dir;
  auto store = open_ok(dir.path());
  const int64_t old_us = 1'000, cutoff = 5'000, new_us = 9'000;
  auto put = [&](uint64_t id, InstanceState state, int64_t updated) {
    auto r = instance(id, state);
    r.updated_us = updated;
    ok(store->upsert_instance(r));
    ok(store->add_transition(id, transition(0, InstanceState::Queued, updated)));
    ok(store->add_transition(id, transition(1, state, updated)));
  };
  store->begin_turn();
  put(1, InstanceState::Succeeded, old_us);
  put(2, InstanceState::Failed, old_us);
  put(3, InstanceState::Queued, old_us);  // live: kept however old
  put(4, InstanceState::Running, old_us);
  put(5, InstanceState::Succeeded, new_us);
  put(6, InstanceState::Cancelled, old_us);
  put(7, InstanceState::Lost, old_us);
  ok(store->commit_turn());

  SUBCASE("all at once") {
    CHECK(ok(store->prune_history(cutoff)) == 4);
    CHECK(ids(ok(store->list_instances({}))) == std::vector<uint64_t>{5, 4, 3});
  }
  SUBCASE("a slice at a time, inside turns") {
    store->begin_turn();
    CHECK(ok(store->prune_history(cutoff, 3)) == 3);
    ok(store->commit_turn());
    CHECK(ids(ok(store->list_instances({}))) == std::vector<uint64_t>{7, 5, 4, 3});
    store->begin_turn();
    CHECK(ok(store->prune_history(cutoff, 3)) == 1);
    CHECK(ok(store->prune_history(cutoff, 3)) == 0);
    ok(store->commit_turn());
  }
  CHECK(ok(store->load_instance(1)) == std::nullopt);
  auto kept = ok(store->load_instance(3));
  REQUIRE(kept.has_value());
  CHECK(kept->history.size() == 2);
  CHECK(ids(ok(store->load()).instances) == std::vector<uint64_t>{3, 4});
  // The history of the pruned instances went with them.
  if (have_sqlite_shell()) {
    store.reset();
    CHECK(shell(dir.db(), "SELECT count(*) FROM instances WHERE id IN (1, 2, 6, 7);") == "0\n");
  }
}

TEST_CASE("update_instance changes what can change and keeps job, params, steps and retry") {
  TempDir dir;
  auto store = open_ok(dir.path());
  InstanceRecord r = instance(5, InstanceState::Assigned);
  r.params = {{"who", "world"}};
  r.steps_json = R"([{"kind":"builtin","builtin":"noop"}])";
  r.retry_json = R"({"attempts":3})";
  ok(store->upsert_instance(r));
  InstanceRecord u;  // only the changing columns are set, as to_update_record does
  u.id = 5;
  u.state = InstanceState::Failed;
  u.attempt = 2;
  u.member = "w2";
  u.slot = 1;
  u.exit_code = 3;
  u.failed_step = 0;
  u.duration_ms = 77;
  u.error = "boom";
  u.output = "out";
  u.updated_us = 42;
  ok(store->update_instance(u));
  auto back = ok(store->load_instance(5));
  REQUIRE(back.has_value());
  CHECK(back->state == InstanceState::Failed);
  CHECK(back->attempt == 2);
  CHECK(back->member == "w2");
  CHECK(back->exit_code == 3);
  CHECK(back->error == "boom");
  CHECK(back->output == "out");
  CHECK(back->updated_us == 42);
  CHECK(back->job == r.job);
  CHECK(back->params == r.params);
  CHECK(back->steps_json == r.steps_json);
  CHECK(back->retry_json == r.retry_json);
  CHECK(back->created_us == r.created_us);
}

TEST_CASE("the store writer commits batches in order, groups them, and fails all after a failed commit") {
  TempDir dir;
  StoreOptions options;
  SUBCASE("sync full: commits synced by the sync threads") { options.sync = StoreOptions::Sync::Full; }
  SUBCASE("sync normal: no sync threads") { options.sync = StoreOptions::Sync::Normal; }
  auto reader = open_ok(dir.path());
  StoreWriter writer(open_ok(dir.path(), options));
  // Wakes when done() has something; returns what it got.
  auto wait_done = [&](size_t want) {
    std::vector<StoreWriter::Done> got;
    while (got.size() < want) {
      pollfd p{writer.fd(), POLLIN, 0};
      REQUIRE(::poll(&p, 1, 10000) == 1);
      for (auto& d : writer.done()) got.push_back(std::move(d));
    }
    return got;
  };
  std::vector<uint64_t> batches;
  for (int i = 0; i < 50; ++i) {
    std::vector<StoreWriter::Op> ops;
    ops.push_back([i](Store& s) { return s.put_job({"job" + std::to_string(i), "", "", true}); });
    batches.push_back(writer.submit(std::move(ops)));
  }
  auto done = wait_done(50);
  REQUIRE(done.size() == 50);
  for (size_t i = 0; i < done.size(); ++i) {
    CHECK(done[i].batch == batches[i]);
    CHECK(done[i].status.ok());
  }
  // 50 batches queued faster than one commit: fewer transactions than batches.
  CHECK(writer.commits() >= 1);
  CHECK(writer.commits() <= 50);
  // What was reported committed is visible to another connection, in order.
  auto names = job_names(ok(reader->load()));
  REQUIRE(names.size() == 50);
  CHECK(names.front() == "job0");
  CHECK(names.back() == "job49");

  // A failing write fails its whole group; nothing of it is on disk, and
  // every later batch fails too (the master stops at the first failure).
  std::vector<StoreWriter::Op> bad;
  bad.push_back([](Store& s) { return s.put_job({"half", "", "", true}); });
  bad.push_back([](Store&) -> Status { return make_error("disk on fire"); });
  uint64_t b1 = writer.submit(std::move(bad));
  auto failed = wait_done(1);
  CHECK(failed[0].batch == b1);
  REQUIRE_FALSE(failed[0].status.ok());
  CHECK(failed[0].status.error().message == "disk on fire");
  std::vector<StoreWriter::Op> later;
  later.push_back([](Store& s) { return s.put_job({"later", "", "", true}); });
  uint64_t b2 = writer.submit(std::move(later));
  auto after = wait_done(1);
  CHECK(after[0].batch == b2);
  CHECK_FALSE(after[0].status.ok());
  auto names2 = job_names(ok(reader->load()));
  CHECK(names2.size() == 50);
  writer.wait_all();
  CHECK(writer.submitted() == 52);
}

TEST_CASE("merge_into gives one change that writes what the two would, in order") {
  using Kind = InstanceChange::Kind;
  InstanceChange insert;
  insert.kind = Kind::Insert;
  insert.rec = instance(3);
  insert.added = {transition(0, InstanceState::Queued, 10)};

  InstanceChange assigned;  // only what a progress write carries
  assigned.kind = Kind::Progress;
  assigned.rec.id = 3;
  assigned.rec.state = InstanceState::Assigned;
  assigned.rec.member = "w1";
  assigned.rec.slot = 4;
  assigned.rec.updated_us = 20;
  assigned.added = {transition(1, InstanceState::Assigned, 20, "w1")};

  InstanceChange failed;  // what an update carries
  failed.kind = Kind::Update;
  failed.rec.id = 3;
  failed.rec.state = InstanceState::Failed;
  failed.rec.attempt = 1;
  failed.rec.member = "w1";
  failed.rec.slot = -1;
  failed.rec.exit_code = 2;
  failed.rec.error = "exit 2";
  failed.rec.output = "tail";
  failed.rec.updated_us = 30;
  failed.added = {transition(2, InstanceState::Running, 25, "w1"), transition(3, InstanceState::Failed, 30, "w1", 2)};

  SUBCASE("insert, then progress, then update: one insert with the last values") {
    InstanceChange m = insert;
    merge_into(m, InstanceChange(assigned));
    CHECK(m.kind == Kind::Insert);
    CHECK(m.rec.state == InstanceState::Assigned);
    CHECK(m.rec.slot == 4);
    CHECK(m.rec.params == insert.rec.params);  // from the insert: progress does not carry them
    merge_into(m, InstanceChange(failed));
    CHECK(m.kind == Kind::Insert);
    CHECK(m.rec.state == InstanceState::Failed);
    CHECK(m.rec.slot == -1);
    CHECK(m.rec.exit_code == 2);
    CHECK(m.rec.output == "tail");
    CHECK(m.rec.job == "build");
    CHECK(m.rec.steps_json == insert.rec.steps_json);
    CHECK(m.rec.created_us == insert.rec.created_us);
    REQUIRE(m.added.size() == 4);
    for (uint32_t k = 0; k < 4; ++k) CHECK(m.added[k].seq == k);
  }
  SUBCASE("an update, then progress: still an update, its result columns kept") {
    InstanceChange m = failed;
    InstanceChange requeued = assigned;
    requeued.rec.state = InstanceState::Queued;
    requeued.rec.attempt = 2;
    requeued.added = {transition(4, InstanceState::Queued, 40)};
    merge_into(m, std::move(requeued));
    CHECK(m.kind == Kind::Update);
    CHECK(m.rec.state == InstanceState::Queued);
    CHECK(m.rec.attempt == 2);
    CHECK(m.rec.error == "exit 2");
    CHECK(m.added.size() == 3);
  }
  SUBCASE("progress, then an update: an update") {
    InstanceChange m = assigned;
    merge_into(m, InstanceChange(failed));
    CHECK(m.kind == Kind::Update);
    CHECK(m.rec.error == "exit 2");
    CHECK(m.added.size() == 3);
  }
}

TEST_CASE("write_instances stores what the single writes would, many rows per statement") {
  TempDir dir;
  auto store = open_ok(dir.path());
  using Kind = InstanceChange::Kind;
  // 70 new instances (inserts go a few per statement, 70 is not a multiple),
  // each with two history entries (140: more than one statement's worth).
  std::vector<InstanceChange> changes;
  for (uint64_t id = 1; id <= 70; ++id) {
    InstanceChange c;
    c.kind = Kind::Insert;
    c.rec = instance(id);
    c.rec.params = id % 2 ? std::map<std::string, std::string>{} : c.rec.params;
    c.added = {transition(0, InstanceState::Queued, 10), transition(1, InstanceState::Assigned, 11, "w")};
    c.rec.state = InstanceState::Assigned;
    changes.push_back(std::move(c));
  }
  store->begin_turn();
  ok(store->write_instances(changes));
  ok(store->commit_turn());
  for (uint64_t id : {1, 4, 5, 33, 70}) {
    auto got = ok(store->load_instance(id));
    REQUIRE(got.has_value());
    InstanceRecord want = instance(id, InstanceState::Assigned);
    if (id % 2) want.params.clear();
    check_same(*got, want);
    REQUIRE(got->history.size() == 2);
    CHECK(same(got->history[1], transition(1, InstanceState::Assigned, 11, "w")));
  }
  // Then a progress and an update in one call, and an empty call.
  std::vector<InstanceChange> next(2);
  next[0].kind = Kind::Progress;
  next[0].rec.id = 7;
  next[0].rec.state = InstanceState::Running;
  next[0].rec.member = "w";
  next[0].rec.slot = 3;
  next[0].rec.updated_us = 12;
  next[0].added = {transition(2, InstanceState::Running, 12, "w")};
  next[1].kind = Kind::Update;
  next[1].rec = instance(8, InstanceState::Succeeded);
  next[1].rec.job = "not written by an update";
  next[1].rec.output = "done";
  next[1].rec.updated_us = 13;
  next[1].added = {transition(2, InstanceState::Succeeded, 13, "w", 0)};
  ok(store->write_instances(next));
  ok(store->write_instances(std::vector<InstanceChange>{}));
  auto seven = ok(store->load_instance(7));
  REQUIRE(seven.has_value());
  CHECK(seven->state == InstanceState::Running);
  CHECK(seven->slot == 3);
  CHECK(seven->history.size() == 3);
  auto eight = ok(store->load_instance(8));
  REQUIRE(eight.has_value());
  CHECK(eight->state == InstanceState::Succeeded);
  CHECK(eight->job == "build");
  CHECK(eight->output == "done");
  REQUIRE(eight->history.size() == 3);
  CHECK(eight->history[2].exit_code == std::optional<int32_t>(0));
  CHECK(ids(ok(store->load()).instances).size() == 69);  // 8 is final now
}

TEST_CASE("the store writer merges an instance's changes across the batches of a group, keeping ops in order") {
  TempDir dir;
  auto reader = open_ok(dir.path());
  StoreWriter writer(open_ok(dir.path()));
  using Kind = InstanceChange::Kind;
  auto wait_done = [&](size_t want) {
    std::vector<StoreWriter::Done> got;
    while (got.size() < want) {
      pollfd p{writer.fd(), POLLIN, 0};
      REQUIRE(::poll(&p, 1, 10000) == 1);
      for (auto& d : writer.done()) got.push_back(std::move(d));
    }
    return got;
  };
  // The first batch holds the writer until the next three are queued, so
  // that those three make one group.
  std::promise<void> release, holding;
  auto released = release.get_future().share();
  StoreWriter::Batch hold;
  hold.ops.push_back([released, &holding](Store&) -> Status {
    holding.set_value();
    released.wait();
    return {};
  });
  writer.submit(std::move(hold));
  holding.get_future().wait();

  StoreWriter::Batch created;
  InstanceChange& c = created.instances.emplace_back();
  c.kind = Kind::Insert;
  c.rec = instance(1);
  c.added = {transition(0, InstanceState::Queued, 10)};
  created.next_instance_id = 2;
  created.last_event_seq = 1;
  writer.submit(std::move(created));

  // An op in a later batch sees the earlier batch's instance change.
  std::optional<InstanceState> seen;
  StoreWriter::Batch assigned;
  assigned.ops.push_back([&seen](Store& s) -> Status {
    auto r = s.load_instance(1);
    if (!r.ok()) return r.error();
    if (*r) seen = (*r)->state;
    return {};
  });
  InstanceChange& a = assigned.instances.emplace_back();
  a.kind = Kind::Progress;
  a.rec.id = 1;
  a.rec.state = InstanceState::Assigned;
  a.rec.member = "w1";
  a.rec.slot = 0;
  a.rec.updated_us = 20;
  a.added = {transition(1, InstanceState::Assigned, 20, "w1")};
  assigned.last_event_seq = 2;
  writer.submit(std::move(assigned));

  StoreWriter::Batch finished;
  InstanceChange& f = finished.instances.emplace_back();
  f.kind = Kind::Update;
  f.rec.id = 1;
  f.rec.state = InstanceState::Succeeded;
  f.rec.member = "w1";
  f.rec.output = "ok";
  f.rec.updated_us = 30;
  f.added = {transition(2, InstanceState::Running, 25, "w1"), transition(3, InstanceState::Succeeded, 30, "w1", 0)};
  finished.last_event_seq = 4;
  writer.submit(std::move(finished));

  release.set_value();
  auto done = wait_done(4);
  for (const auto& d : done) CHECK(d.status.ok());
  CHECK(writer.commits() == 2);  // the holding batch, then the three together
  REQUIRE(seen.has_value());
  CHECK(*seen == InstanceState::Queued);

  auto got = ok(reader->load_instance(1));
  REQUIRE(got.has_value());
  InstanceRecord want = instance(1, InstanceState::Succeeded);
  want.member = "w1";
  want.slot = -1;
  want.output = "ok";
  want.updated_us = 30;
  check_same(*got, want);
  REQUIRE(got->history.size() == 4);
  CHECK(same(got->history[3], transition(3, InstanceState::Succeeded, 30, "w1", 0)));
  auto c2 = ok(reader->load());
  CHECK(c2.next_instance_id == 2);
  CHECK(c2.last_event_seq == 4);
}

TEST_CASE("steps and retry policies are stored without their defaults and read back, the full old form too") {
  using zf::proto::StepSpec;
  auto same_steps = [](const std::vector<StepSpec>& a, const std::vector<StepSpec>& b) {
    REQUIRE(a.size() == b.size());
    for (size_t i = 0; i < a.size(); ++i) {
      CHECK(a[i].name == b[i].name);
      CHECK(a[i].kind == b[i].kind);
      CHECK(a[i].argv == b[i].argv);
      CHECK(a[i].builtin == b[i].builtin);
      CHECK(a[i].args == b[i].args);
      CHECK(a[i].env == b[i].env);
      CHECK(a[i].cwd == b[i].cwd);
      CHECK(a[i].timeout_ms == b[i].timeout_ms);
    }
  };
  StepSpec noop;
  noop.name = "step1";
  noop.kind = "builtin";
  noop.builtin = "noop";
  StepSpec full;
  full.name = "build";
  full.kind = "run";
  full.argv = {"make", "-j2", ""};
  full.args = {{"k", "v"}};
  full.env = {{"PATH", "/bin"}, {"EMPTY", ""}};
  full.cwd = "/tmp/x y";
  full.timeout_ms = 1500;
  const std::vector<StepSpec> steps = {noop, full};

  // A builtin step with nothing else set is its name, kind and builtin.
  CHECK(zf::steps_to_json({noop}) == R"([{"builtin":"noop","kind":"builtin","name":"step1"}])");
  auto back = zf::steps_from_json(zf::steps_to_json(steps));
  REQUIRE(back.ok());
  same_steps(back.value(), steps);
  // What schema 4 and older wrote: every field.
  auto old = zf::steps_from_json(
      R"([{"args":{},"argv":[],"builtin":"noop","cwd":"","env":{},"kind":"builtin","name":"step1","timeout_ms":0}])");
  REQUIRE(old.ok());
  same_steps(old.value(), {noop});
  CHECK_FALSE(zf::steps_from_json(R"([{"kind":"run"}])").ok());  // no name
  CHECK_FALSE(zf::steps_from_json(R"({"name":"x","kind":"run"})").ok());
  CHECK_FALSE(zf::steps_from_json(R"([{"name":"x","kind":"run","timeout_ms":"soon"}])").ok());

  // The default retry policy is stored as nothing at all; others as JSON.
  zf::RetryPolicy d;
  CHECK(zf::retry_to_json(d) == "");
  auto rd = zf::retry_from_json("");
  REQUIRE(rd.ok());
  CHECK(rd.value().attempts == d.attempts);
  CHECK(rd.value().on_lost == d.on_lost);
  CHECK(rd.value().max_backoff == d.max_backoff);
  zf::RetryPolicy r;
  r.attempts = 3;
  r.backoff = zf::Millis(250);
  r.on_failed = true;
  r.on_lost = false;
  const std::string text = zf::retry_to_json(r);
  CHECK_FALSE(text.empty());
  auto rr = zf::retry_from_json(text);
  REQUIRE(rr.ok());
  CHECK(rr.value().attempts == 3);
  CHECK(rr.value().backoff == zf::Millis(250));
  CHECK(rr.value().max_backoff == d.max_backoff);
  CHECK(rr.value().on_failed);
  CHECK_FALSE(rr.value().on_lost);
  CHECK_FALSE(rr.value().on_timed_out);
  // Only the one field that differs from the default is enough to write it all.
  zf::RetryPolicy one;
  one.on_timed_out = true;
  auto r1 = zf::retry_from_json(zf::retry_to_json(one));
  REQUIRE(r1.ok());
  CHECK(r1.value().on_timed_out);
}

TEST_CASE("a submission's instances read back queued until each has a row of its own") {
  TempDir dir;
  auto store = open_ok(dir.path());
  SubmissionRecord sub;
  sub.first_id = 10;
  sub.count = 6;  // instances 10 … 15
  sub.job = "bulk";
  sub.queue = "fast";
  sub.priority = 2;
  sub.params = {{"n", "1"}};
  sub.steps_json = R"([{"builtin":"noop"}])";
  sub.retry_json = "";
  sub.timeout_ms = 700;
  sub.created_us = 5'000;
  store->begin_turn();
  ok(store->upsert_instance(instance(3, InstanceState::Succeeded)));  // older, on its own
  ok(store->put_submission(sub));
  // 11 has ended, 13 runs: their rows say so. 20 comes after the submission.
  ok(store->upsert_instance(instance(11, InstanceState::Succeeded, "bulk")));
  ok(store->upsert_instance(instance(13, InstanceState::Running, "bulk")));
  ok(store->upsert_instance(instance(20, InstanceState::Queued, "other")));
  ok(store->commit_turn());

  auto c = ok(store->load());
  CHECK(ids(c.instances) == std::vector<uint64_t>{10, 12, 13, 14, 15, 20});
  CHECK(c.next_instance_id == 21);
  const InstanceRecord& q = c.instances[0];
  CHECK(q.submission == 10);
  CHECK(q.state == InstanceState::Queued);
  CHECK(q.attempt == 1);
  CHECK(q.job == "bulk");
  CHECK(q.queue == "fast");
  CHECK(q.priority == 2);
  CHECK(q.params == sub.params);
  CHECK(q.steps_json == sub.steps_json);
  CHECK(q.timeout_ms == 700);
  CHECK(q.created_us == 5'000);
  REQUIRE(q.history.size() == 1);
  CHECK(same(q.history[0], transition(0, InstanceState::Queued, 5'000)));
  CHECK(c.instances[2].submission == 0);  // 13 has its own row
  CHECK(c.instances[2].state == InstanceState::Running);

  auto one = ok(store->load_instance(14));
  REQUIRE(one.has_value());
  CHECK(one->submission == 10);
  CHECK(one->state == InstanceState::Queued);
  CHECK(ok(store->load_instance(11))->state == InstanceState::Succeeded);
  CHECK(ok(store->load_instance(16)) == std::nullopt);  // past its end
  CHECK(ok(store->load_instance(9)) == std::nullopt);

  CHECK(ids(ok(store->list_instances({}))) == std::vector<uint64_t>{20, 15, 14, 13, 12, 11, 10, 3});
  InstanceFilter page;
  page.limit = 3;
  page.before_id = 15;
  CHECK(ids(ok(store->list_instances(page))) == std::vector<uint64_t>{14, 13, 12});
  page.before_id = 12;
  CHECK(ids(ok(store->list_instances(page))) == std::vector<uint64_t>{11, 10, 3});
  InstanceFilter queued;
  queued.state = InstanceState::Queued;
  CHECK(ids(ok(store->list_instances(queued))) == std::vector<uint64_t>{20, 15, 14, 12, 10});
  InstanceFilter bulk_queued = queued;
  bulk_queued.job = "bulk";
  bulk_queued.limit = 2;
  CHECK(ids(ok(store->list_instances(bulk_queued))) == std::vector<uint64_t>{15, 14});
  InstanceFilter succeeded;
  succeeded.state = InstanceState::Succeeded;
  CHECK(ids(ok(store->list_instances(succeeded))) == std::vector<uint64_t>{11, 3});

  // Pruning leaves 11 alone while the submission is stored: without its row
  // it would read back queued.
  CHECK(ok(store->prune_history(INT64_MAX)) == 1);  // 3 only
  CHECK(ok(store->load_instance(11))->state == InstanceState::Succeeded);

  // Every one gets its row; the submission goes with the last of them.
  store->begin_turn();
  for (uint64_t id : {10, 12, 14, 15}) ok(store->upsert_instance(instance(id, InstanceState::Succeeded, "bulk")));
  ok(store->remove_submission(10));
  ok(store->commit_turn());
  CHECK(ids(ok(store->load()).instances) == std::vector<uint64_t>{13, 20});
  CHECK(ok(store->load_instance(12))->submission == 0);
  CHECK(ok(store->prune_history(INT64_MAX)) == 5);

  // And after a restart, the same.
  store.reset();
  store = open_ok(dir.path());
  CHECK(ids(ok(store->load()).instances) == std::vector<uint64_t>{13, 20});
  CHECK(ok(store->load()).next_instance_id == 21);
}

TEST_CASE("a submission alone sets the next instance id after its last") {
  TempDir dir;
  auto store = open_ok(dir.path());
  SubmissionRecord sub;
  sub.first_id = 1;
  sub.count = 100'000;
  sub.job = "bulk";
  sub.queue = "default";
  ok(store->put_submission(sub));
  auto c = ok(store->load());
  CHECK(c.instances.size() == 100'000);
  CHECK(c.instances.front().id == 1);
  CHECK(c.instances.back().id == 100'000);
  CHECK(c.next_instance_id == 100'001);
  InstanceFilter f;
  f.limit = 2;
  CHECK(ids(ok(store->list_instances(f))) == std::vector<uint64_t>{100'000, 99'999});
}

TEST_CASE("a damaged submission row is a clear error, not a million instances") {
  TempDir dir;
  auto store = open_ok(dir.path());
  SubmissionRecord sub;
  sub.first_id = 1;
  sub.job = "bulk";
  sub.queue = "default";
  sub.count = 0;
  CHECK_FALSE(store->put_submission(sub).ok());
  sub.count = kMaxSubmissionCount + 1;
  CHECK_FALSE(store->put_submission(sub).ok());
  sub.count = 3;
  ok(store->put_submission(sub));
  CHECK(ok(store->load()).instances.size() == 3);
  if (!have_sqlite_shell()) {
    MESSAGE("sqlite3 shell not installed: the damaged row is not made");
    return;
  }
  store.reset();
  for (const char* count : {"-5", "0", "1000000000000"}) {
    shell(dir.db(), std::string("UPDATE submissions SET count = ") + count + ";");
    store = open_ok(dir.path());
    auto loaded = store->load();
    REQUIRE_FALSE(loaded.ok());
    CHECK(loaded.error().message.find(dir.db()) != std::string::npos);
    CHECK(loaded.error().message.find("submission 1 has an invalid count " + std::string(count)) != std::string::npos);
    CHECK_FALSE(store->load_instance(2).ok());
    store.reset();
  }
}
