// The master's durable store: jobs, queues, instances with every state
// transition, and a few counters, in one SQLite database (WAL mode) at
// DIR/zforce.db. The schema, the commit rule and what survives a crash are in
// docs/durability.md.
//
// Single-threaded: a Store (one connection) is called by one thread only; the
// master has two, the loop's for reading and the store writer's
// (master/store_writer.h) for writing. It is movable by unique_ptr only;
// nothing here is shared between threads, and no other file of zforce
// includes sqlite3.h.
//
// The commit rule (group commit). The loop calls begin_turn() when it wakes
// up, makes its writes, then commit_turn(). Every write between the two is one
// SQLite transaction, so a burst of changes costs one commit (one fsync with
// the default settings), not one per change. A request whose change was
// written in the turn is answered only after commit_turn() returned ok; if it
// fails, nothing of the turn is on disk and those requests must be answered
// with an error. Writes made outside a turn commit on their own, one by one.
//
// The store never interprets the job and queue texts nor the steps and retry
// JSON it is given: the master parses what it reads back, exactly as it parses
// what an operator sends.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/result.h"
#include "master/instance_state.h"

namespace zf {

// `PRAGMA application_id` of every zforce database ("ZFRC"). A file with
// another id is someone else's and is never opened for writing.
inline constexpr int32_t kStoreApplicationId = 0x5A465243;
// The schema this build creates and migrates older databases up to.
inline constexpr int kStoreSchemaVersion = 6;
// The database's file name inside the data folder.
inline constexpr std::string_view kStoreFileName = "zforce.db";

struct JobRecord {
  std::string name;
  std::string source_name;  // where the text came from (file name), for messages
  std::string text;         // the job file's TOML, as the operator sent it
  bool enabled = true;
};

struct QueueRecord {
  std::string name;
  std::string source_name;
  std::string text;  // the queue file's TOML
};

// One entry of an instance's history.
struct TransitionRecord {
  uint32_t seq = 0;  // 0, 1, 2 … within the instance: its index in the history
  InstanceState state = InstanceState::Queued;
  int64_t ts_us = 0;  // wall clock, microseconds since the Unix epoch
  uint32_t attempt = 1;
  std::string member;                // empty = none
  std::optional<int32_t> exit_code;  // for ends reported by a member
};

// What the store keeps of a master Instance; the master converts both ways.
// Times are wall-clock microseconds since the Unix epoch (the master's
// steady_clock points do not survive a restart).
struct InstanceRecord {
  uint64_t id = 0;
  std::string job;
  std::string queue;
  int priority = 0;
  uint32_t attempt = 1;
  InstanceState state = InstanceState::Queued;
  std::map<std::string, std::string> params;  // stored as a JSON object
  std::string steps_json;  // the resolved steps snapshot, as the master encodes it
  std::string retry_json;  // the retry policy in force, as the master encodes it
  uint64_t timeout_ms = 0;
  std::string member;  // empty = none
  int slot = -1;
  int32_t exit_code = 0;
  int32_t failed_step = -1;
  uint64_t duration_ms = 0;
  std::string error;
  std::string output;  // the output tail; any bytes
  int64_t created_us = 0;
  int64_t updated_us = 0;
  bool cancel_requested = false;
  std::optional<int64_t> retry_at_us;  // queued and waiting out a retry backoff
  // Filled by the load functions; upsert_instance() ignores it (history is
  // written with add_transition()).
  std::vector<TransitionRecord> history;
  // Read back only: the first id of the submission this queued instance is
  // part of, while it has no row of its own (0 = it has one).
  uint64_t submission = 0;
};

// Instances first_id … first_id+count-1, created together with one spec
// (a bulk submission), stored as one row. Each is queued at attempt 1, as
// created at created_us, until it has a row of its own (its first write
// after the submission is an insert); the load and list functions return it
// as such. Removed once every one of them has its own row.
// A submission covers at most this many ids (the api takes at most 100,000
// per run); a stored row beyond it is refused as damaged rather than read
// back as that many instances.
inline constexpr uint64_t kMaxSubmissionCount = 1'000'000;

struct SubmissionRecord {
  uint64_t first_id = 0;
  uint64_t count = 0;
  std::string job;
  std::string queue;
  int priority = 0;
  std::map<std::string, std::string> params;
  std::string steps_json;
  std::string retry_json;
  uint64_t timeout_ms = 0;
  int64_t created_us = 0;
};

// One instance's writes of a turn, as the master hands them to the store
// writer: which columns of its row change, and its new history entries. The
// three kinds write more and more columns; a later kind includes what an
// earlier one writes.
struct InstanceChange {
  enum class Kind : uint8_t {
    // state, attempt, member, slot and updated_us (an instance assigned or
    // started); the row must exist. As update_progress().
    Progress,
    // Every column that can change after creation; the row must exist. As
    // update_instance().
    Update,
    // Every column, inserted or replaced. As upsert_instance().
    Insert,
  };
  Kind kind = Kind::Insert;
  InstanceRecord rec;                   // the columns `kind` writes; history is ignored
  std::vector<TransitionRecord> added;  // new history entries, in order
};

// Folds a later change of the same instance into an earlier one, so that one
// write gives the row what the two in order would (the later columns win,
// the kind is the wider one) and the history entries of both, in order.
void merge_into(InstanceChange& earlier, InstanceChange&& later);

// Queued, assigned and running instances are live: load() returns them and
// prune_history() never removes them. Every other state is final.
bool is_live(InstanceState s);

// Meta key: the members that may have been sent ASSIGNs not committed yet,
// one name per line (docs/durability.md, "Assignments ahead of the commit").
inline constexpr const char* kMetaAssignAheadMembers = "assign_ahead_members";

// What the master needs to come back after a restart.
struct StoreContents {
  std::vector<JobRecord> jobs;      // in the order they were first put
  std::vector<QueueRecord> queues;  // in the order they were first put
  // Live instances in id order (= creation order), each with its history,
  // those of submissions without a row of their own included.
  std::vector<InstanceRecord> instances;
  // Larger than every id ever stored and than the value last set.
  uint64_t next_instance_id = 1;
  uint64_t last_event_seq = 0;          // as last set; 0 on a new database
  std::map<std::string, std::string> meta;  // every meta key, these two included
};

// Which instances list_instances() returns: newest first, at most `limit`.
struct InstanceFilter {
  std::optional<std::string> job;
  std::optional<InstanceState> state;
  std::optional<uint64_t> before_id;  // only ids below this (paging)
  size_t limit = 100;
  bool with_history = false;
};

struct StoreOptions {
  // How hard a commit pushes data to the disk; see docs/durability.md.
  //   Full   (default) the WAL is fsynced at every commit: an acknowledged
  //          request survives kill -9 and power loss.
  //   Normal the WAL is fsynced only at checkpoints: survives kill -9 of the
  //          process, may lose the last turns on power loss or a kernel crash.
  //   Off    never fsync; for benchmarks and tests only.
  enum class Sync { Off, Normal, Full };
  Sync sync = Sync::Full;
  // How long a statement waits for a lock held by another connection (an
  // operator's sqlite3 shell, a backup) before failing.
  int busy_timeout_ms = 5000;
  // Tests only: create or migrate up to this schema version, not further.
  // Below the current version the store has jobs, queues and meta only:
  // instance reads and writes fail (tests put old instances in with SQL).
  int schema_version = kStoreSchemaVersion;
};

// Makes a connection's commits durable after the fact (Store::defer_syncs):
// fdatasync of the WAL file on a descriptor of its own. Thread-safe, and
// several syncs may run at once: when sync() returns ok, every commit that
// returned before sync() was called is on disk. No SQLite call here.
class WalSyncer {
 public:
  WalSyncer(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  ~WalSyncer();
  WalSyncer(const WalSyncer&) = delete;
  WalSyncer& operator=(const WalSyncer&) = delete;
  Status sync() const;

 private:
  std::string path_;
  int fd_;
};

class Store {
 public:
  // Opens DIR/zforce.db, creating the folder and the database if needed, and
  // migrates an older schema to the current one (one transaction). Refuses,
  // without writing to it, a file that is not a zforce database (not SQLite,
  // another application's, empty, truncated, corrupt, or from a newer
  // zforce); the error names the path and the reason.
  static Result<std::unique_ptr<Store>> open(const std::string& dir, const StoreOptions& options = {});

