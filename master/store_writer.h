// Runs the store's writes on a thread of its own, so that the master's event
// loop never waits for SQLite or for the disk.
//
// The loop gives each turn's writes to submit() as one batch and holds
// everything the turn would send (ASSIGNs, api replies, events) until that
// batch is reported committed (done(), after the loop saw fd() readable).
// Meanwhile it goes on with the next turns. The writer takes the batches
// queued by the time it is free, oldest first, up to about 512 instance
// changes (at least one batch), and commits them in one transaction (group
// commit across turns), then reports them done in submission order. The cap
// keeps the loop and the writer overlapping: a group of everything queued
// made every batch wait for all of it. So the commit rule holds — nothing
// leaves the master before what it depends on is on disk — and the cost of
// a commit (fsync) is paid once per group instead of once per turn, off the
// loop.
//
// Inside a group, the instance changes of its batches are merged per instance
// before they are written (merge_into in master/store.h): an instance
// assigned in one turn and finished in the next costs one row write, not
// two, and the history entries of all go several rows per statement. The
// order of the writes is kept where it can be seen: a batch's ops run after
// every instance change of the batches before it, and the counters are
// written once per group with the last values set.
//
// With --sync full the writer does not wait for the disk itself: it commits
// without an fsync (synchronous=NORMAL) and goes on with the next group,
// while two sync threads fdatasync the WAL (Store::defer_syncs). A batch is
// reported done only when a sync that started after its commit returned, so
// "on disk before anything leaves" still holds; the syncs of successive
// groups overlap instead of queueing behind each other.
//
// If a commit (or a sync) fails, that group and every later batch fail
// (nothing of them is known to be on disk); the master stops without sending
// what they held.
//
// Owns the write connection (a Store) and the thread. Thread contract:
// submit(), fd(), done() and the destructor are called from the loop thread
// only; the Store is touched only by the writer thread once the writer runs.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "common/result.h"
#include "master/store.h"

namespace zf {

class StoreWriter {
 public:
  // One write, run on the writer thread inside the group's transaction.
  using Op = std::function<Status(Store&)>;
  struct Done {
    uint64_t batch = 0;
    Status status;
  };
  // One turn's writes.
  struct Batch {
    std::vector<Op> ops;                    // in order, before `instances`
    std::vector<InstanceChange> instances;  // then these, in order
    std::optional<uint64_t> next_instance_id;  // Store::set_next_instance_id, if set
    std::optional<uint64_t> last_event_seq;    // Store::set_last_event_seq, if set
  };

  explicit StoreWriter(std::unique_ptr<Store> store);
  // Commits what is queued, then stops the thread.
  ~StoreWriter();
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  // Queues one turn's writes; returns the batch number (1, 2, 3 …).
  uint64_t submit(Batch batch);
  uint64_t submit(std::vector<Op> ops) { return submit(Batch{std::move(ops), {}, {}, {}}); }
  // Readable (eventfd) when batches were completed; done() clears it.
  int fd() const { return event_fd_; }
  // Batches completed since the last call, in submission order.
  std::vector<Done> done();
  // Blocks until every submitted batch is completed (shutdown).
  void wait_all();
  uint64_t submitted() const { return next_batch_ - 1; }
  // Transactions committed so far (each carries one or more batches).
  uint64_t commits() const;

 private:
  struct Queued {
    uint64_t number;
    Batch batch;
  };
  void run();
  void run_syncs();
  // Writes one group in the writer's open turn; the first error.
  Status write_group(std::vector<Queued>& group);
  // With mu_ held: batches up to `last` are done with `status` (or the first
  // failure, once there was one).
  void complete_locked(uint64_t last, const Status& status);
  void signal_done();

  std::unique_ptr<Store> store_;
  std::string stall_file_;  // ZFORCE_TEST_STALL_COMMITS (tests only)
  // Writer thread only: the instance changes of the group not written yet,
  // in the batches that hold them (reused from group to group).
  std::vector<InstanceChange*> pending_;
  int event_fd_ = -1;
  uint64_t next_batch_ = 1;  // loop thread only

  mutable std::mutex mu_;
  std::condition_variable cv_;       // the writer waits for batches (or stop)
  std::condition_variable idle_cv_;  // wait_all() waits for completions
  std::deque<Queued> queued_;
  std::vector<Done> completed_;
  // Batches written, handed back so that the loop thread frees what it
  // allocated: glibc's malloc is slow for memory allocated in one thread and
  // freed in another (the loop's own free lists stay empty), measured as a
  // fifth of the loop's time with the store on.
  std::vector<Batch> spent_;
  uint64_t last_completed_ = 0;
  uint64_t commits_ = 0;
  bool failed_ = false;  // a commit failed: later batches fail too
  Status first_error_;
  bool stop_ = false;
  // Deferred syncs (Sync::Full): null when SQLite syncs at each commit.
  std::unique_ptr<WalSyncer> syncer_;
  uint64_t committed_ = 0;     // last batch committed (done once synced)
  uint64_t sync_started_ = 0;  // last batch a sync was started for
  bool writer_done_ = false;   // the writer thread has committed its last group
  std::condition_variable sync_cv_;
  std::vector<std::thread> sync_threads_;
  std::thread thread_;  // last: starts after everything above exists
};

}  // namespace zf
