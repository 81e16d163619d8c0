// Dispatch rate seen on the tap, for scripts/bench.sh
// (dispatch_per_s_1m_queued, dispatch_per_s_1k_queued,
// workers_1000_dispatch_per_s). Subscribes to the instance end events, then
// times COUNT of them: the rate is (COUNT - 1) / (ts of the COUNT-th end -
// ts of the first), with the master's own event timestamps, so neither the
// submission before the first end nor this process's lag is counted.
//
//   zforce-bench-dispatch --api EP --events EP --job NAME --count K
//       [--submit N]            submit N instances once the tap is live, in calls of
//       [--batch B]             B (default 100,000, the api's limit); the figure counts the
//                               ends stamped after the last call was answered (the master
//                               no longer takes submissions in: a backlog is being
//                               dispatched, as with --backlog), the details line also the
//                               rate from the first end
//       [--backlog Q --refill B]
//                               Q are already waiting; keep about Q waiting: B more are
//                               submitted whenever the queue's own count (queue.show, asked
//                               again as soon as it answers), plus what was submitted since,
//                               minus what the ends' rate says was dispatched since, is
//                               Q - B or less (never beyond the queue's max_queued).
//                               Submissions do not wait for each other's replies (up to 8
//                               at once): a queue of 1,000 lasts about 10 ms at 100,000/s,
//                               and a reply, which waits for a commit, 5-20 ms under load.
//                               (A refill after every B ends seen on the tap, which come
//                               late, left such a queue empty most of the time.) Prints
//                               how the sampled count went.
//       [--queue NAME]          the job's queue, for the refill (default "default")
//       [--ready-file PATH]     created once the tap is live (start the workers after it)
//       [--timeout S]           give up after S seconds (default 600)
//
// Prints `dispatch_per_s: X` and a `# dispatch:` line with the details.

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <string>
#include <unordered_set>
#include <vector>

#include <zmq.hpp>

#include "bench/bench_client.h"

namespace {

namespace proto = zf::proto;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

[[noreturn]] void die(const std::string& why) { zf::bench::die("dispatch", why); }

struct Args {
  std::string api, events, job, ready_file, queue = "default";
  uint64_t count = 0, submit = 0, batch = 100000, backlog = 0, refill = 0;
  int timeout_s = 600;
};

Args parse(int argc, char** argv) {
  Args a;
  for (int i = 1; i < argc; ++i) {
    std::string k = argv[i];
    if (i + 1 >= argc) die("missing value after " + k);
    std::string v = argv[++i];
    if (k == "--api") a.api = v;
    else if (k == "--events") a.events = v;
    else if (k == "--job") a.job = v;
    else if (k == "--count") a.count = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--submit") a.submit = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--batch") a.batch = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--backlog") a.backlog = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--refill") a.refill = std::strtoull(v.c_str(), nullptr, 10);
    else if (k == "--ready-file") a.ready_file = v;
    else if (k == "--queue") a.queue = v;
    else if (k == "--timeout") a.timeout_s = std::atoi(v.c_str());
    else die("unknown option " + k);
  }
  if (a.api.empty() || a.events.empty() || a.job.empty() || a.count < 2 || a.timeout_s < 1 ||
      a.refill > 100000 || (a.refill > 0 && a.refill >= a.backlog) || a.batch < 1 || a.batch > 100000)
    die("usage: --api EP --events EP --job NAME --count K (>= 2) [--submit N [--batch B (<= 100000)]] "
        "[--backlog Q --refill B (B < Q, B <= 100000)] [--queue NAME] [--ready-file PATH] [--timeout S]");
  return a;
}

// The shared api/tap client, plus submission in calls of at most `batch`.
class Probe : public zf::bench::BenchClient {
 public:
  explicit Probe(const Args& a)
      : BenchClient("dispatch", a.api, a.events,
                    {"instance.succeeded", "instance.failed", "instance.timed_out", "instance.cancelled"}) {}

  void run(const std::string& job, uint64_t n, uint64_t batch = 100000) {
    while (n > 0) {
      uint64_t c = std::min<uint64_t>(n, batch);
      call("run", {{"job", job}, {"params", nlohmann::json::object()}, {"count", c}}, 120s);
      n -= c;
    }
  }
};

