#include "common/zmq_util.h"

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

std::string last_endpoint(zmq::socket_t& s) { return s.get(zmq::sockopt::last_endpoint); }

}  // namespace zf
