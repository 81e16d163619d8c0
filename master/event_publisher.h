// The event tap: an XPUB socket on which every state change is published with
// a sequence number, so subscribers can tell when they missed something.
// Owned by the master loop (single-threaded).
//
// XPUB rather than PUB: the socket tells which topic prefixes subscribers
// want (take_subscriptions() keeps the set), so an event nobody subscribed
// to is neither built nor encoded nor copied into a message. Events were
// about a third of the loop's work per instance with no tap attached. Its
// seq is used all the same: numbering does not depend on who listens.
#pragma once

#include <cstdint>
#include <functional>
#include <deque>
#include <set>
#include <string>
#include <string_view>

#include <zmq.hpp>

#include "common/protocol.h"

namespace zf {

class EventPublisher {
 public:
  // `before_bind` runs on the PUB socket before it binds (the master's CURVE
  // server options, see master/security.h).
  EventPublisher(zmq::context_t& ctx, const std::string& endpoint,
                 const std::function<void(zmq::socket_t&)>& before_bind = {});

  // Stamps seq and ts_us and holds the event until flush(): events go out
  // only after the loop turn that made them is committed to the store. An
  // event of a type no subscriber wants only takes its seq.
  void publish(proto::Event e);
  // Whether a subscriber wants events of this type (a callee about to build
  // an event may skip that work, calling skip() instead of publish()).
  bool wanted(std::string_view type) const;
  // Takes the seq of an event nobody wants, as publish() would.
  void skip() { ++seq_; }
  // The XPUB socket, for the loop's poll: readable when a subscription came
  // or went; take_subscriptions() then reads them.
  void* handle() { return socket_.handle(); }
  void take_subscriptions();
  // The topic prefixes subscribed to now (tests, stats).
  size_t subscription_count() const { return topics_.size() + untracked_; }
  // Sends what publish() held, as [type][EVENT message].
  void flush();
  // Sends only the oldest n held events (those of turns already committed,
  // while later turns are still being written).
  void flush(size_t n);
  size_t held_count() const { return held_.size(); }
  uint64_t last_seq() const { return seq_; }
  // After a restart: numbering goes on after the last number ever used.
  void continue_after(uint64_t last_seq) { seq_ = last_seq; }
  std::string endpoint();
  uint64_t dropped() const { return dropped_; }

 private:
  zmq::socket_t socket_;
  uint64_t seq_ = 0;
  std::deque<std::pair<std::string, std::string>> held_;  // (type, encoded EVENT)
  // Prefixes with at least one subscriber. XPUB (not verbose) reports a
  // prefix when its first subscriber subscribes and when its last one
  // unsubscribes or goes away, so a set mirrors it exactly, up to
  // kMaxTopics: beyond, further prefixes are only counted (untracked_) and
  // every event is wanted until they are gone again. A peer subscribing to
  // random prefixes so costs neither memory nor time per event.
  static constexpr size_t kMaxTopics = 1024;
  std::set<std::string, std::less<>> topics_;
  uint64_t untracked_ = 0;
  uint64_t dropped_ = 0;
};

int64_t wall_clock_us();

}  // namespace zf