// Keeps about `backlog` instances of a queue waiting (see --backlog above).
class Refiller {
 public:
  Refiller(Probe& p, const Args& a) : p_(p), a_(a) {}

  // Takes the replies that have come and sends what is due; call often, with
  // the rate at which the queue is emptied (ends per second seen so far).
  void step(double drain_per_s) {
    const auto now = Clock::now();
    if (show_req_ == 0) {
      show_req_ = p_.send_request("queue.show", {{"name", a_.queue}});
      show_sent_ = now;
      runs_at_show_ = runs_sent_;
      unanswered_at_show_ = runs_.size();
    }
    while (auto r = p_.take_reply()) {
      if (runs_.erase(r->req)) continue;
      if (r->req != show_req_) p_.die("a reply to request " + std::to_string(r->req) + ", which is not ours");
      show_req_ = 0;
      const int64_t w = r->result.at("waiting").get<int64_t>();
      waiting_min = waiting_min < 0 ? w : std::min(waiting_min, w);
      waiting_max = std::max(waiting_max, w);
      waiting_sum += w;
      ++samples;
      if (w == 0) ++samples_empty;
      sample_ = Sample{w, r->result.at("max_queued").get<int64_t>(), show_sent_, runs_at_show_, unanswered_at_show_};
    }
    if (!sample_) return;
    // What waits now, by the last count: the master counted at about the
    // time it was asked (its reply waits for a commit), requests are read in
    // the order sent (the runs sent after it are not in it), and since then
    // the queue has been emptied at about the rate the ends come.
    // An upper bound must stay within the queue's max_queued (1,000,000 by
    // default), or the run is refused: it leaves out the emptying and counts
    // the runs still unanswered when the count was asked as not in it (a
    // run is queued in slices, possibly after the count of its turn).
    const double age_s = std::chrono::duration<double>(now - sample_->asked).count();
    const auto refill = static_cast<int64_t>(a_.refill);
    const auto sent_since = static_cast<int64_t>(runs_sent_ - sample_->runs_before);
    double expected = std::max(static_cast<double>(sample_->waiting + refill * sent_since) - drain_per_s * age_s, 0.0);
    int64_t at_most = sample_->waiting + refill * (sent_since + static_cast<int64_t>(sample_->unanswered_before));
    while (expected <= static_cast<double>(a_.backlog - a_.refill) && at_most + refill <= sample_->max_queued &&
           runs_.size() < kRunsInFlight) {
      runs_.insert(p_.send_request(
          "run", {{"job", a_.job}, {"params", nlohmann::json::object()}, {"count", a_.refill}}));
      ++runs_sent_;
      expected += static_cast<double>(a_.refill);
      at_most += refill;
    }
  }

  uint64_t runs_sent() const { return runs_sent_; }
  // The queue's counts of waiting instances: lowest, highest, sum, how many,
  // how many were 0 (-1: none yet).
  int64_t waiting_min = -1, waiting_max = -1, waiting_sum = 0;
  uint64_t samples = 0, samples_empty = 0;

 private:
  struct Sample {
    int64_t waiting, max_queued;
    Clock::time_point asked;
    uint64_t runs_before;  // runs sent before it was asked
    size_t unanswered_before;  // of those, the ones not yet answered then
  };
  static constexpr size_t kRunsInFlight = 8;
  Probe& p_;
  const Args& a_;
  uint64_t show_req_ = 0;  // the queue.show awaiting its reply; 0: none
  Clock::time_point show_sent_{};
  uint64_t runs_at_show_ = 0;
  size_t unanswered_at_show_ = 0;
  uint64_t runs_sent_ = 0;
  std::optional<Sample> sample_;
  std::unordered_set<uint64_t> runs_;  // run requests awaiting their replies
};

}  // namespace

