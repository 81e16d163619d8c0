#include "master/store_writer.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/log.h"

namespace zf {

namespace {
// Syncs that may run at once: a second one starts while the first waits for
// the disk, so a commit never waits for an older commit's sync to end.
constexpr int kSyncThreads = 2;
// Instance changes one group (transaction) takes, at most (see run()).
constexpr size_t kGroupChanges = 512;
}  // namespace

StoreWriter::StoreWriter(std::unique_ptr<Store> store) : store_(std::move(store)) {
  // Fault injection for the cluster tests only (docs/durability.md): while
  // this file exists, nothing is committed, as if the disk had stalled.
  if (const char* f = std::getenv("ZFORCE_TEST_STALL_COMMITS")) stall_file_ = f;
  event_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd_ < 0) throw std::runtime_error(std::string("cannot create the store writer's eventfd: ") + std::strerror(errno));
  if (store_->sync() == StoreOptions::Sync::Full) {
    auto syncer = store_->defer_syncs();
    if (syncer.ok()) syncer_ = std::move(syncer.value());
    else log::warn("store: commits will sync one by one: " + syncer.error().message);
  }
  if (syncer_)
    for (int i = 0; i < kSyncThreads; ++i)
      sync_threads_.emplace_back([this] {
        pthread_setname_np(pthread_self(), "zf-sync");
        run_syncs();
      });
  thread_ = std::thread([this] {
    pthread_setname_np(pthread_self(), "zf-store");  // tells it apart in top and perf
    run();
  });
}

