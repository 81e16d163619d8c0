#include "master/store.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <mutex>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

namespace zf {

namespace {

// --- the schema, as numbered steps. A step is never edited once released:
// a database records the steps it went through, and a newer master applies
// only the ones after that. Add a step; never change one.
struct Migration {
  int version;
  const char* sql;
};

constexpr Migration kMigrations[] = {
    {1, R"sql(
CREATE TABLE schema_version (
  version    INTEGER PRIMARY KEY,
  applied_us INTEGER NOT NULL
);
CREATE TABLE meta (
  key   TEXT PRIMARY KEY,
  value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE jobs (
  name        TEXT PRIMARY KEY,
  source_name TEXT NOT NULL,
  toml        TEXT NOT NULL,
  enabled     INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE queues (
  name        TEXT PRIMARY KEY,
  source_name TEXT NOT NULL,
  toml        TEXT NOT NULL
);
CREATE TABLE instances (
  id               INTEGER PRIMARY KEY,
  job              TEXT NOT NULL,
  queue            TEXT NOT NULL,
  priority         INTEGER NOT NULL,
  attempt          INTEGER NOT NULL,
  state            TEXT NOT NULL,
  params           TEXT NOT NULL,
  steps            TEXT NOT NULL,
  retry            TEXT NOT NULL,
  timeout_ms       INTEGER NOT NULL,
  member           TEXT NOT NULL,
  slot             INTEGER NOT NULL,
  exit_code        INTEGER NOT NULL,
  failed_step      INTEGER NOT NULL,
  duration_ms      INTEGER NOT NULL,
  error            TEXT NOT NULL,
  output           BLOB NOT NULL,
  created_us       INTEGER NOT NULL,
  updated_us       INTEGER NOT NULL,
  cancel_requested INTEGER NOT NULL,
  retry_at_us      INTEGER
);
CREATE TABLE transitions (
  instance  INTEGER NOT NULL,
  seq       INTEGER NOT NULL,
  state     TEXT NOT NULL,
  ts_us     INTEGER NOT NULL,
  attempt   INTEGER NOT NULL,
  member    TEXT NOT NULL,
  exit_code INTEGER,
  PRIMARY KEY (instance, seq)
) WITHOUT ROWID;
)sql"},
    // Browsing history by state (load() reads the live ones) and by job.
    {2, R"sql(
CREATE INDEX instances_by_state ON instances (state, id);
CREATE INDEX instances_by_job ON instances (job, id);
)sql"},
    // An index entry of every instance moved with each of its state changes
    // (three or four per instance): a fifth of the store's work. Only the
    // rare final states keep one, entered once; the others are found by
    // walking the ids from the newest (see list_statement and load).
    // The condition must stay as written: queries repeat it word for word
    // (kUnsuccessfulSql) so that SQLite may use this index.
    {3, R"sql(
DROP INDEX instances_by_state;
CREATE INDEX instances_unsuccessful ON instances (state, id)
  WHERE (state = 'failed' OR state = 'cancelled' OR state = 'timed_out' OR state = 'lost');
)sql"},
    // An instance's history moves into its own row, one line per entry
    // (format in docs/durability.md): the three or four history rows of each
    // instance were a third of the store's work, while the row they belong
    // to is rewritten at each of the same changes anyway. Each line carries
    // its seq, so the order in which group_concat gathers them does not
    // matter: the reader sorts by seq.
    {4, R"sql(
ALTER TABLE instances ADD COLUMN history TEXT NOT NULL DEFAULT '';
UPDATE instances SET history = coalesce((
  SELECT group_concat(json_array(seq, state, ts_us, attempt, member, exit_code) || char(10), '')
  FROM transitions WHERE transitions.instance = instances.id), '');
DROP TABLE transitions;
)sql"},
    // No table changes: from version 5 on, the master leaves defaults out of
    // the `steps` JSON and stores the default retry policy as '' (rows a
    // third smaller, and each row write copies the whole row). The store
    // does not read those texts, but a zforce before version 5 cannot read
    // such rows, so it must refuse the file as newer than itself: this step
    // raises the version for that alone.
    {5, R"sql(
SELECT 1;
)sql"},
    // A bulk submission (`run --count N`) is one row here, not N queued rows:
    // instances first_id … first_id+count-1 share everything but their id.
    // An instance of it gets a row of its own at its first write after
    // that; until then it is queued, as created (docs/durability.md,
    // "Submissions"). The row goes in the transaction that writes the last
    // of its instances' own rows.
    {6, R"sql(
CREATE TABLE submissions (
  first_id   INTEGER PRIMARY KEY,
  count      INTEGER NOT NULL,
  job        TEXT NOT NULL,
  queue      TEXT NOT NULL,
  priority   INTEGER NOT NULL,
  params     TEXT NOT NULL,
  steps      TEXT NOT NULL,
  retry      TEXT NOT NULL,
  timeout_ms INTEGER NOT NULL,
  created_us INTEGER NOT NULL
);
)sql"},
};
static_assert(std::size(kMigrations) == kStoreSchemaVersion, "one migration step per schema version");

constexpr const char* kMetaNextInstanceId = "next_instance_id";
constexpr const char* kMetaLastEventSeq = "last_event_seq";

// States are stored by the names the wire protocol uses (state_name): those
// never change meaning, so the file format inherits that promise.
// A view of a string literal: safe to bind with SQLITE_STATIC.
std::string_view db_state_name(InstanceState s) { return state_name(s); }
std::optional<InstanceState> parse_db_state(std::string_view name) { return parse_state(name); }

// The SQL list of live state names, for WHERE clauses.
constexpr const char* kLiveStatesSql = "('queued','assigned','running')";
// The condition of the partial index instances_unsuccessful (schema 3),
// exactly as the migration wrote it.
constexpr const char* kUnsuccessfulSql =
    "(state = 'failed' OR state = 'cancelled' OR state = 'timed_out' OR state = 'lost')";
bool is_unsuccessful(InstanceState s) {
  return s == InstanceState::Failed || s == InstanceState::Cancelled || s == InstanceState::TimedOut ||
         s == InstanceState::Lost;
}

int64_t wall_now_us() {
  return std::chrono::duration_cast<std::chrono::microseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string hex32(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "0x%08x", v);
  return buf;
}

uint32_t be32(const unsigned char* p) {
  return (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
}

bool file_exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

off_t file_size(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

Status fsync_path(const std::string& path, bool directory) {
  int fd = ::open(path.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd < 0) return make_error("cannot open " + path + " to sync it: " + std::strerror(errno));
  int rc = ::fsync(fd);
  int err = errno;
  ::close(fd);
  if (rc != 0) return make_error("cannot sync " + path + ": " + std::strerror(err));
  return {};
}

// What the first 100 bytes and the size of an existing file say, read with
// plain read(2) so that a file that is not ours is never handed to SQLite.
// `has_wal`: a non-empty -wal file exists; the main file may then legitimately
// be shorter than its header says (a checkpoint was interrupted), and the size
// checks are left to SQLite's own integrity check.
Status check_header(const std::string& path, bool has_wal) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(path + ": cannot open: " + std::strerror(errno));
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    return make_error(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return make_error(path + ": not a regular file");
  }
  unsigned char h[100];
  ssize_t n = ::pread(fd, h, sizeof h, 0);
  int err = errno;
  ::close(fd);
  const std::string refuse = path + ": refusing to use this file as the zforce database: ";
  if (n < 0) return make_error(path + ": cannot read: " + std::strerror(err));
  if (st.st_size == 0) return make_error(refuse + "it is empty (0 bytes); zforce never leaves an empty database");
  if (n < static_cast<ssize_t>(sizeof h))
    return make_error(refuse + "it is truncated or not a database (" + std::to_string(st.st_size) +
                      " bytes, shorter than an SQLite header)");
  if (std::memcmp(h, "SQLite format 3", 16) != 0) return make_error(refuse + "it is not an SQLite database");
  uint32_t page_size = (uint32_t(h[16]) << 8) | h[17];
  if (page_size == 1) page_size = 65536;
  if (page_size < 512 || page_size > 65536 || (page_size & (page_size - 1)) != 0)
    return make_error(refuse + "its SQLite header is corrupt (page size " + std::to_string(page_size) + ")");
  uint32_t app_id = be32(h + 68);
  if (app_id != static_cast<uint32_t>(kStoreApplicationId))
    return make_error(refuse + "it is an SQLite database of another application (application_id " + hex32(app_id) +
                      ", zforce's is " + hex32(static_cast<uint32_t>(kStoreApplicationId)) + ")");
  if (!has_wal) {
    if (st.st_size % page_size != 0)
      return make_error(refuse + "it is truncated (" + std::to_string(st.st_size) +
                        " bytes, not a whole number of " + std::to_string(page_size) + "-byte pages)");
    // The in-header page count is valid when the change counter matches
    // "version-valid-for" (SQLite file format, offsets 24, 28 and 92).
    uint32_t pages = be32(h + 28);
    if (be32(h + 24) == be32(h + 92) && uint64_t(pages) * page_size > uint64_t(st.st_size))
      return make_error(refuse + "it is truncated (the header says " + std::to_string(pages) + " pages of " +
                        std::to_string(page_size) + " bytes, the file has " + std::to_string(st.st_size) +
                        " bytes)");
  }
  return {};
}

struct DbCloser {
  void operator()(sqlite3* db) const { sqlite3_close_v2(db); }
};
using DbPtr = std::unique_ptr<sqlite3, DbCloser>;

struct StmtFinalizer {
  void operator()(sqlite3_stmt* s) const { sqlite3_finalize(s); }
};
using StmtPtr = std::unique_ptr<sqlite3_stmt, StmtFinalizer>;

Error db_error(sqlite3* db, const std::string& path, const std::string& what) {
  return make_error(path + ": " + what + ": " + sqlite3_errmsg(db));
}

Status exec(sqlite3* db, const std::string& path, const char* sql, const std::string& what) {
  char* msg = nullptr;
  if (sqlite3_exec(db, sql, nullptr, nullptr, &msg) != SQLITE_OK) {
    std::string m = msg ? msg : sqlite3_errmsg(db);
    sqlite3_free(msg);
    return make_error(path + ": " + what + ": " + m);
  }
  return {};
}

// Runs a query expected to return one integer (or no row: nullopt).
Result<std::optional<int64_t>> query_int(sqlite3* db, const std::string& path, const char* sql) {
  sqlite3_stmt* raw = nullptr;
  if (sqlite3_prepare_v2(db, sql, -1, &raw, nullptr) != SQLITE_OK) return db_error(db, path, sql);
  StmtPtr s(raw);
  int rc = sqlite3_step(s.get());
  if (rc == SQLITE_DONE) return std::optional<int64_t>{};
  if (rc != SQLITE_ROW) return db_error(db, path, sql);
  if (sqlite3_column_type(s.get(), 0) == SQLITE_NULL) return std::optional<int64_t>{};
  return std::optional<int64_t>{sqlite3_column_int64(s.get(), 0)};
}

// The schema version of a database, 0 for one without a schema_version table.
Result<int> read_schema_version(sqlite3* db, const std::string& path) {
  auto has = query_int(db, path, "SELECT count(*) FROM sqlite_master WHERE type='table' AND name='schema_version'");
  if (!has.ok()) return has.error();
  if (!*has || **has == 0) return 0;
  auto v = query_int(db, path, "SELECT max(version) FROM schema_version");
  if (!v.ok()) return v.error();
  return static_cast<int>(v->value_or(0));
}

// Once per process, before any other SQLite call: no global memory
// statistics (they take a process-wide mutex on every allocation).
void configure_sqlite_once() {
  static std::once_flag once;
  std::call_once(once, [] { sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0); });
}

// Checks an existing database on a read-only connection, which never writes
// to the main file (it has no checkpoint to run): application id, integrity,
// schema version. Returns the schema version.
Result<int> validate_read_only(const std::string& path, int newest_known) {
  const std::string refuse = path + ": refusing to use this file as the zforce database: ";
  sqlite3* raw = nullptr;
  configure_sqlite_once();
  int rc = sqlite3_open_v2(path.c_str(), &raw, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, nullptr);
  DbPtr db(raw);
  if (rc != SQLITE_OK) return make_error(refuse + "cannot open it: " + (raw ? sqlite3_errmsg(raw) : "out of memory"));
  auto app = query_int(db.get(), path, "PRAGMA application_id");
  if (!app.ok()) return make_error(refuse + "it is not a readable SQLite database (" + app.error().message + ")");
  if (app->value_or(0) != kStoreApplicationId)
    return make_error(refuse + "it is an SQLite database of another application (application_id " +
                      hex32(static_cast<uint32_t>(app->value_or(0))) + ")");
  {
    sqlite3_stmt* s_raw = nullptr;
    if (sqlite3_prepare_v2(db.get(), "PRAGMA quick_check(5)", -1, &s_raw, nullptr) != SQLITE_OK)
      return make_error(refuse + "it is corrupt (" + sqlite3_errmsg(db.get()) + ")");
    StmtPtr s(s_raw);
    std::string problems;
    while ((rc = sqlite3_step(s.get())) == SQLITE_ROW) {
      const char* line = reinterpret_cast<const char*>(sqlite3_column_text(s.get(), 0));
      std::string l = line ? line : "";
      if (l == "ok") continue;
      const std::string_view prefix = "*** in database main ***";
      if (l.compare(0, prefix.size(), prefix) == 0) l.erase(0, l.find_first_not_of(" \n", prefix.size()));
      for (size_t at; (at = l.find('\n')) != std::string::npos;) l.replace(at, 1, "; ");
      problems += (problems.empty() ? "" : "; ") + l;
    }
    if (rc != SQLITE_DONE) return make_error(refuse + "it is corrupt (" + sqlite3_errmsg(db.get()) + ")");
    if (!problems.empty()) return make_error(refuse + "it is corrupt (integrity check: " + problems + ")");
  }
  auto version = read_schema_version(db.get(), path);
  if (!version.ok()) return make_error(refuse + "cannot read its schema version (" + version.error().message + ")");
  if (*version == 0) return make_error(refuse + "it has zforce's application id but no schema_version table");
  if (*version > newest_known)
    return make_error(refuse + "it has schema version " + std::to_string(*version) +
                      ", written by a newer zforce; this one knows versions up to " + std::to_string(newest_known));
  return *version;
}

// Applies the migration steps after `from` up to `to`, in one transaction.
Status migrate(sqlite3* db, const std::string& path, int from, int to) {
  if (from >= to) return {};
  if (auto s = exec(db, path, "BEGIN IMMEDIATE", "cannot start the migration"); !s.ok()) return s;
  auto fail = [&](Error e) -> Status {
    sqlite3_exec(db, "ROLLBACK", nullptr, nullptr, nullptr);
    return e;
  };
  // Re-read inside the write lock: nobody migrated it in between.
  auto current = read_schema_version(db, path);
  if (!current.ok()) return fail(current.error());
  if (*current != from) return fail(make_error(path + ": schema version changed while opening"));
  for (const auto& m : kMigrations) {
    if (m.version <= from || m.version > to) continue;
    const std::string what = "migration to schema version " + std::to_string(m.version) + " failed";
    if (auto s = exec(db, path, m.sql, what); !s.ok()) return fail(s.error());
    std::string rec = "INSERT INTO schema_version (version, applied_us) VALUES (" + std::to_string(m.version) +
                      ", " + std::to_string(wall_now_us()) + ")";
    if (auto s = exec(db, path, rec.c_str(), what); !s.ok()) return fail(s.error());
  }
  if (from == 0) {
    std::string app = "PRAGMA application_id = " + std::to_string(kStoreApplicationId);
    if (auto s = exec(db, path, app.c_str(), "cannot set the application id"); !s.ok()) return fail(s.error());
  }
  if (auto s = exec(db, path, "COMMIT", "cannot commit the migration"); !s.ok()) return fail(s.error());
  return {};
}

const char* sync_pragma(StoreOptions::Sync s) {
  switch (s) {
    case StoreOptions::Sync::Off: return "PRAGMA synchronous = OFF";
    case StoreOptions::Sync::Normal: return "PRAGMA synchronous = NORMAL";
    case StoreOptions::Sync::Full: return "PRAGMA synchronous = FULL";
  }
  return "PRAGMA synchronous = FULL";
}

Result<DbPtr> open_read_write(const std::string& path, int flags, const StoreOptions& opt) {
  configure_sqlite_once();
  // Each connection is used by one thread only (the loop's reader, the
  // writer's thread): no per-call mutex.
  flags |= SQLITE_OPEN_NOMUTEX;
  sqlite3* raw = nullptr;
  int rc = sqlite3_open_v2(path.c_str(), &raw, flags, nullptr);
  DbPtr db(raw);
  if (rc != SQLITE_OK) return make_error(path + ": cannot open: " + (raw ? sqlite3_errmsg(raw) : "out of memory"));
  sqlite3_extended_result_codes(db.get(), 1);
  sqlite3_busy_timeout(db.get(), opt.busy_timeout_ms);
  {
    sqlite3_stmt* s_raw = nullptr;
    if (sqlite3_prepare_v2(db.get(), "PRAGMA journal_mode = WAL", -1, &s_raw, nullptr) != SQLITE_OK)
      return db_error(db.get(), path, "cannot switch to WAL mode");
    StmtPtr s(s_raw);
    if (sqlite3_step(s.get()) != SQLITE_ROW) return db_error(db.get(), path, "cannot switch to WAL mode");
    const char* mode = reinterpret_cast<const char*>(sqlite3_column_text(s.get(), 0));
    if (!mode || std::string(mode) != "wal")
      return make_error(path + ": cannot switch to WAL mode (journal_mode is " + (mode ? mode : "?") +
                        "; is the data folder on a file system without shared memory support?)");
  }
  if (auto s = exec(db.get(), path, sync_pragma(opt.sync), "cannot set synchronous"); !s.ok()) return s.error();
  // Keep the WAL file from staying large after a burst (bytes).
  if (auto s = exec(db.get(), path, "PRAGMA journal_size_limit = 67108864", "cannot set journal_size_limit"); !s.ok())
    return s.error();
  return db;
}

// Creates a new database under a temporary name and renames it into place
// only when complete, so that a crash during creation never leaves a
// half-made zforce.db (an empty one would be refused at the next start).
Status create_database(const std::string& path, const std::string& dir, const StoreOptions& opt) {
  const std::string tmp = path + ".new";
  for (const char* suffix : {"", "-wal", "-shm", "-journal"}) ::unlink((tmp + suffix).c_str());
  {
    auto db = open_read_write(tmp, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, opt);
    if (!db.ok()) return db.error();
    if (auto s = migrate(db->get(), tmp, 0, opt.schema_version); !s.ok()) return s;
    // Move everything into the main file so its header (application id,
    // WAL mode) is complete before the rename.
    if (auto s = exec(db->get(), tmp, "PRAGMA wal_checkpoint(TRUNCATE)", "cannot checkpoint"); !s.ok()) return s;
    if (sqlite3_close(db->release()) != SQLITE_OK) return make_error(tmp + ": cannot close the new database");
  }
  if (auto s = fsync_path(tmp, false); !s.ok()) return s;
  if (::rename(tmp.c_str(), path.c_str()) != 0)
    return make_error("cannot rename " + tmp + " to " + path + ": " + std::strerror(errno));
  for (const char* suffix : {"-wal", "-shm"}) ::unlink((tmp + suffix).c_str());
  return fsync_path(dir, true);
}

}  // namespace

bool is_live(InstanceState s) {
  return s == InstanceState::Queued || s == InstanceState::Assigned || s == InstanceState::Running;
}

void merge_into(InstanceChange& earlier, InstanceChange&& later) {
  using Kind = InstanceChange::Kind;
  InstanceRecord& e = earlier.rec;
  InstanceRecord& l = later.rec;
  if (later.kind == Kind::Insert) {
    e = std::move(l);  // every column
  } else {
    e.state = l.state;
    e.attempt = l.attempt;
    e.member = std::move(l.member);
    e.slot = l.slot;
    e.updated_us = l.updated_us;
    if (later.kind == Kind::Update) {
      e.exit_code = l.exit_code;
      e.failed_step = l.failed_step;
      e.duration_ms = l.duration_ms;
      e.error = std::move(l.error);
      e.output = std::move(l.output);
      e.cancel_requested = l.cancel_requested;
      e.retry_at_us = l.retry_at_us;
    }
  }
  earlier.kind = std::max(earlier.kind, later.kind);
  if (earlier.added.empty()) {
    earlier.added = std::move(later.added);
  } else {
    for (auto& t : later.added) earlier.added.push_back(std::move(t));
  }
}

// --- statements

namespace {

// A cached prepared statement in use: binds by position (1-based), steps,
// and resets itself when the scope ends, so the statement is ready for the
// next call and holds no read snapshot open.
class Use {
 public:
  explicit Use(sqlite3_stmt* s) : s_(s) {}
  // Every call binds every parameter, so bindings need no clearing.
  ~Use() { sqlite3_reset(s_); }
  Use(const Use&) = delete;
  Use& operator=(const Use&) = delete;

  Use& i64(int64_t v) {
    sqlite3_bind_int64(s_, ++n_, v);
    return *this;
  }
  Use& text(std::string_view v) {
    sqlite3_bind_text(s_, ++n_, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
    return *this;
  }
  Use& blob(std::string_view v) {
    // A zero-length blob, not NULL, for an empty string.
    if (v.empty())
      sqlite3_bind_zeroblob(s_, ++n_, 0);
    else
      sqlite3_bind_blob(s_, ++n_, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
    return *this;
  }
  Use& null() {
    sqlite3_bind_null(s_, ++n_);
    return *this;
  }
  template <class T>
  Use& opt_i64(const std::optional<T>& v) {
    return v ? i64(static_cast<int64_t>(*v)) : null();
  }
  int step() { return sqlite3_step(s_); }

  int64_t col_i64(int c) const { return sqlite3_column_int64(s_, c); }
  bool col_null(int c) const { return sqlite3_column_type(s_, c) == SQLITE_NULL; }
  // Valid until the next step or reset.
  std::string_view col_view(int c) const {
    const void* p = sqlite3_column_blob(s_, c);
    int n = sqlite3_column_bytes(s_, c);
    return p ? std::string_view(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string_view();
  }
  std::string col_text(int c) const {
    const void* p = sqlite3_column_blob(s_, c);  // blob access: no text conversion, any bytes
    int n = sqlite3_column_bytes(s_, c);
    return p ? std::string(static_cast<const char*>(p), static_cast<size_t>(n)) : std::string();
  }

 private:
  sqlite3_stmt* s_;
  int n_ = 0;
};

constexpr const char* kInstanceColumns =
    "id, job, queue, priority, attempt, state, params, steps, retry, timeout_ms, member, slot, exit_code, "
    "failed_step, duration_ms, error, output, created_us, updated_us, cancel_requested, retry_at_us, history";
constexpr const char* kSubmissionColumns =
    "first_id, count, job, queue, priority, params, steps, retry, timeout_ms, created_us";

// Whether ids first … first+count-1 make a submission the store accepts
// (a stored negative number arrives here as a huge one and fails too).
bool submission_range_ok(uint64_t first, uint64_t count) {
  return first >= 1 && count >= 1 && count <= kMaxSubmissionCount && first <= uint64_t(INT64_MAX) - count;
}

// Two lists sorted by id (both ascending, or both descending) as one.
std::vector<InstanceRecord> merged_by_id(std::vector<InstanceRecord> a, std::vector<InstanceRecord> b,
                                         bool descending) {
  std::vector<InstanceRecord> out;
  out.reserve(a.size() + b.size());
  std::merge(std::make_move_iterator(a.begin()), std::make_move_iterator(a.end()), std::make_move_iterator(b.begin()),
             std::make_move_iterator(b.end()), std::back_inserter(out),
             [descending](const InstanceRecord& x, const InstanceRecord& y) {
               return descending ? x.id > y.id : x.id < y.id;
             });
  return out;
}

// Instance `id` of submission `s` as it is until it has a row of its own:
// queued at attempt 1 since its creation.
InstanceRecord queued_of(const SubmissionRecord& s, uint64_t id) {
  InstanceRecord r;
  r.id = id;
  r.job = s.job;
  r.queue = s.queue;
  r.priority = s.priority;
  r.params = s.params;
  r.steps_json = s.steps_json;
  r.retry_json = s.retry_json;
  r.timeout_ms = s.timeout_ms;
  r.created_us = r.updated_us = s.created_us;
  r.history.push_back({0, InstanceState::Queued, s.created_us, 1, "", std::nullopt});
  r.submission = s.first_id;
  return r;
}

// Member names and states are plain words; anything else goes through the
// JSON library's own escaping.
void append_json_string(std::string& out, std::string_view v) {
  bool plain = true;
  for (char ch : v) {
    auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c >= 0x7f || c == '"' || c == '\\') {
      plain = false;
      break;
    }
  }
  if (plain) {
    out += '"';
    out += v;
    out += '"';
  } else {
    out += nlohmann::json(std::string(v)).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
}

// One history entry as a line of the `history` column:
// [seq,"state",ts_us,attempt,"member",exit_code or null] and a newline.
void append_history_line(std::string& out, const TransitionRecord& t) {
  // to_chars, not to_string: a 16-digit time does not fit std::string's
  // inline buffer, and this runs for every transition the writer stores.
  char num[24];
  auto add = [&](auto v) { out.append(num, static_cast<size_t>(std::to_chars(num, num + sizeof num, v).ptr - num)); };
  out += '[';
  add(t.seq);
  out += ',';
  append_json_string(out, state_name(t.state));
  out += ',';
  add(t.ts_us);
  out += ',';
  add(t.attempt);
  out += ',';
  append_json_string(out, t.member);
  out += ',';
  if (t.exit_code) add(*t.exit_code);
  else out += "null";
  out += "]\n";
}

// The entries of a `history` column in seq order; a seq written twice keeps
// its last line (as the old table's INSERT OR REPLACE did).
Result<std::vector<TransitionRecord>> parse_history(std::string_view text) {
  std::vector<TransitionRecord> out;
  size_t line_no = 0;
  while (!text.empty()) {
    size_t end = text.find('\n');
    std::string_view line = text.substr(0, end);
    text = end == std::string_view::npos ? std::string_view() : text.substr(end + 1);
    ++line_no;
    if (line.empty()) continue;
    auto bad = [&](const std::string& why) { return make_error("history line " + std::to_string(line_no) + ": " + why); };
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_array() || j.size() != 6) return bad("not an array of 6 values");
    if (!j[0].is_number_unsigned() || !j[1].is_string() || !j[2].is_number_integer() || !j[3].is_number_unsigned() ||
        !j[4].is_string() || !(j[5].is_null() || j[5].is_number_integer()))
      return bad("a value of the wrong type");
    TransitionRecord t;
    t.seq = j[0].get<uint32_t>();
    auto st = parse_state(j[1].get_ref<const std::string&>());
    if (!st) return bad("unknown state '" + j[1].get<std::string>() + "'");
    t.state = *st;
    t.ts_us = j[2].get<int64_t>();
    t.attempt = j[3].get<uint32_t>();
    t.member = j[4].get<std::string>();
    if (!j[5].is_null()) t.exit_code = j[5].get<int32_t>();
    out.push_back(std::move(t));
  }
  auto by_seq = [](const TransitionRecord& a, const TransitionRecord& b) { return a.seq < b.seq; };
  if (!std::is_sorted(out.begin(), out.end(), by_seq)) std::stable_sort(out.begin(), out.end(), by_seq);
  size_t kept = 0;
  for (size_t i = 0; i < out.size(); ++i) {
    if (kept > 0 && out[kept - 1].seq == out[i].seq) {
      out[kept - 1] = std::move(out[i]);
    } else {
      if (kept != i) out[kept] = std::move(out[i]);
      ++kept;
    }
  }
  out.resize(kept);
  return out;
}

std::string params_to_json(const std::map<std::string, std::string>& params) {
  if (params.empty()) return "{}";  // most instances: no JSON object to build
  nlohmann::json j = nlohmann::json::object();
  for (const auto& [k, v] : params) j[k] = v;
  // `replace`: invalid UTF-8 is stored as U+FFFD rather than throwing.
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

// The rows one multi-row INSERT carries at most: a statement per row costs
// about as much again as a small row itself (step, reset, VDBE setup).
// Instance rows go only 4 at a time: a statement of more rows needs a
// statement journal that, in a transaction larger than the page cache (a big
// `run --count`), made SQLite spill and rewrite pages: 3 to 5 times the WAL
// writes for 100,000 inserts (measured with 8 and 32 rows; 1 to 4 rows write
// the same as one by one).
constexpr size_t kInstanceRowsPerStatement = 4;

// One statement per row count (1 … kInstanceRowsPerStatement), prepared on first use.
using RowStatements = StmtPtr[kInstanceRowsPerStatement + 1];

// INSERT … VALUES (?,…),(?,…) … for `rows` rows of `columns` parameters.
std::string values_sql(size_t rows, size_t columns) {
  std::string row = "(";
  for (size_t c = 0; c < columns; ++c) row += c ? ",?" : "?";
  row += ")";
  std::string out;
  out.reserve(rows * (row.size() + 1));
  for (size_t r = 0; r < rows; ++r) {
    if (r) out += ",";
    out += row;
  }
  return out;
}

constexpr size_t kInstanceColumnCount = 22;
constexpr const char* kInstanceUpsertTail =
    " ON CONFLICT (id) DO UPDATE SET job=excluded.job, queue=excluded.queue, "
    "priority=excluded.priority, attempt=excluded.attempt, state=excluded.state, "
    "params=excluded.params, steps=excluded.steps, retry=excluded.retry, "
    "timeout_ms=excluded.timeout_ms, member=excluded.member, slot=excluded.slot, "
    "exit_code=excluded.exit_code, failed_step=excluded.failed_step, "
    "duration_ms=excluded.duration_ms, error=excluded.error, output=excluded.output, "
    "created_us=excluded.created_us, updated_us=excluded.updated_us, "
    "cancel_requested=excluded.cancel_requested, retry_at_us=excluded.retry_at_us, "
    "history=instances.history || excluded.history";

std::string instance_upsert_sql(size_t rows) {
  return std::string("INSERT INTO instances (") + kInstanceColumns + ") VALUES " +
         values_sql(rows, kInstanceColumnCount) + kInstanceUpsertTail;
}

Result<std::map<std::string, std::string>> params_from_json(const std::string& text) {
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return make_error("params are not a JSON object");
  std::map<std::string, std::string> out;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it.value().is_string()) return make_error("param '" + it.key() + "' is not a string");
    out[it.key()] = it.value().get_ref<const std::string&>();
  }
  return out;
}

}  // namespace

struct Store::Impl {
  DbPtr db;
  std::string path;
  StoreOptions opt;
  int version = 0;

  bool turn_open = false;
  bool txn_open = false;
  std::optional<Error> turn_error;  // the first failed write of the turn

  // Prepared once, at open (SQLITE_PREPARE_PERSISTENT).
  StmtPtr begin, commit, rollback;
  StmtPtr put_job, remove_job, put_queue, remove_queue;
  StmtPtr update_instance, update_progress, set_meta, get_meta, all_meta;
  // Instance upserts, by rows per statement.
  RowStatements upsert_rows;
  // The params JSON and history lines of the rows being bound.
  std::string params_scratch[kInstanceRowsPerStatement];
  std::string history_scratch[kInstanceRowsPerStatement];
  StmtPtr load_jobs, load_queues, load_live, load_instance, max_instance_id;
  StmtPtr append_history, prune_instances;
  StmtPtr put_submission, remove_submission, load_submissions, submission_of, row_ids_up, row_ids_down;
  StmtPtr list_submissions[2];  // [0] all, [1] of one job
  // list_instances: one statement per combination of filters (job, state,
  // before_id), prepared on first use, so each can use its index.
  StmtPtr list[16];

  Error err(const std::string& what) const { return db_error(db.get(), path, what); }

  Status prepare(StmtPtr& out, const std::string& sql) {
    sqlite3_stmt* raw = nullptr;
    if (sqlite3_prepare_v3(db.get(), sql.c_str(), -1, SQLITE_PREPARE_PERSISTENT, &raw, nullptr) != SQLITE_OK)
      return err("cannot prepare '" + sql + "'");
    out.reset(raw);
    return {};
  }

  Status prepare_all() {
    const std::string cols = kInstanceColumns;
    // Final instances last updated before ?1, oldest id first, at most ?2.
    // Not one inside a submission (they do not overlap: the nearest one
    // starting at or below the id is the only one that can hold it).
    std::string prunable = "SELECT id FROM instances WHERE state NOT IN " + std::string(kLiveStatesSql) +
                           " AND updated_us < ?1 AND NOT EXISTS (SELECT 1 FROM (SELECT first_id, count FROM "
                           "submissions WHERE first_id <= instances.id ORDER BY first_id DESC LIMIT 1) s "
                           "WHERE instances.id < s.first_id + s.count) ORDER BY id LIMIT ?2";
    const std::string sub_cols = kSubmissionColumns;
    const std::pair<StmtPtr*, std::string> all[] = {
        {&begin, "BEGIN IMMEDIATE"},
        {&commit, "COMMIT"},
        {&rollback, "ROLLBACK"},
        {&put_job,
         "INSERT INTO jobs (name, source_name, toml, enabled) VALUES (?,?,?,?) ON CONFLICT (name) DO UPDATE SET "
         "source_name=excluded.source_name, toml=excluded.toml, enabled=excluded.enabled"},
        {&remove_job, "DELETE FROM jobs WHERE name = ?"},
        {&put_queue,
         "INSERT INTO queues (name, source_name, toml) VALUES (?,?,?) ON CONFLICT (name) DO UPDATE SET "
         "source_name=excluded.source_name, toml=excluded.toml"},
        {&remove_queue, "DELETE FROM queues WHERE name = ?"},
        {&set_meta, "INSERT OR REPLACE INTO meta (key, value) VALUES (?,?)"},
        {&get_meta, "SELECT value FROM meta WHERE key = ?"},
        {&all_meta, "SELECT key, value FROM meta ORDER BY key"},
        {&load_jobs, "SELECT name, source_name, toml, enabled FROM jobs ORDER BY rowid"},
        {&load_queues, "SELECT name, source_name, toml FROM queues ORDER BY rowid"},
    };
    for (const auto& [stmt, sql] : all)
      if (auto s = prepare(*stmt, sql); !s.ok()) return s;
    if (!instances_usable()) return {};
    const std::pair<StmtPtr*, std::string> of_instances[] = {
        {&update_progress,
         "UPDATE instances SET state=?, attempt=?, member=?, slot=?, updated_us=?, history=history || ? WHERE id=?"},
        {&update_instance,
         "UPDATE instances SET attempt=?, state=?, member=?, slot=?, exit_code=?, failed_step=?, duration_ms=?, "
         "error=?, output=?, updated_us=?, cancel_requested=?, retry_at_us=?, history=history || ? WHERE id=?"},
        {&append_history, "UPDATE instances SET history=history || ? WHERE id=?"},
        // Schema 3: no index on live states; at start-up the whole table is
        // read once (as quick_check has just done).
        {&load_live, "SELECT " + cols + " FROM instances WHERE state IN " + kLiveStatesSql + " ORDER BY id"},
        {&load_instance, "SELECT " + cols + " FROM instances WHERE id = ?"},
        {&max_instance_id,
         "SELECT max(coalesce((SELECT max(id) FROM instances), 0), "
         "coalesce((SELECT max(first_id + count - 1) FROM submissions), 0))"},
        {&prune_instances, "DELETE FROM instances WHERE id IN (" + prunable + ")"},
        {&put_submission, "INSERT INTO submissions (" + sub_cols + ") VALUES (?,?,?,?,?,?,?,?,?,?)"},
        {&remove_submission, "DELETE FROM submissions WHERE first_id = ?"},
        {&load_submissions, "SELECT " + sub_cols + " FROM submissions ORDER BY first_id"},
        {&submission_of, "SELECT " + sub_cols + " FROM submissions WHERE first_id <= ? ORDER BY first_id DESC LIMIT 1"},
        {&row_ids_up, "SELECT id FROM instances WHERE id BETWEEN ? AND ? ORDER BY id"},
        {&row_ids_down, "SELECT id FROM instances WHERE id BETWEEN ? AND ? ORDER BY id DESC"},
        {&list_submissions[0], "SELECT " + sub_cols + " FROM submissions WHERE first_id < ? ORDER BY first_id DESC"},
        {&list_submissions[1],
         "SELECT " + sub_cols + " FROM submissions WHERE first_id < ? AND job = ? ORDER BY first_id DESC"},
    };
    for (const auto& [stmt, sql] : of_instances)
      if (auto s = prepare(*stmt, sql); !s.ok()) return s;
    return {};
  }

  // Instances are read and written in the current schema only; a store
  // opened at an older version (StoreOptions::schema_version, tests that make
  // old databases) has jobs, queues and meta, nothing more.
  bool instances_usable() const { return version == kStoreSchemaVersion; }
  Status need_instances() const {
    if (instances_usable()) return {};
    return make_error(path + ": opened at schema version " + std::to_string(version) +
                      ": instances are readable and writable only at version " + std::to_string(kStoreSchemaVersion));
  }

  // Before a write: inside a turn, the turn's transaction is started at its
  // first write; a turn that already failed takes no more writes.
  Status before_write() {
    if (!turn_open) return {};
    if (turn_error) return make_error("an earlier write of this turn failed: " + turn_error->message);
    if (txn_open) return {};
    Use u(begin.get());
    if (u.step() != SQLITE_DONE) return fail_turn(err("cannot begin the turn's transaction"));
    txn_open = true;
    return {};
  }

  Status fail_turn(Error e) {
    if (turn_open && !turn_error) turn_error = e;
    return e;
  }

  // Steps a bound write statement and reports its failure (poisoning the turn).
  // `what` builds the message only on failure: the hot writes allocate nothing.
  template <class What>
  Status finish_write(Use& u, What&& what) {
    if (u.step() == SQLITE_DONE) return {};
    if constexpr (std::is_invocable_v<What>) return fail_turn(err(what()));
    else return fail_turn(err(std::string(what)));
  }

  void roll_back() {
    if (txn_open || !sqlite3_get_autocommit(db.get())) {
      Use u(rollback.get());
      u.step();
    }
    txn_open = false;
  }

  sqlite3_stmt* rows_statement(RowStatements& cache, size_t rows, std::string (*sql)(size_t)) {
    if (!cache[rows] && !prepare(cache[rows], sql(rows)).ok()) return nullptr;
    return cache[rows].get();
  }

  // Member, slot, exit code, failed step, duration, error, output: listed in
  // this order by both the upsert and the update.
  static Use& bind_outcome(Use& u, const InstanceRecord& r) {
    return u.text(r.member)
        .i64(r.slot)
        .i64(r.exit_code)
        .i64(r.failed_step)
        .i64(static_cast<int64_t>(r.duration_ms))
        .text(r.error)
        .blob(r.output);
  }

  // The history lines of `added`, in `out` (reused: no allocation once grown).
  static std::string_view history_lines(std::string& out, std::span<const TransitionRecord> added) {
    out.clear();
    for (const auto& t : added) append_history_line(out, t);
    return out;
  }

  // Upserts n (1 … kInstanceRowsPerStatement) instances in one statement;
  // added(k) gives the history entries row k appends.
  template <class Get, class Added>
  Status upsert(size_t n, Get&& record, Added&& added) {
    sqlite3_stmt* stmt = rows_statement(upsert_rows, n, instance_upsert_sql);
    if (!stmt) return fail_turn(err("cannot prepare the instance upsert"));
    Use u(stmt);
    for (size_t k = 0; k < n; ++k) {
      const InstanceRecord& r = record(k);
      params_scratch[k] = params_to_json(r.params);
      u.i64(static_cast<int64_t>(r.id))
          .text(r.job)
          .text(r.queue)
          .i64(r.priority)
          .i64(r.attempt)
          .text(db_state_name(r.state))
          .text(params_scratch[k])
          .text(r.steps_json)
          .text(r.retry_json)
          .i64(static_cast<int64_t>(r.timeout_ms));
      bind_outcome(u, r)
          .i64(r.created_us)
          .i64(r.updated_us)
          .i64(r.cancel_requested ? 1 : 0)
          .opt_i64(r.retry_at_us)
          .text(history_lines(history_scratch[k], added(k)));
    }
    return finish_write(u, [&] {
      return "cannot store instance " + std::to_string(record(0).id) +
             (n > 1 ? " (and " + std::to_string(n - 1) + " more in the same statement)" : "");
    });
  }

  Status update(const InstanceRecord& r, std::span<const TransitionRecord> added) {
    Use u(update_instance.get());
    u.i64(r.attempt).text(db_state_name(r.state));
    bind_outcome(u, r)
        .i64(r.updated_us)
        .i64(r.cancel_requested ? 1 : 0)
        .opt_i64(r.retry_at_us)
        .text(history_lines(history_scratch[0], added))
        .i64(static_cast<int64_t>(r.id));
    return finish_write(u, [&] { return "cannot store instance " + std::to_string(r.id); });
  }

  Status progress(uint64_t id, InstanceState state, uint32_t attempt, std::string_view member, int slot,
                  int64_t updated_us, std::span<const TransitionRecord> added) {
    Use u(update_progress.get());
    u.text(db_state_name(state)).i64(attempt).text(member).i64(slot).i64(updated_us);
    u.text(history_lines(history_scratch[0], added)).i64(static_cast<int64_t>(id));
    return finish_write(u, [&] { return "cannot store instance " + std::to_string(id); });
  }

  Result<InstanceRecord> read_instance(Use& u) const {
    InstanceRecord r;
    r.id = static_cast<uint64_t>(u.col_i64(0));
    r.job = u.col_text(1);
    r.queue = u.col_text(2);
    r.priority = static_cast<int>(u.col_i64(3));
    r.attempt = static_cast<uint32_t>(u.col_i64(4));
    std::string state = u.col_text(5);
    auto st = parse_db_state(state);
    if (!st) return make_error(path + ": instance " + std::to_string(r.id) + " has an unknown state '" + state + "'");
    r.state = *st;
    auto params = params_from_json(u.col_text(6));
    if (!params.ok()) return make_error(path + ": instance " + std::to_string(r.id) + ": " + params.error().message);
    r.params = std::move(params.value());
    r.steps_json = u.col_text(7);
    r.retry_json = u.col_text(8);
    r.timeout_ms = static_cast<uint64_t>(u.col_i64(9));
    r.member = u.col_text(10);
    r.slot = static_cast<int>(u.col_i64(11));
    r.exit_code = static_cast<int32_t>(u.col_i64(12));
    r.failed_step = static_cast<int32_t>(u.col_i64(13));
    r.duration_ms = static_cast<uint64_t>(u.col_i64(14));
    r.error = u.col_text(15);
    r.output = u.col_text(16);
    r.created_us = u.col_i64(17);
    r.updated_us = u.col_i64(18);
    r.cancel_requested = u.col_i64(19) != 0;
    if (!u.col_null(20)) r.retry_at_us = u.col_i64(20);
    return r;
  }

  Result<SubmissionRecord> read_submission(Use& u) const {
    SubmissionRecord r;
    const int64_t first = u.col_i64(0), count = u.col_i64(1);
    if (!submission_range_ok(static_cast<uint64_t>(first), static_cast<uint64_t>(count)))
      return make_error(path + ": submission " + std::to_string(first) + " has an invalid count " +
                        std::to_string(count) + " (1 to " + std::to_string(kMaxSubmissionCount) + ")");
    r.first_id = static_cast<uint64_t>(first);
    r.count = static_cast<uint64_t>(count);
    r.job = u.col_text(2);
    r.queue = u.col_text(3);
    r.priority = static_cast<int>(u.col_i64(4));
    auto params = params_from_json(u.col_text(5));
    if (!params.ok())
      return make_error(path + ": submission " + std::to_string(r.first_id) + ": " + params.error().message);
    r.params = std::move(params.value());
    r.steps_json = u.col_text(6);
    r.retry_json = u.col_text(7);
    r.timeout_ms = static_cast<uint64_t>(u.col_i64(8));
    r.created_us = u.col_i64(9);
    return r;
  }

  // Calls f(id) for each id in [lo, hi] that has no row of its own, in
  // ascending or descending order, while f returns true.
  template <class F>
  Status rowless(uint64_t lo, uint64_t hi, bool descending, F&& f) {
    if (lo > hi) return {};
    Use u(descending ? row_ids_down.get() : row_ids_up.get());
    u.i64(static_cast<int64_t>(lo)).i64(static_cast<int64_t>(hi));
    // Positions in walking order: 0 is lo ascending, hi descending.
    auto id_at = [&](uint64_t k) { return descending ? hi - k : lo + k; };
    auto rank = [&](uint64_t id) { return descending ? hi - id : id - lo; };
    uint64_t walked = 0;
    int rc;
    while ((rc = u.step()) == SQLITE_ROW) {
      const uint64_t row = rank(static_cast<uint64_t>(u.col_i64(0)));
      for (; walked < row; ++walked)
        if (!f(id_at(walked))) return {};
      walked = row + 1;
    }
    if (rc != SQLITE_DONE)
      return err("cannot read the instances " + std::to_string(lo) + " to " + std::to_string(hi));
    for (; walked < hi - lo + 1; ++walked)
      if (!f(id_at(walked))) return {};
    return {};
  }

  // The history of a row read by read_instance (its column 21).
  Status read_history(Use& u, InstanceRecord& r) const {
    auto h = parse_history(u.col_view(21));
    if (!h.ok()) return make_error(path + ": instance " + std::to_string(r.id) + ": " + h.error().message);
    r.history = std::move(h.value());
    return {};
  }

  Result<std::optional<std::string>> meta(std::string_view key) {
    Use u(get_meta.get());
    u.text(key);
    int rc = u.step();
    if (rc == SQLITE_DONE) return std::optional<std::string>{};
    if (rc != SQLITE_ROW) return err("cannot read meta '" + std::string(key) + "'");
    return std::optional<std::string>{u.col_text(0)};
  }

  sqlite3_stmt* list_statement(const InstanceFilter& f) {
    // From schema 3 on only the unsuccessful final states have an index;
    // any other state is found walking the ids down from the newest, which
    // is quick for the usual questions (what is queued, running, succeeded
    // lately) and reads the whole table for a state nobody is in.
    const bool indexed_state = f.state && is_unsuccessful(*f.state) && version >= 3;
    int key = (f.job ? 1 : 0) | (f.state ? 2 : 0) | (f.before_id ? 4 : 0) | (indexed_state ? 8 : 0);
    if (!list[key]) {
      std::string sql = std::string("SELECT ") + kInstanceColumns + " FROM instances WHERE 1";
      if (f.job) sql += " AND job = ?";
      if (f.state) sql += " AND state = ?";
      if (indexed_state) sql += std::string(" AND ") + kUnsuccessfulSql;
      if (f.before_id) sql += " AND id < ?";
      sql += " ORDER BY id DESC LIMIT ?";
      if (!prepare(list[key], sql).ok()) return nullptr;
    }
    return list[key].get();
  }
};

Result<std::unique_ptr<Store>> Store::open(const std::string& dir, const StoreOptions& options) {
  if (options.schema_version < 1 || options.schema_version > kStoreSchemaVersion)
    return make_error("store: schema_version option out of range");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return make_error("cannot create data folder '" + dir + "': " + ec.message());
  const std::string path = (std::filesystem::path(dir) / kStoreFileName).string();

  if (!file_exists(path)) {
    if (auto s = create_database(path, dir, options); !s.ok()) return s.error();
  }
  // Whatever is there now: check it before writing a single byte to it.
  const std::string wal = path + "-wal", shm = path + "-shm";
  const bool had_wal = file_exists(wal), had_shm = file_exists(shm);
  if (auto s = check_header(path, file_size(wal) > 0); !s.ok()) return s.error();
  auto version = validate_read_only(path, options.schema_version);
  if (!version.ok()) {
    // A read-only connection may have created empty -wal/-shm files beside a
    // file it then refused; leave the folder as it was.
    if (!had_wal && file_size(wal) == 0) ::unlink(wal.c_str());
    if (!had_shm && file_exists(shm)) ::unlink(shm.c_str());
    return version.error();
  }

  auto impl = std::make_unique<Impl>();
  impl->path = path;
  impl->opt = options;
  auto db = open_read_write(path, SQLITE_OPEN_READWRITE, options);
  if (!db.ok()) return db.error();
  impl->db = std::move(db.value());
  if (auto s = migrate(impl->db.get(), path, *version, options.schema_version); !s.ok()) return s.error();
  impl->version = options.schema_version;
  if (auto s = impl->prepare_all(); !s.ok()) return s.error();
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Store::~Store() {
  if (!impl_) return;
  impl_->roll_back();
  // Statements are finalized before the connection is closed (member order
  // would do the opposite).
  impl_->begin.reset();
  impl_->commit.reset();
  impl_->rollback.reset();
  impl_->put_job.reset();
  impl_->remove_job.reset();
  impl_->put_queue.reset();
  impl_->remove_queue.reset();
  impl_->update_progress.reset();
  impl_->update_instance.reset();
  for (auto& s : impl_->upsert_rows) s.reset();
  impl_->set_meta.reset();
  impl_->get_meta.reset();
  impl_->all_meta.reset();
  impl_->load_jobs.reset();
  impl_->load_queues.reset();
  impl_->load_live.reset();
  impl_->load_instance.reset();
  impl_->max_instance_id.reset();
  impl_->append_history.reset();
  impl_->prune_instances.reset();
  for (auto& s : impl_->list) s.reset();
  impl_->db.reset();
}

const std::string& Store::path() const { return impl_->path; }
StoreOptions::Sync Store::sync() const { return impl_->opt.sync; }

Result<std::unique_ptr<WalSyncer>> Store::defer_syncs() {
  Impl& d = *impl_;
  if (d.turn_open || d.txn_open) return make_error("store: defer_syncs inside a turn");
  // The connection has its WAL open (WAL mode, and open() has read the
  // schema); the file keeps its inode while the connection lives.
  const std::string wal = d.path + "-wal";
  int fd = ::open(wal.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error("cannot open " + wal + " to sync it: " + std::strerror(errno));
  auto syncer = std::make_unique<WalSyncer>(wal, fd);
  if (auto s = exec(d.db.get(), d.path, "PRAGMA synchronous = NORMAL", "cannot set synchronous"); !s.ok())
    return s.error();
  return syncer;
}

WalSyncer::~WalSyncer() {
  if (fd_ >= 0) ::close(fd_);
}

Status WalSyncer::sync() const {
  if (::fdatasync(fd_) != 0) return make_error("cannot sync " + path_ + ": " + std::strerror(errno));
  return {};
}
int Store::schema_version() const { return impl_->version; }
bool Store::in_turn() const { return impl_->turn_open; }

void Store::begin_turn() {
  // A turn inside a turn is the master's bug; keep the outer one.
  if (impl_->turn_open) return;
  impl_->turn_open = true;
  impl_->turn_error.reset();
}

Status Store::commit_turn() {
  Impl& d = *impl_;
  if (!d.turn_open) return {};
  d.turn_open = false;
  if (d.turn_error) {
    Error e = *d.turn_error;
    d.turn_error.reset();
    d.roll_back();
    return make_error("the turn was rolled back: " + e.message);
  }
  if (!d.txn_open) return {};  // no writes
  Use u(d.commit.get());
  if (u.step() != SQLITE_DONE) {
    Error e = d.err("cannot commit the turn");
    d.roll_back();
    return make_error(e.message + " (the turn was rolled back)");
  }
  d.txn_open = false;
  return {};
}

void Store::roll_back_turn() {
  Impl& d = *impl_;
  if (!d.turn_open) return;
  d.turn_open = false;
  d.turn_error.reset();
  d.roll_back();
}

Status Store::put_job(const JobRecord& job) {
  if (auto s = impl_->before_write(); !s.ok()) return s;
  Use u(impl_->put_job.get());
  u.text(job.name).text(job.source_name).text(job.text).i64(job.enabled ? 1 : 0);
  return impl_->finish_write(u, "cannot store job '" + job.name + "'");
}

Status Store::remove_job(const std::string& name) {
  if (auto s = impl_->before_write(); !s.ok()) return s;
  Use u(impl_->remove_job.get());
  u.text(name);
  return impl_->finish_write(u, "cannot remove job '" + name + "'");
}

Status Store::put_queue(const QueueRecord& queue) {
  if (auto s = impl_->before_write(); !s.ok()) return s;
  Use u(impl_->put_queue.get());
  u.text(queue.name).text(queue.source_name).text(queue.text);
  return impl_->finish_write(u, "cannot store queue '" + queue.name + "'");
}

Status Store::remove_queue(const std::string& name) {
  if (auto s = impl_->before_write(); !s.ok()) return s;
  Use u(impl_->remove_queue.get());
  u.text(name);
  return impl_->finish_write(u, "cannot remove queue '" + name + "'");
}

Status Store::upsert_instance(const InstanceRecord& r) {
  if (auto s = impl_->need_instances(); !s.ok()) return s;
  if (auto s = impl_->before_write(); !s.ok()) return s;
  return impl_->upsert(
      1, [&](size_t) -> const InstanceRecord& { return r; },
      [](size_t) { return std::span<const TransitionRecord>(); });
}

Status Store::update_instance(const InstanceRecord& r) {
  if (auto s = impl_->need_instances(); !s.ok()) return s;
  if (auto s = impl_->before_write(); !s.ok()) return s;
  return impl_->update(r, {});
}

Status Store::update_progress(uint64_t id, InstanceState state, uint32_t attempt, const std::string& member, int slot,
                              int64_t updated_us) {
  if (auto s = impl_->need_instances(); !s.ok()) return s;
  if (auto s = impl_->before_write(); !s.ok()) return s;
  return impl_->progress(id, state, attempt, member, slot, updated_us, {});
}

Status Store::add_transition(uint64_t instance_id, const TransitionRecord& t) {
  Impl& d = *impl_;
  if (auto s = d.need_instances(); !s.ok()) return s;
  if (auto s = d.before_write(); !s.ok()) return s;
  Use u(d.append_history.get());
  u.text(Impl::history_lines(d.history_scratch[0], std::span(&t, 1))).i64(static_cast<int64_t>(instance_id));
  return d.finish_write(u, [&] { return "cannot store a transition of instance " + std::to_string(instance_id); });
}

Status Store::write_instances(const std::vector<InstanceChange>& changes) {
  std::vector<const InstanceChange*> all;
  all.reserve(changes.size());
  for (const auto& c : changes) all.push_back(&c);
  return write_instances(all);
}

Status Store::write_instances(std::span<const InstanceChange* const> changes) {
  Impl& d = *impl_;
  if (changes.empty()) return {};
  if (auto s = d.need_instances(); !s.ok()) return s;
  if (auto s = d.before_write(); !s.ok()) return s;
  using Kind = InstanceChange::Kind;
  for (size_t i = 0; i < changes.size();) {
    const InstanceChange& c = *changes[i];
    Status s;
    if (c.kind == Kind::Insert) {
      size_t n = 1;
      while (n < kInstanceRowsPerStatement && i + n < changes.size() && changes[i + n]->kind == Kind::Insert) ++n;
      s = d.upsert(
          n, [&](size_t k) -> const InstanceRecord& { return changes[i + k]->rec; },
          [&](size_t k) { return std::span<const TransitionRecord>(changes[i + k]->added); });
      i += n;
    } else {
      const InstanceRecord& r = c.rec;
      s = c.kind == Kind::Update ? d.update(r, c.added)
                                 : d.progress(r.id, r.state, r.attempt, r.member, r.slot, r.updated_us, c.added);
      ++i;
    }
    if (!s.ok()) return s;
  }
  return {};
}

Status Store::set_meta(std::string_view key, std::string_view value) {
  if (auto s = impl_->before_write(); !s.ok()) return s;
  Use u(impl_->set_meta.get());
  u.text(key).text(value);
  return impl_->finish_write(u, [&] { return "cannot store meta '" + std::string(key) + "'"; });
}

Status Store::put_submission(const SubmissionRecord& r) {
  Impl& d = *impl_;
  if (auto s = d.need_instances(); !s.ok()) return s;
  if (!submission_range_ok(r.first_id, r.count))
    return d.fail_turn(make_error("submission " + std::to_string(r.first_id) + " of " + std::to_string(r.count) +
                                  " instances: the count must be 1 to " + std::to_string(kMaxSubmissionCount)));
  if (auto s = d.before_write(); !s.ok()) return s;
  const std::string params = params_to_json(r.params);
  Use u(d.put_submission.get());
  u.i64(static_cast<int64_t>(r.first_id))
      .i64(static_cast<int64_t>(r.count))
      .text(r.job)
      .text(r.queue)
      .i64(r.priority)
      .text(params)
      .text(r.steps_json)
      .text(r.retry_json)
      .i64(static_cast<int64_t>(r.timeout_ms))
      .i64(r.created_us);
  return d.finish_write(u, [&] { return "cannot store submission " + std::to_string(r.first_id); });
}

Status Store::remove_submission(uint64_t first_id) {
  Impl& d = *impl_;
  if (auto s = d.need_instances(); !s.ok()) return s;
  if (auto s = d.before_write(); !s.ok()) return s;
  Use u(d.remove_submission.get());
  u.i64(static_cast<int64_t>(first_id));
  return d.finish_write(u, [&] { return "cannot remove submission " + std::to_string(first_id); });
}

Status Store::set_next_instance_id(uint64_t next) { return set_meta(kMetaNextInstanceId, std::to_string(next)); }
Status Store::set_last_event_seq(uint64_t seq) { return set_meta(kMetaLastEventSeq, std::to_string(seq)); }

Result<uint64_t> Store::prune_history(int64_t older_than_us, uint64_t max_instances) {
  Impl& d = *impl_;
  if (auto s = d.need_instances(); !s.ok()) return s.error();
  if (auto s = d.before_write(); !s.ok()) return s.error();
  // One statement: an instance and its history go together.
  const int64_t limit = max_instances > uint64_t(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(max_instances);
  Use u(d.prune_instances.get());
  u.i64(older_than_us).i64(limit);
  if (auto s = d.finish_write(u, "cannot prune instances"); !s.ok()) return s.error();
  return static_cast<uint64_t>(sqlite3_changes64(d.db.get()));
}

Result<StoreContents> Store::load() {
  Impl& d = *impl_;
  if (auto s = d.need_instances(); !s.ok()) return s.error();
  StoreContents out;
  // One read transaction, so that all of it is one consistent snapshot.
  const bool own_read = sqlite3_get_autocommit(d.db.get()) != 0;
  if (own_read) {
    if (auto s = exec(d.db.get(), d.path, "BEGIN", "cannot start reading"); !s.ok()) return s.error();
  }
  auto body = [&]() -> Status {
    {
      Use u(d.load_jobs.get());
      int rc;
      while ((rc = u.step()) == SQLITE_ROW)
        out.jobs.push_back(JobRecord{u.col_text(0), u.col_text(1), u.col_text(2), u.col_i64(3) != 0});
      if (rc != SQLITE_DONE) return d.err("cannot read jobs");
    }
    {
      Use u(d.load_queues.get());
      int rc;
      while ((rc = u.step()) == SQLITE_ROW)
        out.queues.push_back(QueueRecord{u.col_text(0), u.col_text(1), u.col_text(2)});
      if (rc != SQLITE_DONE) return d.err("cannot read queues");
    }
    {
      Use u(d.load_live.get());
      int rc;
      while ((rc = u.step()) == SQLITE_ROW) {
        auto r = d.read_instance(u);
        if (!r.ok()) return r.error();
        if (auto s = d.read_history(u, r.value()); !s.ok()) return s;
        out.instances.push_back(std::move(r.value()));
      }
      if (rc != SQLITE_DONE) return d.err("cannot read instances");
    }
    {
      // The instances of submissions without a row of their own, merged in
      // by id.
      std::vector<InstanceRecord> queued;
      Use u(d.load_submissions.get());
      int rc;
      while ((rc = u.step()) == SQLITE_ROW) {
        auto sub = d.read_submission(u);
        if (!sub.ok()) return sub.error();
        const SubmissionRecord& sr = sub.value();
        auto s = d.rowless(sr.first_id, sr.first_id + sr.count - 1, false, [&](uint64_t id) {
          queued.push_back(queued_of(sr, id));
          return true;
        });
        if (!s.ok()) return s;
      }
      if (rc != SQLITE_DONE) return d.err("cannot read submissions");
      if (!queued.empty()) out.instances = merged_by_id(std::move(out.instances), std::move(queued), false);
    }
    {
      Use u(d.all_meta.get());
      int rc;
      while ((rc = u.step()) == SQLITE_ROW) out.meta[u.col_text(0)] = u.col_text(1);
      if (rc != SQLITE_DONE) return d.err("cannot read meta");
    }
    uint64_t next = 1;
    {
      Use u(d.max_instance_id.get());  // of rows and submissions; 0 if none
      if (u.step() != SQLITE_ROW) return d.err("cannot read the largest instance id");
      next = static_cast<uint64_t>(u.col_i64(0)) + 1;
    }
    auto number = [&](const char* key, uint64_t& v) -> Status {
      auto it = out.meta.find(key);
      if (it == out.meta.end()) return {};
      char* end = nullptr;
      errno = 0;
      unsigned long long n = std::strtoull(it->second.c_str(), &end, 10);
      if (errno != 0 || it->second.empty() || *end != '\0')
        return make_error(d.path + ": meta '" + key + "' is not a number: '" + it->second + "'");
      v = n;
      return {};
    };
    uint64_t stored_next = 0;
    if (auto s = number(kMetaNextInstanceId, stored_next); !s.ok()) return s;
    out.next_instance_id = std::max(next, stored_next);
    if (auto s = number(kMetaLastEventSeq, out.last_event_seq); !s.ok()) return s;
    return {};
  };
  Status s = body();
  if (own_read) sqlite3_exec(d.db.get(), "COMMIT", nullptr, nullptr, nullptr);
  if (!s.ok()) return s.error();
  return out;
}

Result<std::optional<InstanceRecord>> Store::load_instance(uint64_t id) {
  Impl& d = *impl_;
  if (auto s = d.need_instances(); !s.ok()) return s.error();
  std::optional<InstanceRecord> r;
  {
    Use u(d.load_instance.get());
    u.i64(static_cast<int64_t>(id));
    int rc = u.step();
    if (rc == SQLITE_ROW) {
      auto rec = d.read_instance(u);
      if (!rec.ok()) return rec.error();
      if (auto s = d.read_history(u, rec.value()); !s.ok()) return s.error();
      r = std::move(rec.value());
      return r;
    }
    if (rc != SQLITE_DONE) return d.err("cannot read instance " + std::to_string(id));
  }
  // No row: perhaps one of a submission's, still queued as created.
  Use u(d.submission_of.get());
  u.i64(static_cast<int64_t>(id));
  int rc = u.step();
  if (rc == SQLITE_DONE) return r;
  if (rc != SQLITE_ROW) return d.err("cannot read the submission of instance " + std::to_string(id));
  auto sub = d.read_submission(u);
  if (!sub.ok()) return sub.error();
  if (id < sub.value().first_id + sub.value().count) r = queued_of(sub.value(), id);
  return r;
}

Result<std::vector<InstanceRecord>> Store::list_instances(const InstanceFilter& f) {
  Impl& d = *impl_;
  if (auto s = d.need_instances(); !s.ok()) return s.error();
  std::vector<InstanceRecord> out;
  sqlite3_stmt* stmt = d.list_statement(f);
  if (!stmt) return d.err("cannot prepare the instance listing");
  {
    Use u(stmt);
    if (f.job) u.text(*f.job);
    if (f.state) u.text(db_state_name(*f.state));
    if (f.before_id) u.i64(static_cast<int64_t>(*f.before_id));
    u.i64(f.limit > size_t(INT64_MAX) ? INT64_MAX : static_cast<int64_t>(f.limit));
    int rc;
    while ((rc = u.step()) == SQLITE_ROW) {
      auto r = d.read_instance(u);
      if (!r.ok()) return r.error();
      if (f.with_history)
        if (auto s = d.read_history(u, r.value()); !s.ok()) return s.error();
      out.push_back(std::move(r.value()));
    }
    if (rc != SQLITE_DONE) return d.err("cannot list instances");
  }
  if (f.state && *f.state != InstanceState::Queued) return out;
  const uint64_t below = f.before_id.value_or(uint64_t(INT64_MAX));
  if (below <= 1 || f.limit == 0) return out;
  // The instances of submissions without a row of their own are queued:
  // the newest of them below before_id, as many as could still be among
  // the `limit` newest of all.
  std::vector<InstanceRecord> queued;
  // With `limit` rows found, nothing older than the last of them counts.
  const uint64_t floor = out.size() >= f.limit && !out.empty() ? out.back().id : 0;
  {
    Use u(d.list_submissions[f.job ? 1 : 0].get());
    u.i64(static_cast<int64_t>(below));
    if (f.job) u.text(*f.job);
    int rc = SQLITE_DONE;
    while (queued.size() < f.limit && (rc = u.step()) == SQLITE_ROW) {
      auto sub = d.read_submission(u);
      if (!sub.ok()) return sub.error();
      const SubmissionRecord& sr = sub.value();
      const uint64_t last = std::min(sr.first_id + sr.count - 1, below - 1);
      if (last <= floor) break;
      auto s = d.rowless(std::max(sr.first_id, floor + 1), last, true, [&](uint64_t id) {
        queued.push_back(queued_of(sr, id));
        if (!f.with_history) queued.back().history.clear();
        return queued.size() < f.limit;
      });
      if (!s.ok()) return s.error();
    }
    if (queued.size() < f.limit && rc != SQLITE_DONE && rc != SQLITE_ROW) return d.err("cannot list submissions");
  }
  if (queued.empty()) return out;
  out = merged_by_id(std::move(out), std::move(queued), true);
  if (out.size() > f.limit) out.resize(f.limit);
  return out;
}

Result<std::optional<std::string>> Store::get_meta(std::string_view key) { return impl_->meta(key); }

}  // namespace zf
