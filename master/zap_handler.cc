#include "master/zap_handler.h"

#include <sys/stat.h>

#include <algorithm>
#include <ctime>

#include <zmq.h>

#include "common/zmq_util.h"

namespace zf {

namespace {

std::string utc_text(std::chrono::system_clock::time_point t) {
  std::time_t secs = std::chrono::system_clock::to_time_t(t);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::chrono::system_clock::time_point file_mtime(const std::filesystem::path& p) {
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) return {};
  return std::chrono::system_clock::from_time_t(st.st_mtime);
}

}  // namespace

const char* role_name(ApiRole role) {
  switch (role) {
    case ApiRole::None: return "none";
    case ApiRole::ReadOnly: return "readonly";
    case ApiRole::Admin: return "admin";
  }
  return "?";
}

bool is_read_only_op(std::string_view op) {
  static constexpr std::string_view kReadOnly[] = {
      "job.list", "job.show", "instances", "instance.show", "wait",
      "workers",  "stats",    "queue.list", "queue.show",   "workers.pending"};
  return std::find(std::begin(kReadOnly), std::end(kReadOnly), op) != std::end(kReadOnly);
}

std::string user_id_of(const zmq::message_t& frame) {
  const char* v = zmq_msg_gets(frame.handle(), "User-Id");
  return v ? std::string(v) : std::string();
}

ZapHandler::ZapHandler(zmq::context_t& ctx, Clock clock)
    : socket_(ctx, zmq::socket_type::router), clock_(std::move(clock)) {
  if (!clock_) clock_ = [] { return std::chrono::system_clock::now(); };
}

Result<std::unique_ptr<ZapHandler>> ZapHandler::create_open(zmq::context_t& ctx, Clock clock) {
  std::unique_ptr<ZapHandler> h;
  try {
    h.reset(new ZapHandler(ctx, std::move(clock)));
    h->socket_.set(zmq::sockopt::linger, 0);
    h->socket_.bind(kZapEndpoint);
  } catch (const zmq::error_t& e) {
    return make_error(std::string("cannot bind the ZAP handler on ") + kZapEndpoint + ": " + e.what() +
                      " (is another handler bound in this context?)");
  }
  return h;
}

Result<std::unique_ptr<ZapHandler>> ZapHandler::create(zmq::context_t& ctx, KeyDir keys, Clock clock) {
  auto made = create_open(ctx, std::move(clock));
  if (!made) return made.error();
  auto h = std::move(*made);
  h->keyed_ = true;
  h->dir_ = keys.dir;
  h->server_ = keys.master;
  for (const auto& k : keys.workers) {
    h->worker_by_key_[k.public_key] = k.name;
    h->key_by_worker_[k.name] = k.public_key;
  }
  for (const auto& k : keys.admin_clients) {
    h->admin_by_key_[k.public_key] = k.name;
    h->admin_names_[k.name] = k.public_key;
  }
  for (const auto& k : keys.readonly_clients) {
    h->readonly_by_key_[k.public_key] = k.name;
    h->readonly_names_[k.name] = k.public_key;
  }
  for (const auto& k : keys.revoked) {
    // A key that was re-admitted by hand (file copied back to workers/) wins.
    if (!h->worker_by_key_.count(k.public_key)) h->revoked_by_key_[k.public_key] = k.name;
  }
  for (const auto& k : keys.pending) {
    if (h->worker_by_key_.count(k.public_key) || h->revoked_by_key_.count(k.public_key)) continue;
    PendingWorker p;
    p.public_key = k.public_key;
    p.fingerprint = k.fingerprint;
    p.first_seen = p.last_seen = file_mtime(k.path);
    h->pending_[k.public_key] = std::move(p);
  }
  return h;
}

size_t ZapHandler::drain() {
  size_t n = 0;
  while (handle_one()) ++n;
  return n;
}

bool ZapHandler::handle_one() {
  std::vector<zmq::message_t> frames;
  try {
    while (true) {
      zmq::message_t m;
      auto r = socket_.recv(m, frames.empty() ? zmq::recv_flags::dontwait : zmq::recv_flags::none);
      if (!r) return false;  // nothing waiting
      bool more = m.more();
      frames.push_back(std::move(m));
      if (!more) break;
    }
  } catch (const zmq::error_t& e) {
    log::warn(std::string("ZAP handler: receive failed: ") + e.what());
    return false;
  }

  // Envelope: the routing id, and everything up to the empty delimiter that a
  // REQ-style peer (libzmq's ZAP client) puts in front of the request.
  size_t body_start = 1;
  for (size_t i = 1; i < frames.size(); ++i) {
    if (frames[i].size() == 0) {
      body_start = i + 1;
      break;
    }
  }
  std::vector<zmq::message_t> envelope;
  for (size_t i = 0; i < body_start && i < frames.size(); ++i) envelope.emplace_back(frames[i].data(), frames[i].size());
  std::vector<std::string_view> body;
  for (size_t i = body_start; i < frames.size(); ++i) body.push_back(view(frames[i]));

  auto malformed = [&](std::string why) {
    ++counters_.malformed;
    Decision d{500, "", "malformed ZAP request: " + why};
    Refusal r;
    r.domain = body.size() > 2 ? printable(body[2]) : "";
    r.address = body.size() > 3 ? printable(body[3], 64) : "";
    r.mechanism = body.size() > 5 ? printable(body[5], 16) : "";
    r.reason = d.reason;
    r.status = 500;
    refuse(std::move(r));
    reply(envelope, body.size() > 1 ? body[1] : std::string_view(), d);
    return true;
  };

  // RFC 27: version, request id, domain, address, identity, mechanism, credentials...
  if (body.size() < 6)
    return malformed(std::to_string(body.size()) + " frames after the envelope, at least 6 expected");
  if (body[0] != "1.0") return malformed("version '" + printable(body[0]) + "', expected '1.0'");
  const std::string_view domain = body[2];
  const std::string_view address = body[3];
  const std::string_view mechanism = body[5];
  const size_t credentials = body.size() - 6;
  std::string_view raw_key;
  if (mechanism == "NULL") {
    if (credentials != 0) return malformed("NULL mechanism with " + std::to_string(credentials) + " credential frames");
  } else if (mechanism == "PLAIN") {
    if (credentials != 2) return malformed("PLAIN mechanism with " + std::to_string(credentials) + " credential frames");
  } else if (mechanism == "CURVE") {
    if (credentials != 1 || body[6].size() != kKeyBytes)
      return malformed("CURVE credentials must be one 32-byte key");
    raw_key = body[6];
  } else if (mechanism == "GSSAPI") {
    // Well-formed but not something zforce accepts; decided below.
  } else {
    return malformed("unknown mechanism '" + printable(mechanism) + "'");
  }

  Decision d = decide(domain, mechanism, raw_key, address);
  if (d.status == 200) {
    ++counters_.admitted;
  } else {
    ++counters_.refused;
    Refusal r;
    r.domain = printable(domain);
    r.address = printable(address, 64);
    r.mechanism = std::string(mechanism);
    r.fingerprint = raw_key.empty() ? "" : fingerprint_raw(raw_key);
    r.reason = d.reason;
    r.status = d.status;
    refuse(std::move(r));
  }
  reply(envelope, body[1], d);
  return true;
}

ZapHandler::Decision ZapHandler::decide(std::string_view domain, std::string_view mechanism,
                                        std::string_view raw_key, std::string_view address) {
  if (!keyed_) return Decision{200, "local", "OK"};
  if (mechanism != "CURVE")
    return Decision{400, "", "the master has keys: " + std::string(mechanism) + " peers are not admitted, use CURVE"};
  auto key = encode_z85_key(raw_key);
  if (!key) return Decision{500, "", "bad CURVE key: " + key.error().message};

  if (domain == kZapDomainWorkers) return decide_worker(*key, address);
  if (domain == kZapDomainApi || domain == kZapDomainEvents) {
    if (auto it = admin_by_key_.find(*key); it != admin_by_key_.end()) return Decision{200, "admin:" + it->second, "OK"};
    if (auto it = readonly_by_key_.find(*key); it != readonly_by_key_.end())
      return Decision{200, "readonly:" + it->second, "OK"};
    return Decision{400, "", "unknown client key (not in clients/admin or clients/readonly)"};
  }
  return Decision{400, "", "unknown ZAP domain '" + printable(domain) + "'"};
}

ZapHandler::Decision ZapHandler::decide_worker(const std::string& key, std::string_view address) {
  if (auto it = worker_by_key_.find(key); it != worker_by_key_.end()) return Decision{200, it->second, "OK"};
  if (auto it = revoked_by_key_.find(key); it != revoked_by_key_.end())
    return Decision{400, "", "key revoked (worker " + it->second + " was removed)"};
  note_pending(key, address);
  if (!pending_.count(key))
    return Decision{400, "", "unknown worker key; pending list is full (" + std::to_string(kMaxPending) + " keys)"};
  return Decision{400, "", "unknown worker key; pending approval (zforce worker approve NAME --key " +
                               fingerprint(key) + ")"};
}

void ZapHandler::note_pending(const std::string& key, std::string_view address) {
  const auto now = clock_();
  auto it = pending_.find(key);
  if (it != pending_.end()) {
    it->second.address = printable(address, 64);
    it->second.last_seen = now;
    ++it->second.attempts;
    return;
  }
  if (pending_.size() >= kMaxPending) return;
  PendingWorker p;
  p.public_key = key;
  p.fingerprint = fingerprint(key);
  p.address = printable(address, 64);
  p.first_seen = p.last_seen = now;
  p.attempts = 1;
  // Persist so the operator can approve after a master restart too. A write
  // failure is logged and otherwise harmless: the key stays pending in memory.
  std::error_code ec;
  std::filesystem::create_directories(dir_ / "pending", ec);
  auto st = ec ? Status(make_error((dir_ / "pending").string() + ": " + ec.message()))
               : write_public_key(dir_ / "pending" / (p.fingerprint + ".pub"), key,
                                  "zforce pending worker key " + p.fingerprint + ", first seen from " + p.address +
                                      " at " + utc_text(now));
  if (!st) {
    uint64_t suppressed = 0;
    if (log_limit_.allow(std::chrono::steady_clock::now(), suppressed))
      log::warn("ZAP: cannot record pending worker key " + p.fingerprint + ": " + st.error().message);
  }
  pending_.emplace(key, std::move(p));
}

void ZapHandler::refuse(Refusal r) {
  uint64_t suppressed = 0;
  if (log_limit_.allow(std::chrono::steady_clock::now(), suppressed)) {
    std::string line = "refused " + (r.domain.empty() ? std::string("?") : r.domain) + " peer " +
                       (r.address.empty() ? std::string("?") : r.address);
    if (!r.fingerprint.empty()) line += " key " + r.fingerprint;
    line += ": " + r.reason;
    if (suppressed) line += " (" + std::to_string(suppressed) + " refusals not logged before this)";
    log::warn(line);
  }
  if (refusals_.size() >= kMaxRefusals) {
    ++counters_.refusals_dropped;
    return;
  }
  refusals_.push_back(std::move(r));
}

void ZapHandler::reply(const std::vector<zmq::message_t>& envelope, std::string_view request_id,
                       const Decision& d) {
  const std::string status = std::to_string(d.status);
  std::vector<std::string_view> frames = {"1.0", request_id, status, d.reason, d.user_id, ""};
  try {
    for (const auto& e : envelope) socket_.send(zmq::buffer(e.data(), e.size()), zmq::send_flags::sndmore | zmq::send_flags::dontwait);
    for (size_t i = 0; i < frames.size(); ++i) {
      auto flags = zmq::send_flags::dontwait;
      if (i + 1 < frames.size()) flags = flags | zmq::send_flags::sndmore;
      socket_.send(zmq::buffer(frames[i].data(), frames[i].size()), flags);
    }
  } catch (const zmq::error_t& e) {
    // The requester is gone (its handshake timed out); nothing to answer.
    log::debug(std::string("ZAP reply not sent: ") + e.what());
  }
}

Result<NamedKey> ZapHandler::approve(std::string_view name, std::string_view key) {
  if (!keyed_) return make_error("the master runs without keys; there is nothing to approve");
  if (auto st = check_key_name(name); !st) return make_error("cannot approve worker: " + st.error().message);
  if (name == "master") return make_error("cannot approve worker: the name 'master' is reserved for the master");
  if (auto it = key_by_worker_.find(name); it != key_by_worker_.end())
    return make_error("a worker named " + std::string(name) + " is already admitted (key " + fingerprint(it->second) +
                      "); remove it first");

  std::vector<const PendingWorker*> matches;
  for (const auto& [k, p] : pending_) {
    if (key.empty() || k == key || (key.size() <= p.fingerprint.size() && p.fingerprint.compare(0, key.size(), key) == 0))
      matches.push_back(&p);
  }

  const std::filesystem::path workers_dir = dir_ / "workers";
  std::error_code ec;
  std::filesystem::create_directories(workers_dir, ec);
  if (ec) return make_error(workers_dir.string() + ": " + ec.message());
  const std::filesystem::path target = workers_dir / (std::string(name) + ".pub");

  if (matches.empty()) {
    // Re-admitting a removed worker: `approve NAME` with its revoked key.
    if (key.empty()) {
      for (auto it = revoked_by_key_.begin(); it != revoked_by_key_.end(); ++it) {
        if (it->second != name) continue;
        const std::filesystem::path from = dir_ / "revoked" / (std::string(name) + ".pub");
        std::filesystem::rename(from, target, ec);
        if (ec) return make_error("cannot move " + from.string() + " to " + target.string() + ": " + ec.message());
        NamedKey nk{std::string(name), it->first, fingerprint(it->first), target};
        worker_by_key_[it->first] = nk.name;
        key_by_worker_[nk.name] = it->first;
        revoked_by_key_.erase(it);
        return nk;
      }
    }
    if (pending_.empty()) return make_error("no worker key is pending approval");
    return make_error("no pending worker key matches '" + printable(key) + "'");
  }
  if (matches.size() > 1) {
    std::string list;
    for (const auto* p : matches) {
      if (!list.empty()) list += ", ";
      list += p->fingerprint + (p->address.empty() ? "" : " from " + p->address);
    }
    return make_error(std::to_string(matches.size()) + " worker keys are pending (" + list +
                      "); say which: zforce worker approve " + std::string(name) + " --key FINGERPRINT");
  }

  const PendingWorker chosen = *matches.front();
  if (auto st = write_public_key(target, chosen.public_key,
                                 "zforce worker " + std::string(name) + " (fingerprint " + chosen.fingerprint +
                                     "), approved at " + utc_text(clock_()));
      !st)
    return st.error();
  std::filesystem::remove(dir_ / "pending" / (chosen.fingerprint + ".pub"), ec);  // best effort
  worker_by_key_[chosen.public_key] = std::string(name);
  key_by_worker_[std::string(name)] = chosen.public_key;
  pending_.erase(chosen.public_key);
  return NamedKey{std::string(name), chosen.public_key, chosen.fingerprint, target};
}

Result<NamedKey> ZapHandler::remove(std::string_view name) {
  if (!keyed_) return make_error("the master runs without keys; there is nothing to revoke");
  auto it = key_by_worker_.find(name);
  if (it == key_by_worker_.end()) return make_error("no admitted worker named '" + printable(name, 64) + "'");
  const std::string key = it->second;
  const std::filesystem::path from = dir_ / "workers" / (std::string(name) + ".pub");
  const std::filesystem::path revoked_dir = dir_ / "revoked";
  const std::filesystem::path to = revoked_dir / (std::string(name) + ".pub");
  std::error_code ec;
  std::filesystem::create_directories(revoked_dir, ec);
  if (ec) return make_error(revoked_dir.string() + ": " + ec.message());
  if (std::filesystem::exists(from, ec)) {
    std::filesystem::rename(from, to, ec);
    if (ec) return make_error("cannot move " + from.string() + " to " + to.string() + ": " + ec.message());
  } else {
    std::filesystem::remove(to, ec);
    if (auto st = write_public_key(to, key, "zforce worker " + std::string(name) + ", revoked"); !st) return st.error();
  }
  worker_by_key_.erase(key);
  key_by_worker_.erase(it);
  revoked_by_key_[key] = std::string(name);
  return NamedKey{std::string(name), key, fingerprint(key), to};
}

std::vector<PendingWorker> ZapHandler::pending() const {
  std::vector<PendingWorker> out;
  for (const auto& [k, p] : pending_) out.push_back(p);
  std::sort(out.begin(), out.end(), [](const PendingWorker& a, const PendingWorker& b) {
    return a.first_seen != b.first_seen ? a.first_seen < b.first_seen : a.fingerprint < b.fingerprint;
  });
  return out;
}

std::vector<NamedKey> ZapHandler::workers() const {
  std::vector<NamedKey> out;
  for (const auto& [name, key] : key_by_worker_)
    out.push_back(NamedKey{name, key, fingerprint(key), dir_ / "workers" / (name + ".pub")});
  return out;
}

std::vector<Refusal> ZapHandler::take_refusals() {
  std::vector<Refusal> out(std::make_move_iterator(refusals_.begin()), std::make_move_iterator(refusals_.end()));
  refusals_.clear();
  return out;
}

bool ZapHandler::worker_admitted(std::string_view user_id) const {
  if (!keyed_) return true;
  return key_by_worker_.count(user_id) > 0;
}

ApiRole ZapHandler::api_role(std::string_view user_id) const {
  if (!keyed_) return ApiRole::Admin;
  auto colon = user_id.find(':');
  if (colon == std::string_view::npos) return ApiRole::None;
  std::string_view kind = user_id.substr(0, colon);
  std::string_view name = user_id.substr(colon + 1);
  if (kind == "admin" && admin_names_.count(name)) return ApiRole::Admin;
  if (kind == "readonly" && readonly_names_.count(name)) return ApiRole::ReadOnly;
  return ApiRole::None;
}

std::string printable(std::string_view s, size_t max) {
  std::string out;
  for (size_t i = 0; i < s.size() && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    out.push_back(c >= 0x20 && c < 0x7f ? static_cast<char>(c) : '?');
  }
  if (s.size() > max) out += "...";
  return out;
}

}  // namespace zf