StoreWriter::~StoreWriter() {
  {
    std::lock_guard lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  {
    std::lock_guard lock(mu_);
    writer_done_ = true;  // the sync threads sync what is left, then end
  }
  sync_cv_.notify_all();
  for (auto& t : sync_threads_) t.join();
  if (event_fd_ >= 0) ::close(event_fd_);
}

void StoreWriter::complete_locked(uint64_t last, const Status& status) {
  if (!status.ok() && !failed_) {
    failed_ = true;
    first_error_ = status;
  }
  for (uint64_t b = last_completed_ + 1; b <= last; ++b) completed_.push_back({b, failed_ ? first_error_ : status});
  if (last > last_completed_) last_completed_ = last;
}

void StoreWriter::signal_done() {
  idle_cv_.notify_all();
  uint64_t one = 1;
  ssize_t w = ::write(event_fd_, &one, sizeof one);
  (void)w;
}

void StoreWriter::run_syncs() {
  while (true) {
    uint64_t target;
    {
      std::unique_lock lock(mu_);
      sync_cv_.wait(lock, [&] { return committed_ > sync_started_ || writer_done_; });
      if (committed_ <= sync_started_) return;  // the writer is done and everything was synced
      target = sync_started_ = committed_;
    }
    // Every batch up to target was committed before this call: when it
    // returns ok, they are all on disk (whatever another sync is doing).
    Status status = syncer_->sync();
    {
      std::lock_guard lock(mu_);
      complete_locked(target, status);
    }
    signal_done();
  }
}

uint64_t StoreWriter::submit(Batch batch) {
  uint64_t n = next_batch_++;
  {
    std::lock_guard lock(mu_);
    queued_.push_back({n, std::move(batch)});
  }
  cv_.notify_one();
  return n;
}

std::vector<StoreWriter::Done> StoreWriter::done() {
  uint64_t count = 0;
  ssize_t r = ::read(event_fd_, &count, sizeof count);  // clears the eventfd; EAGAIN when nothing new
  (void)r;
  std::vector<Batch> spent;  // freed here, on the loop thread, after the lock
  std::lock_guard lock(mu_);
  spent.swap(spent_);
  return std::exchange(completed_, {});
}

void StoreWriter::wait_all() {
  std::unique_lock lock(mu_);
  idle_cv_.wait(lock, [&] { return last_completed_ + 1 >= next_batch_; });
}

uint64_t StoreWriter::commits() const {
  std::lock_guard lock(mu_);
  return commits_;
}

Status StoreWriter::write_group(std::vector<Queued>& group) {
  std::optional<uint64_t> next_id, event_seq;
  // Writes what is pending: in id order (the order between instances does
  // not matter, and neighbours share pages), the changes of one instance
  // folded into its first, in submission order (a stable sort).
  auto flush = [&]() -> Status {
    if (pending_.empty()) return {};
    auto by_id = [](const InstanceChange* a, const InstanceChange* b) { return a->rec.id < b->rec.id; };
    if (!std::is_sorted(pending_.begin(), pending_.end(), by_id))
      std::stable_sort(pending_.begin(), pending_.end(), by_id);
    size_t kept = 0;
    for (InstanceChange* c : pending_) {
      if (kept > 0 && pending_[kept - 1]->rec.id == c->rec.id) merge_into(*pending_[kept - 1], std::move(*c));
      else pending_[kept++] = c;
    }
    pending_.resize(kept);
    Status s = store_->write_instances(pending_);
    pending_.clear();
    return s;
  };
  for (auto& q : group) {
    Batch& b = q.batch;
    if (!b.ops.empty()) {
      // An op may touch instance rows (pruning): what came before goes first.
      if (auto s = flush(); !s.ok()) return s;
      for (auto& op : b.ops)
        if (auto s = op(*store_); !s.ok()) return s;
    }
    for (auto& c : b.instances) pending_.push_back(&c);
    if (b.next_instance_id) next_id = b.next_instance_id;
    if (b.last_event_seq) event_seq = b.last_event_seq;
  }
  if (auto s = flush(); !s.ok()) return s;
  if (next_id)
    if (auto s = store_->set_next_instance_id(*next_id); !s.ok()) return s;
  if (event_seq)
    if (auto s = store_->set_last_event_seq(*event_seq); !s.ok()) return s;
  return {};
}

void StoreWriter::run() {
  std::vector<Queued> group;
  while (true) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queued_.empty(); });
      if (queued_.empty()) return;  // stop_ and nothing left to commit
      // The oldest batches, up to about kGroupChanges instance changes (at
      // least one batch): a group of everything queued made every batch
      // wait for the whole of it, and the loop and the writer took turns
      // instead of overlapping (a convoy). Tiny batches still share a group.
      size_t take = 0, changes = 0;
      while (take < queued_.size() &&
             (take == 0 || changes + queued_[take].batch.instances.size() <= kGroupChanges)) {
        changes += queued_[take].batch.instances.size();
        ++take;
      }
      const auto end = queued_.begin() + static_cast<std::ptrdiff_t>(take);
      group.assign(std::make_move_iterator(queued_.begin()), std::make_move_iterator(end));
      queued_.erase(queued_.begin(), end);
    }
    Status status;
    bool failed;
    {
      std::lock_guard lock(mu_);
      failed = failed_;
    }
    if (failed) {
      status = make_error("an earlier commit to the store failed");
    } else {
      while (!stall_file_.empty() && ::access(stall_file_.c_str(), F_OK) == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
      store_->begin_turn();
      status = write_group(group);
      pending_.clear();  // after a failure: what was left unwritten
      if (status.ok()) {
        status = store_->commit_turn();
      } else {
        store_->roll_back_turn();  // all or nothing: no part of a failed group stays
      }
    }
    const uint64_t last = group.back().number;
    {
      std::lock_guard lock(mu_);
      for (auto& q : group) spent_.push_back(std::move(q.batch));
    }
    group.clear();
    if (status.ok() && syncer_) {
      {
        std::lock_guard lock(mu_);
        ++commits_;
        committed_ = last;  // done once a sync thread has synced it
      }
      sync_cv_.notify_one();
      continue;
    }
    {
      std::unique_lock lock(mu_);
      if (status.ok()) ++commits_;
      // In order: the groups committed before this one are reported first.
      idle_cv_.wait(lock, [&] { return last_completed_ >= committed_; });
      complete_locked(last, status);
      committed_ = sync_started_ = std::max(committed_, last);
    }
    signal_done();
  }
}

}  // namespace zf