int main(int argc, char** argv) {
  Args a = parse(argc, argv);
  Probe p(a);
  p.sync_tap();
  if (!a.ready_file.empty()) std::ofstream(a.ready_file) << "ready\n";
  auto t_submit = Clock::now();
  if (a.submit > 0) p.run(a.job, a.submit, a.batch);
  double submit_s = std::chrono::duration<double>(Clock::now() - t_submit).count();
  // With --submit, the figure counts the ends stamped after the last call
  // was answered: until then the master also takes the submissions in.
  const int64_t submitted_us =
      a.submit > 0 ? std::chrono::duration_cast<std::chrono::microseconds>(
                         std::chrono::system_clock::now().time_since_epoch())  // the clock of the events' ts
                         .count()
                   : 0;
  uint64_t late_ends = 0;        // ends stamped after submitted_us
  int64_t ts_first_late = 0;     // the first of them

  auto deadline = Clock::now() + std::chrono::seconds(a.timeout_s);
  std::optional<Refiller> refiller;
  if (a.refill > 0) refiller.emplace(p, a);
  uint64_t ended = 0, failed = 0;
  int64_t ts_first = 0, ts_last = 0;
  Clock::time_point t_first{}, t_last{};
  while (ended < a.count) {
    if (refiller) {
      const double running_s = ended > 1 ? std::chrono::duration<double>(Clock::now() - t_first).count() : 0;
      refiller->step(running_s > 0 ? static_cast<double>(ended - 1) / running_s : 0);
    }
    // With a refiller, waits for a reply as well as for an event.
    auto e = p.next_event(refiller ? Clock::now() : deadline);
    if (!e) {
      if (Clock::now() >= deadline)
        die("only " + std::to_string(ended) + " of " + std::to_string(a.count) + " instances ended within " +
            std::to_string(a.timeout_s) + " s");
      if (refiller) p.wait_any(deadline);
      continue;
    }
    if (e->type == "tap.ping" || e->job != a.job) continue;
    if (ended == 0) {
      ts_first = e->ts_us;
      t_first = Clock::now();
    }
    ++ended;
    if (e->ts_us >= submitted_us && late_ends++ == 0) ts_first_late = e->ts_us;
    ts_last = e->ts_us;
    t_last = Clock::now();
    if (e->type != "instance.succeeded") ++failed;
  }
  double span = static_cast<double>(ts_last - ts_first) / 1e6;
  double wall = std::chrono::duration<double>(t_last - t_first).count();
  if (span <= 0) die("the window has no length");
  if (a.submit > 0) {
    const double late_span = static_cast<double>(ts_last - ts_first_late) / 1e6;
    if (late_ends < 2 || late_span <= 0) die("fewer than 2 ends after the submission: submit more");
    std::printf("dispatch_per_s: %.1f\n", static_cast<double>(late_ends - 1) / late_span);
    std::printf("# after the submission: %llu ends in %.3f s; from the first end, submission included: %.1f/s\n",
                static_cast<unsigned long long>(late_ends), late_span, static_cast<double>(a.count - 1) / span);
  } else {
    std::printf("dispatch_per_s: %.1f\n", static_cast<double>(a.count - 1) / span);
  }
  std::printf("# dispatch: %llu ends of %s in %.3f s on the master's clock (%.3f s as received here, %.1f/s), "
              "%llu not succeeded; submitted %llu first (%.2f s), %llu refills of %llu; waiting (the queue's "
              "count, as often as it answers; -1: not asked) %lld..%lld\n",
              static_cast<unsigned long long>(a.count), a.job.c_str(), span, wall,
              static_cast<double>(a.count - 1) / wall, static_cast<unsigned long long>(failed),
              static_cast<unsigned long long>(a.submit), submit_s,
              static_cast<unsigned long long>(refiller ? refiller->runs_sent() : 0),
              static_cast<unsigned long long>(a.refill), static_cast<long long>(refiller ? refiller->waiting_min : -1),
              static_cast<long long>(refiller ? refiller->waiting_max : -1));
  if (refiller && refiller->samples > 0)
    std::printf("# queue: %llu samples, mean %.0f waiting, %.1f %% of them empty\n",
                static_cast<unsigned long long>(refiller->samples),
                static_cast<double>(refiller->waiting_sum) / static_cast<double>(refiller->samples),
                100.0 * static_cast<double>(refiller->samples_empty) / static_cast<double>(refiller->samples));
  return failed == 0 ? 0 : 1;
}
