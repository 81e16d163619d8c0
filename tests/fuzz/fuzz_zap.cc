// libFuzzer target: ZAP requests (ZeroMQ RFC 27) as libzmq hands them to the
// master's ZapHandler. The handler reads its requests from a ROUTER socket
// (no parsing function of its own to call), so the target binds a keyed
// handler in a context of its own and sends each input, split into frames,
// from a DEALER over inproc; then handle_one() answers and the reply is read.
//
// Input: frames, each one length byte plus that many bytes (zap_fixture.h);
// libzmq's own requests start with an empty delimiter frame.
//
// Properties: every request gets exactly one reply ending in the six RFC 27
// reply frames, with the request id echoed and status 200, 400 or 500; only
// a CURVE request is admitted (the handler has keys), and never without a
// User-Id; a request that is not RFC 27 gets 500.
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include <zmq.hpp>

#include "common/log.h"
#include "master/zap_handler.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/zap_fixture.h"

namespace {

using zf::fuzz::fixed_key;

struct Fixture {
  zmq::context_t ctx;
  std::filesystem::path dir;
  std::unique_ptr<zf::ZapHandler> zap;
  std::unique_ptr<zmq::socket_t> client;
};

Fixture* g = nullptr;

zf::NamedKey named(const std::string& name, const std::string& raw) {
  auto z85 = zf::encode_z85_key(raw);
  if (!z85.ok()) std::abort();
  return zf::NamedKey{name, *z85, zf::fingerprint(*z85), {}};
}

void tear_down() {
  if (!g) return;
  std::error_code ec;
  std::filesystem::remove_all(g->dir, ec);
}

std::vector<std::string> split_frames(const uint8_t* data, size_t size) {
  std::vector<std::string> frames;
  size_t i = 0;
  while (i < size) {
    size_t len = data[i++];
    size_t n = std::min(len, size - i);
    frames.emplace_back(reinterpret_cast<const char*>(data + i), n);
    i += n;
  }
  return frames;
}

std::vector<std::string> receive(zmq::socket_t& s) {
  std::vector<std::string> parts;
  zmq::pollitem_t item = {s.handle(), 0, ZMQ_POLLIN, 0};
  if (zmq::poll(&item, 1, std::chrono::milliseconds(2000)) <= 0) return parts;
  while (true) {
    zmq::message_t m;
    if (!s.recv(m, zmq::recv_flags::dontwait)) break;
    parts.emplace_back(static_cast<const char*>(m.data()), m.size());
    if (!m.more()) break;
  }
  return parts;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  zf::log::set_min_level(zf::log::Level::Error);  // refusals are logged as warnings
  g = new Fixture;
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/zf-fuzz-zap-XXXXXX";
  if (!::mkdtemp(templ.data())) std::abort();
  g->dir = templ;
  std::atexit(tear_down);

  zf::KeyDir keys;
  keys.dir = g->dir;
  keys.master = zf::KeyPair{*zf::encode_z85_key(fixed_key('M')), *zf::encode_z85_key(fixed_key('S'))};
  keys.workers = {named("w1", zf::fuzz::kWorkerKey)};
  keys.revoked = {named("old", zf::fuzz::kRevokedKey)};
  keys.admin_clients = {named("alice", zf::fuzz::kAdminKey)};
  keys.readonly_clients = {named("bob", zf::fuzz::kReadOnlyKey)};
  auto zap = zf::ZapHandler::create(g->ctx, keys, [] {
    return std::chrono::system_clock::time_point{std::chrono::seconds(1'800'000'000)};
  });
  if (!zap.ok()) {
    std::fprintf(stderr, "fuzz_zap: %s\n", zap.error().message.c_str());
    std::abort();
  }
  g->zap = std::move(*zap);
  g->client = std::make_unique<zmq::socket_t>(g->ctx, zmq::socket_type::dealer);
  g->client->set(zmq::sockopt::linger, 0);
  g->client->connect(zf::kZapEndpoint);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::vector<std::string> frames = split_frames(data, size);
  if (frames.empty()) return 0;  // a ZeroMQ message has at least one frame
  for (size_t i = 0; i < frames.size(); ++i)
    g->client->send(zmq::buffer(frames[i]), i + 1 < frames.size() ? zmq::send_flags::sndmore : zmq::send_flags::none);

  zmq::pollitem_t item = {g->zap->socket().handle(), 0, ZMQ_POLLIN, 0};
  FUZZ_CHECK(zmq::poll(&item, 1, std::chrono::milliseconds(2000)) == 1, "the request did not arrive");
  FUZZ_CHECK(g->zap->handle_one(), "handle_one found no request");
  FUZZ_CHECK(!g->zap->handle_one(), "one request, two answers");
  (void)g->zap->take_refusals();

  // What the handler sees after the routing id: an envelope up to the first
  // empty frame (if any), then the RFC 27 request.
  size_t body_start = 0;
  for (size_t i = 0; i < frames.size(); ++i)
    if (frames[i].empty()) {
      body_start = i + 1;
      break;
    }
  const std::vector<std::string> body(frames.begin() + static_cast<std::ptrdiff_t>(body_start), frames.end());

  const std::vector<std::string> reply = receive(*g->client);
  FUZZ_CHECK(reply.size() == body_start + 6, "a reply of " + std::to_string(reply.size()) + " frames");
  const std::string* r = reply.data() + body_start;
  FUZZ_CHECK(r[0] == "1.0", "reply version " + r[0]);
  FUZZ_CHECK(r[1] == (body.size() > 1 ? body[1] : std::string()), "the request id was not echoed");
  FUZZ_CHECK(r[2] == "200" || r[2] == "400" || r[2] == "500", "status " + r[2]);
  if (body.size() < 6 || body[0] != "1.0") FUZZ_CHECK(r[2] == "500", "a non-RFC 27 request got " + r[2]);
  if (r[2] == "200") {
    FUZZ_CHECK(body[5] == "CURVE", "admitted a " + body[5] + " peer with keys configured");
    FUZZ_CHECK(!r[4].empty(), "admitted without a User-Id");
  } else {
    FUZZ_CHECK(r[4].empty(), "a User-Id on a refusal");
  }
  return 0;
}