  ~Store();  // rolls back an uncommitted turn; closes the database
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  const std::string& path() const;
  StoreOptions::Sync sync() const;  // as opened
  // With Sync::Full: commits stop waiting for the disk (synchronous=NORMAL,
  // which keeps the kill -9 guarantee) and the caller makes them durable with
  // the returned WalSyncer before it reports them (the store writer does).
  // SQLite still syncs the WAL before each checkpoint and the database after.
  Result<std::unique_ptr<WalSyncer>> defer_syncs();
  int schema_version() const;  // after migrations: kStoreSchemaVersion unless options said otherwise

  // --- group commit
  // Starts a turn; the transaction itself begins at the turn's first write,
  // so a turn without writes costs nothing. Inside a turn it does nothing
  // (the outer turn goes on).
  void begin_turn();
  // Commits every write of the turn. If a write of the turn failed, or the
  // commit fails, the whole turn is rolled back and the first error returned.
  // Outside a turn: ok, nothing to do.
  Status commit_turn();
  bool in_turn() const;
  // Ends the turn writing nothing of it (a caller's own check failed).
  void roll_back_turn();

  // --- writes (inside a turn: part of it; outside: committed at once)
  Status put_job(const JobRecord& job);  // insert or replace by name
  Status remove_job(const std::string& name);
  Status put_queue(const QueueRecord& queue);
  Status remove_queue(const std::string& name);
  Status upsert_instance(const InstanceRecord& instance);  // by id; history ignored
  // Every column that can change after the instance was created (state,
  // attempt, member, slot, result, output, times, cancel, retry); the row must
  // exist. job, queue, params, steps, retry policy and timeout are left as
  // they are: an upsert rewrites them all.
  Status update_instance(const InstanceRecord& instance);
  // The few columns that change while an instance is assigned or running,
  // cheaper than a whole upsert; the row must exist.
  Status update_progress(uint64_t id, InstanceState state, uint32_t attempt, const std::string& member, int slot,
                         int64_t updated_us);
  Status add_transition(uint64_t instance_id, const TransitionRecord& transition);  // by (id, seq)
  // Writes the changes in order, as the single calls above would, with fewer
  // statements: consecutive inserts and all the history entries go several
  // rows per statement (the history entries after the rows).
  Status write_instances(std::span<const InstanceChange* const> changes);
  Status write_instances(const std::vector<InstanceChange>& changes);
  Status put_submission(const SubmissionRecord& submission);
  // Once each of its instances has a row of its own (or is gone).
  Status remove_submission(uint64_t first_id);
  Status set_meta(std::string_view key, std::string_view value);
  Status set_next_instance_id(uint64_t next);
  // Call before publishing the event: a number stored is never handed out again.
  Status set_last_event_seq(uint64_t seq);
  // Removes final instances (and their history) last updated before
  // older_than_us, oldest id first, at most max_instances of them (so a big
  // backlog can be pruned a slice per turn). Returns how many were removed.
  // Never one inside a submission still stored: it would read back queued.
  Result<uint64_t> prune_history(int64_t older_than_us, uint64_t max_instances = UINT64_MAX);

  // --- reads (see what is committed plus this turn's own writes)
  Result<StoreContents> load();
  Result<std::optional<InstanceRecord>> load_instance(uint64_t id);  // with history
  Result<std::vector<InstanceRecord>> list_instances(const InstanceFilter& filter);
  Result<std::optional<std::string>> get_meta(std::string_view key);

 private:
  struct Impl;
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace zf
