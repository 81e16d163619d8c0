#include "master/store_writer.h"

#include <pthread.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/log.h"

namespace zf {

StoreWriter::StoreWriter(std::unique_ptr<Store> store) : store_(std::move(store)) {
  event_fd_ = ::eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
  if (event_fd_ < 0) throw std::runtime_error(std::string("cannot create the store writer's eventfd: ") + std::strerror(errno));
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
  if (event_fd_ >= 0) ::close(event_fd_);
}

uint64_t StoreWriter::submit(std::vector<Op> ops) {
  uint64_t n = next_batch_++;
  {
    std::lock_guard lock(mu_);
    queued_.push_back({n, std::move(ops)});
  }
  cv_.notify_one();
  return n;
}

std::vector<StoreWriter::Done> StoreWriter::done() {
  uint64_t count = 0;
  ssize_t r = ::read(event_fd_, &count, sizeof count);  // clears the eventfd; EAGAIN when nothing new
  (void)r;
  std::lock_guard lock(mu_);
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

void StoreWriter::run() {
  std::vector<Batch> group;
  while (true) {
    {
      std::unique_lock lock(mu_);
      cv_.wait(lock, [&] { return stop_ || !queued_.empty(); });
      if (queued_.empty()) return;  // stop_ and nothing left to commit
      group.assign(std::make_move_iterator(queued_.begin()), std::make_move_iterator(queued_.end()));
      queued_.clear();
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
      store_->begin_turn();
      for (auto& b : group)
        for (auto& op : b.ops) {
          if (!status.ok()) break;
          status = op(*store_);
        }
      if (status.ok()) {
        status = store_->commit_turn();
      } else {
        store_->roll_back_turn();  // all or nothing: no part of a failed group stays
      }
    }
    {
      std::lock_guard lock(mu_);
      if (!status.ok()) failed_ = true;
      else ++commits_;
      for (auto& b : group) completed_.push_back({b.number, status});
      last_completed_ = group.back().number;
    }
    group.clear();
    idle_cv_.notify_all();
    uint64_t one = 1;
    ssize_t w = ::write(event_fd_, &one, sizeof one);
    (void)w;
  }
}

}  // namespace zf
