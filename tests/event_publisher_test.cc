// The event tap's publisher (master/event_publisher.*) with real ZeroMQ
// sockets on loopback: it learns the subscribed prefixes from its XPUB
// socket, sends only what a subscriber wants, and numbers every event,
// sent or not.
#include "master/event_publisher.h"

#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include <doctest/doctest.h>
#include <zmq.hpp>

#include "common/protocol.h"
#include "common/zmq_util.h"

namespace {

using namespace std::chrono_literals;

// Polls the publisher's subscriptions until `pred` holds (ZeroMQ delivers a
// subscription asynchronously), for up to 5 s.
template <class Pred>
bool settle(zf::EventPublisher& pub, Pred pred) {
  auto until = std::chrono::steady_clock::now() + 5s;
  while (std::chrono::steady_clock::now() < until) {
    zmq::pollitem_t item{pub.handle(), 0, ZMQ_POLLIN, 0};
    zmq::poll(&item, 1, 50ms);
    pub.take_subscriptions();
    if (pred()) return true;
  }
  return false;
}

zf::proto::Event event(const std::string& type) {
  zf::proto::Event e;
  e.type = type;
  e.instance = 7;
  return e;
}

// Every event the subscriber has now (waits up to `wait` for the first).
std::vector<zf::proto::Event> received(zmq::socket_t& sub, std::chrono::milliseconds wait) {
  std::vector<zf::proto::Event> out;
  zmq::pollitem_t item{sub.handle(), 0, ZMQ_POLLIN, 0};
  std::vector<zmq::message_t> parts;
  while (zmq::poll(&item, 1, out.empty() ? wait : 100ms) > 0) {
    if (!zf::recv_multipart(sub, parts)) break;
    REQUIRE(parts.size() == 2);
    auto d = zf::proto::decode(parts[1].data(), parts[1].size());
    auto* m = std::get_if<zf::proto::Message>(&d);
    REQUIRE(m);
    auto* e = std::get_if<zf::proto::Event>(m);
    REQUIRE(e);
    CHECK(std::string(static_cast<const char*>(parts[0].data()), parts[0].size()) == e->type);
    out.push_back(*e);
  }
  return out;
}

}  // namespace

TEST_CASE("the tap sends only what subscribers want, learns them from its socket, and numbers every event") {
  zmq::context_t ctx;
  zf::EventPublisher pub(ctx, "tcp://127.0.0.1:*");
  const std::string endpoint = pub.endpoint();

  // Nobody listens: nothing is wanted, and events still take their numbers.
  CHECK(pub.subscription_count() == 0);
  CHECK_FALSE(pub.wanted("instance.queued"));
  pub.publish(event("instance.queued"));
  pub.skip();
  CHECK(pub.last_seq() == 2);
  CHECK(pub.held_count() == 0);  // not encoded, not held

  zmq::socket_t sub(ctx, zmq::socket_type::sub);
  sub.set(zmq::sockopt::linger, 0);
  sub.set(zmq::sockopt::subscribe, "instance.");
  sub.connect(endpoint);
  REQUIRE(settle(pub, [&] { return pub.subscription_count() == 1; }));
  CHECK(pub.wanted("instance.succeeded"));
  CHECK_FALSE(pub.wanted("member.joined"));
  CHECK_FALSE(pub.wanted("instance"));  // a prefix of the subscription is not covered by it

  pub.publish(event("member.joined"));     // 3: not wanted
  pub.publish(event("instance.running"));  // 4
  pub.publish(event("instance.succeeded"));  // 5
  CHECK(pub.held_count() == 2);
  pub.flush();
  auto got = received(sub, 2000ms);
  REQUIRE(got.size() == 2);
  CHECK(got[0].type == "instance.running");
  CHECK(got[0].seq == 4);
  CHECK(got[1].type == "instance.succeeded");
  CHECK(got[1].seq == 5);

  // A second subscriber of everything: both prefixes are wanted.
  zmq::socket_t all(ctx, zmq::socket_type::sub);
  all.set(zmq::sockopt::linger, 0);
  all.set(zmq::sockopt::subscribe, "");
  all.connect(endpoint);
  REQUIRE(settle(pub, [&] { return pub.subscription_count() == 2; }));
  CHECK(pub.wanted("member.joined"));
  pub.publish(event("member.joined"));  // 6
  pub.flush();
  got = received(all, 2000ms);
  REQUIRE(got.size() == 1);
  CHECK(got[0].seq == 6);
  CHECK(received(sub, 200ms).empty());  // not its prefix

  // Subscribers that go away take their prefixes with them.
  all.close();
  REQUIRE(settle(pub, [&] { return pub.subscription_count() == 1; }));
  CHECK_FALSE(pub.wanted("member.joined"));
  sub.set(zmq::sockopt::unsubscribe, "instance.");
  REQUIRE(settle(pub, [&] { return pub.subscription_count() == 0; }));
  CHECK_FALSE(pub.wanted("instance.queued"));
  pub.publish(event("instance.queued"));
  CHECK(pub.held_count() == 0);
  CHECK(pub.last_seq() == 7);
}

TEST_CASE("the tap ignores what a peer sends to it that is not a subscription") {
  zmq::context_t ctx;
  zf::EventPublisher pub(ctx, "tcp://127.0.0.1:*");
  // An XSUB may send any frame upstream; only [0|1][prefix] frames count.
  zmq::socket_t xsub(ctx, zmq::socket_type::xsub);
  xsub.set(zmq::sockopt::linger, 0);
  xsub.connect(pub.endpoint());
  xsub.send(zmq::str_buffer("\x07junk"));
  xsub.send(zmq::message_t(), zmq::send_flags::none);  // empty
  const char sub_all[] = {1};
  xsub.send(zmq::buffer(sub_all, 1));  // then a real subscription to everything
  REQUIRE(settle(pub, [&] { return pub.subscription_count() == 1; }));
  CHECK(pub.wanted("anything"));
}
