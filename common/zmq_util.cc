#include "common/zmq_util.h"

namespace zf {

bool recv_multipart(zmq::socket_t& s, std::vector<zmq::message_t>& parts) {
  parts.clear();
  while (true) {
    zmq::message_t m;
    auto r = s.recv(m, parts.empty() ? zmq::recv_flags::dontwait : zmq::recv_flags::none);
    if (!r) return false;  // nothing waiting (only possible on the first part)
    bool more = m.more();
    parts.push_back(std::move(m));
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
