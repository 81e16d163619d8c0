#include "common/zmq_util.h"

#include <poll.h>

#include <cerrno>

namespace zf {

bool recv_multipart(zmq::socket_t& s, std::vector<zmq::message_t>& parts) {
  parts.clear();
  bool first = true;
  while (true) {
    zmq::message_t m;
    auto r = s.recv(m, first ? zmq::recv_flags::dontwait : zmq::recv_flags::none);
    if (!r) return false;  // nothing waiting (only possible on the first part)
    first = false;
    bool more = m.more();
    // Frames beyond the limit are read (the message must be consumed whole)
    // but not kept: a peer cannot make us hold a million frames.
    if (parts.size() <= kMaxFramesKept) parts.push_back(std::move(m));
    if (!more) return true;
  }
}

Status send_multipart(zmq::socket_t& s, const std::vector<std::string_view>& frames) {
  try {
    for (size_t i = 0; i < frames.size(); ++i) {
      auto flags = zmq::send_flags::dontwait;
      if (i + 1 < frames.size()) flags = flags | zmq::send_flags::sndmore;
      auto r = s.send(zmq::buffer(frames[i].data(), frames[i].size()), flags);
      if (!r) return make_error("send would block (peer's queue is full)");
    }
  } catch (const zmq::error_t& e) {
    return make_error(std::string("send failed: ") + e.what());
  }
  return {};
}

namespace {

// What the socket can do now, among the events asked for (ZMQ_EVENTS also
// runs the socket's pending commands, which resets its ZMQ_FD).
short socket_events(void* socket, short wanted) {
  int events = 0;
  size_t size = sizeof events;
  if (zmq_getsockopt(socket, ZMQ_EVENTS, &events, &size) != 0) throw zmq::error_t();
  return static_cast<short>(events & wanted);
}

short to_poll_events(short zmq_events) {
  short e = 0;
  if (zmq_events & ZMQ_POLLIN) e |= POLLIN;
  if (zmq_events & ZMQ_POLLOUT) e |= POLLOUT;
  if (zmq_events & ZMQ_POLLPRI) e |= POLLPRI;
  return e;
}

// As zmq_poll reports a descriptor's poll() result.
short from_poll_events(short revents) {
  short e = 0;
  if (revents & POLLIN) e |= ZMQ_POLLIN;
  if (revents & POLLOUT) e |= ZMQ_POLLOUT;
  if (revents & POLLPRI) e |= ZMQ_POLLPRI;
  if (revents & ~(POLLIN | POLLOUT | POLLPRI)) e |= ZMQ_POLLERR;
  return e;
}

}  // namespace

int poll_items(zmq::pollitem_t* items, size_t count, std::chrono::milliseconds timeout) {
  using Clock = std::chrono::steady_clock;
  const auto deadline = timeout.count() > 0 ? Clock::now() + timeout : Clock::time_point{};
  thread_local std::vector<pollfd> fds;
  thread_local std::vector<size_t> of_item;
  while (true) {
    int ready = 0;
    for (size_t i = 0; i < count; ++i) {
      items[i].revents = 0;
      if (items[i].socket && items[i].events) {
        items[i].revents = socket_events(items[i].socket, items[i].events);
        if (items[i].revents) ++ready;
      }
    }
    // Waiting only when no socket is ready; otherwise the descriptors are
    // looked at without waiting, so that a busy socket does not hide them.
    int wait_ms = 0;
    if (ready == 0) {
      if (timeout.count() < 0) {
        wait_ms = -1;
      } else if (timeout.count() > 0) {
        auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
        wait_ms = left > 0 ? static_cast<int>(left) : 0;
      }
    }
    fds.clear();
    of_item.clear();
    for (size_t i = 0; i < count; ++i) {
      const zmq::pollitem_t& it = items[i];
      if (!it.events) continue;
      if (it.socket) {
        if (ready > 0) continue;  // its events are known
        int fd = -1;
        size_t size = sizeof fd;
        if (zmq_getsockopt(it.socket, ZMQ_FD, &fd, &size) != 0) throw zmq::error_t();
        fds.push_back({fd, POLLIN, 0});
      } else if (it.fd >= 0) {
        fds.push_back({it.fd, to_poll_events(it.events), 0});
      } else {
        continue;
      }
      of_item.push_back(i);
    }
    if (fds.empty() && wait_ms == 0) return ready;
    int rc = ::poll(fds.data(), fds.size(), wait_ms);
    if (rc < 0) {
      if (errno == EINTR) return ready;
      throw zmq::error_t();
    }
    for (size_t k = 0; k < fds.size(); ++k) {
      zmq::pollitem_t& it = items[of_item[k]];
      if (!fds[k].revents) continue;
      // A socket's descriptor only says "look again": ask it what it has.
      it.revents = it.socket ? socket_events(it.socket, it.events) : from_poll_events(fds[k].revents);
      if (it.revents) ++ready;
    }
    if (ready > 0 || wait_ms == 0) return ready;
    // Woken for nothing (a command between libzmq's threads): wait again,
    // for what is left of the timeout.
    if (timeout.count() > 0 && Clock::now() >= deadline) return 0;
  }
}

std::string last_endpoint(zmq::socket_t& s) { return s.get(zmq::sockopt::last_endpoint); }

}  // namespace zf
