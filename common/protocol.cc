#include "common/protocol.h"

#include <msgpack.hpp>

#include <algorithm>
#include <cstring>
#include <type_traits>

namespace zf::proto {

namespace {

// msgpack writes straight into the std::string that encode() returns: no
// intermediate buffer, no copy.
// msgpack writes a few bytes at a time; plain memcpy into spare capacity is
// several times cheaper than std::string::append per write.
struct StringBuffer {
  std::string out;
  size_t used = 0;
  void write(const char* data, size_t size) {
    if (used + size > out.size()) out.resize(std::max(out.size() * 2, used + size));
    std::memcpy(out.data() + used, data, size);
    used += size;
  }
  std::string take() {
    out.resize(used);
    return std::move(out);
  }
};
using Packer = msgpack::packer<StringBuffer>;

// Limits on what the decoder will build from untrusted bytes, far above any
// legitimate message but small enough that a hostile frame cannot blow memory.
// msgpack allocates an array's or map's elements when it reads the count, so
// a count is also capped by the frame: each element takes at least a byte.
// Without that, 31 nested "map of 100000" headers (162 bytes) made msgpack
// allocate ~150 MB and cost ~18 ms to refuse (found by tests/fuzz).
msgpack::unpack_limit limits_for(size_t frame_bytes) {
  return msgpack::unpack_limit(/*array=*/std::min<size_t>(100000, frame_bytes),
                               /*map=*/std::min<size_t>(100000, frame_bytes / 2), /*str=*/kMaxMessageBytes,
                               /*bin=*/kMaxMessageBytes, /*ext=*/0, /*depth=*/32);
}

void pack_str(Packer& p, std::string_view s) {
  p.pack_str(static_cast<uint32_t>(s.size()));
  p.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

void pack_json(Packer& p, const nlohmann::json& j) {
  switch (j.type()) {
    case nlohmann::json::value_t::null:
    case nlohmann::json::value_t::discarded: p.pack_nil(); break;
    case nlohmann::json::value_t::boolean: p.pack(j.get<bool>()); break;
    case nlohmann::json::value_t::number_integer: p.pack(j.get<int64_t>()); break;
    case nlohmann::json::value_t::number_unsigned: p.pack(j.get<uint64_t>()); break;
    case nlohmann::json::value_t::number_float: p.pack(j.get<double>()); break;
    case nlohmann::json::value_t::string: pack_str(p, j.get_ref<const std::string&>()); break;
    case nlohmann::json::value_t::binary: {
      const auto& b = j.get_binary();
      p.pack_bin(static_cast<uint32_t>(b.size()));
      p.pack_bin_body(reinterpret_cast<const char*>(b.data()), static_cast<uint32_t>(b.size()));
      break;
    }
    case nlohmann::json::value_t::array:
      p.pack_array(static_cast<uint32_t>(j.size()));
      for (const auto& e : j) pack_json(p, e);
      break;
    case nlohmann::json::value_t::object:
      p.pack_map(static_cast<uint32_t>(j.size()));
      for (const auto& [k, v] : j.items()) {
        pack_str(p, k);
        pack_json(p, v);
      }
      break;
  }
}

// Converts a decoded msgpack value to JSON; map keys must be strings.
bool to_json(const msgpack::object& o, nlohmann::json& out) {
  switch (o.type) {
    case msgpack::type::NIL: out = nullptr; return true;
    case msgpack::type::BOOLEAN: out = o.via.boolean; return true;
    case msgpack::type::POSITIVE_INTEGER: out = o.via.u64; return true;
    case msgpack::type::NEGATIVE_INTEGER: out = o.via.i64; return true;
    case msgpack::type::FLOAT32:
    case msgpack::type::FLOAT64: out = o.via.f64; return true;
    case msgpack::type::STR: out = std::string(o.via.str.ptr, o.via.str.size); return true;
    case msgpack::type::BIN:
      out = nlohmann::json::binary(std::vector<uint8_t>(
          reinterpret_cast<const uint8_t*>(o.via.bin.ptr),
          reinterpret_cast<const uint8_t*>(o.via.bin.ptr) + o.via.bin.size));
      return true;
    case msgpack::type::ARRAY:
      out = nlohmann::json::array();
      for (uint32_t i = 0; i < o.via.array.size; ++i) {
        nlohmann::json e;
        if (!to_json(o.via.array.ptr[i], e)) return false;
        out.push_back(std::move(e));
      }
      return true;
    case msgpack::type::MAP:
      out = nlohmann::json::object();
      for (uint32_t i = 0; i < o.via.map.size; ++i) {
        const auto& kv = o.via.map.ptr[i];
        if (kv.key.type != msgpack::type::STR) return false;
        nlohmann::json v;
        if (!to_json(kv.val, v)) return false;
        out[std::string(kv.key.via.str.ptr, kv.key.via.str.size)] = std::move(v);
      }
      return true;
    default: return false;
  }
}

// Writes one message body as a msgpack map of named fields.
class BodyWriter {
 public:
  explicit BodyWriter(Packer& p) : p_(p) {}
  void begin(uint32_t fields) { p_.pack_map(fields); }
  void field(std::string_view k, std::string_view v) { pack_str(p_, k); pack_str(p_, v); }
  void field(std::string_view k, const std::string& v) { field(k, std::string_view(v)); }
  void field(std::string_view k, const char* v) { field(k, std::string_view(v)); }
  template <class N>
    requires std::is_arithmetic_v<N>
  void field(std::string_view k, N v) {
    pack_str(p_, k);
    p_.pack(v);
  }
  void field(std::string_view k, const std::vector<std::string>& v) {
    pack_str(p_, k);
    p_.pack_array(static_cast<uint32_t>(v.size()));
    for (const auto& s : v) pack_str(p_, s);
  }
  void field(std::string_view k, const std::map<std::string, std::string>& m) {
    pack_str(p_, k);
    p_.pack_map(static_cast<uint32_t>(m.size()));
    for (const auto& [a, b] : m) { pack_str(p_, a); pack_str(p_, b); }
  }
  void field(std::string_view k, const nlohmann::json& j) { pack_str(p_, k); pack_json(p_, j); }
  Packer& packer(std::string_view k) { pack_str(p_, k); return p_; }

 private:
  Packer& p_;
};

// Reads named fields of one message body; the first problem is kept as the
// reason and every later read fails, so decoders read straight through.
class BodyReader {
 public:
  explicit BodyReader(const msgpack::object& body) : body_(body) {
    if (body.type != msgpack::type::MAP) fail("body is not a map");
  }
  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

  const msgpack::object* find(std::string_view key) {
    if (!ok()) return nullptr;
    for (uint32_t i = 0; i < body_.via.map.size; ++i) {
      const auto& kv = body_.via.map.ptr[i];
      if (kv.key.type == msgpack::type::STR &&
          std::string_view(kv.key.via.str.ptr, kv.key.via.str.size) == key)
        return &kv.val;
    }
    return nullptr;
  }
  const msgpack::object* need(std::string_view key) {
    const auto* o = find(key);
    if (!o && ok()) fail("missing field '" + std::string(key) + "'");
    return o;
  }

  void str(std::string_view key, std::string& out, bool required = true) {
    const auto* o = required ? need(key) : find(key);
    if (o) read_str(*o, key, out);
  }
  template <class N>
  void num(std::string_view key, N& out, bool required = true) {
    const auto* o = required ? need(key) : find(key);
    if (o) read_num(*o, key, out);
  }
  template <class N>
  void opt_num(std::string_view key, std::optional<N>& out) {
    if (const auto* o = find(key)) {
      N v{};
      if (read_num(*o, key, v)) out = v;
    }
  }
  void opt_str(std::string_view key, std::optional<std::string>& out) {
    if (const auto* o = find(key)) {
      std::string v;
      if (read_str(*o, key, v)) out = std::move(v);
    }
  }
  void boolean(std::string_view key, bool& out) {
    if (const auto* o = need(key)) {
      if (o->type != msgpack::type::BOOLEAN) return wrong(key, "a boolean");
      out = o->via.boolean;
    }
  }
  void str_list(std::string_view key, std::vector<std::string>& out, bool required = true) {
    const auto* o = required ? need(key) : find(key);
    if (!o) return;
    if (o->type != msgpack::type::ARRAY) return wrong(key, "an array of strings");
    out.clear();
    for (uint32_t i = 0; i < o->via.array.size; ++i) {
      std::string s;
      if (!read_str(o->via.array.ptr[i], key, s)) return;
      out.push_back(std::move(s));
    }
  }
  void str_map(std::string_view key, std::map<std::string, std::string>& out, bool required = true) {
    const auto* o = required ? need(key) : find(key);
    if (!o) return;
    if (o->type != msgpack::type::MAP) return wrong(key, "a map of strings");
    out.clear();
    for (uint32_t i = 0; i < o->via.map.size; ++i) {
      std::string k, v;
      if (!read_str(o->via.map.ptr[i].key, key, k) || !read_str(o->via.map.ptr[i].val, key, v)) return;
      out.emplace(std::move(k), std::move(v));
    }
  }
  void any(std::string_view key, nlohmann::json& out, bool required = true) {
    const auto* o = required ? need(key) : find(key);
    if (o && !to_json(*o, out)) fail("field '" + std::string(key) + "' holds a value JSON cannot carry");
  }
  // An array of byte strings (bin or str elements).
  void bins(std::string_view key, std::vector<std::string>& out) {
    const auto* o = need(key);
    if (!o) return;
    if (o->type != msgpack::type::ARRAY) return wrong(key, "an array");
    out.reserve(o->via.array.size);
    for (uint32_t i = 0; i < o->via.array.size; ++i) {
      const msgpack::object& e = o->via.array.ptr[i];
      if (e.type == msgpack::type::BIN) out.emplace_back(e.via.bin.ptr, e.via.bin.size);
      else if (e.type == msgpack::type::STR) out.emplace_back(e.via.str.ptr, e.via.str.size);
      else return fail("field '" + std::string(key) + "[" + std::to_string(i) + "]' is not bytes");
    }
  }
  // Each element of an array field, as its own body.
  template <class F>
  void each(std::string_view key, F&& f, bool required = true) {
    const auto* o = required ? need(key) : find(key);
    if (!o) return;
    if (o->type != msgpack::type::ARRAY) return wrong(key, "an array");
    for (uint32_t i = 0; i < o->via.array.size && ok(); ++i) {
      BodyReader sub(o->via.array.ptr[i]);
      f(sub);
      if (!sub.ok()) fail("in '" + std::string(key) + "[" + std::to_string(i) + "]': " + sub.error());
    }
  }
  void fail(std::string why) {
    if (error_.empty()) error_ = std::move(why);
  }

 private:
  void wrong(std::string_view key, std::string_view expected) {
    fail("field '" + std::string(key) + "' is not " + std::string(expected));
  }
  bool read_str(const msgpack::object& o, std::string_view key, std::string& out) {
    if (o.type != msgpack::type::STR) { wrong(key, "a string"); return false; }
    out.assign(o.via.str.ptr, o.via.str.size);
    return true;
  }
  template <class N>
  bool read_num(const msgpack::object& o, std::string_view key, N& out) {
    if (o.type == msgpack::type::POSITIVE_INTEGER) {
      if (o.via.u64 > static_cast<uint64_t>(std::numeric_limits<N>::max())) {
        wrong(key, "in range");
        return false;
      }
      out = static_cast<N>(o.via.u64);
      return true;
    }
    if (o.type == msgpack::type::NEGATIVE_INTEGER && std::is_signed_v<N>) {
      if (o.via.i64 < static_cast<int64_t>(std::numeric_limits<N>::min())) {
        wrong(key, "in range");
        return false;
      }
      out = static_cast<N>(o.via.i64);
      return true;
    }
    wrong(key, std::is_signed_v<N> ? "an integer" : "a non-negative integer");
    return false;
  }

  const msgpack::object& body_;
  std::string error_;
};

// ---- per-message encoders and decoders, side by side -------------------------

// An array of {instance, attempt} (READY's running, FINISHED_ACK's more).
void put_attempts(BodyWriter& w, std::string_view key, const std::vector<RunningInstance>& list) {
  auto& p = w.packer(key);
  p.pack_array(static_cast<uint32_t>(list.size()));
  for (const auto& a : list) {
    BodyWriter aw(p);
    aw.begin(2);
    aw.field("instance", a.instance);
    aw.field("attempt", a.attempt);
  }
}
void get_attempts(BodyReader& r, std::string_view key, std::vector<RunningInstance>& out, bool required) {
  r.each(
      key,
      [&](BodyReader& e) {
        RunningInstance a;
        e.num("instance", a.instance);
        e.num("attempt", a.attempt);
        out.push_back(a);
      },
      required);
}

void put(BodyWriter& w, const Ready& m) {
  w.begin(5);
  w.field("name", m.name);
  w.field("slots", m.slots);
  w.field("tags", m.tags);
  w.field("version", m.version);
  put_attempts(w, "running", m.running);
}
void get(BodyReader& r, Ready& m) {
  r.str("name", m.name);
  r.num("slots", m.slots);
  r.str_list("tags", m.tags);
  r.str("version", m.version);
  get_attempts(r, "running", m.running, /*required=*/true);
}

void put(BodyWriter& w, const Welcome& m) {
  w.begin(2);
  w.field("heartbeat_ms", m.heartbeat_ms);
  w.field("liveness", m.liveness);
}
void get(BodyReader& r, Welcome& m) {
  r.num("heartbeat_ms", m.heartbeat_ms);
  r.num("liveness", m.liveness);
}

void put(BodyWriter& w, const Heartbeat&) { w.begin(0); }
void get(BodyReader&, Heartbeat&) {}

void put_step(BodyWriter& w, const StepSpec& s) {
  w.begin(8);
  w.field("name", s.name);
  w.field("kind", s.kind);
  w.field("argv", s.argv);
  w.field("builtin", s.builtin);
  w.field("args", s.args);
  w.field("env", s.env);
  w.field("cwd", s.cwd);
  w.field("timeout_ms", s.timeout_ms);
}
void get_step(BodyReader& r, StepSpec& s) {
  r.str("name", s.name);
  r.str("kind", s.kind);
  r.str_list("argv", s.argv);
  r.str("builtin", s.builtin);
  r.str_map("args", s.args);
  r.str_map("env", s.env);
  r.str("cwd", s.cwd);
  r.num("timeout_ms", s.timeout_ms);
  if (r.ok() && s.kind != "run" && s.kind != "builtin") r.fail("field 'kind' is not run or builtin");
}

void put(BodyWriter& w, const AssignView& m) {
  w.begin(6);
  w.field("instance", m.instance);
  w.field("attempt", m.attempt);
  w.field("job", m.job);
  w.field("params", m.params);
  auto& p = w.packer("steps");
  p.pack_array(static_cast<uint32_t>(m.steps.size()));
  for (const auto& s : m.steps) {
    BodyWriter sw(p);
    put_step(sw, s);
  }
  w.field("timeout_ms", m.timeout_ms);
}
void put(BodyWriter& w, const Assign& m) { put(w, AssignView{m.instance, m.attempt, m.job, m.params, m.steps, m.timeout_ms}); }
void get(BodyReader& r, Assign& m) {
  r.num("instance", m.instance);
  r.num("attempt", m.attempt);
  r.str("job", m.job);
  r.str_map("params", m.params);
  r.each("steps", [&](BodyReader& e) {
    StepSpec s;
    get_step(e, s);
    m.steps.push_back(std::move(s));
  });
  r.num("timeout_ms", m.timeout_ms);
}

void put(BodyWriter& w, const Started& m) {
  w.begin(2);
  w.field("instance", m.instance);
  w.field("attempt", m.attempt);
}
void get(BodyReader& r, Started& m) {
  r.num("instance", m.instance);
  r.num("attempt", m.attempt);
}

void put(BodyWriter& w, const Finished& m) {
  w.begin(8);
  w.field("instance", m.instance);
  w.field("attempt", m.attempt);
  w.field("status", m.status);
  w.field("exit_code", m.exit_code);
  w.field("duration_ms", m.duration_ms);
  w.field("failed_step", m.failed_step);
  w.field("error", m.error);
  w.field("output", m.output);
}
void get(BodyReader& r, Finished& m) {
  r.num("instance", m.instance);
  r.num("attempt", m.attempt);
  r.str("status", m.status);
  r.num("exit_code", m.exit_code);
  r.num("duration_ms", m.duration_ms);
  r.num("failed_step", m.failed_step);
  r.str("error", m.error);
  r.str("output", m.output);
  if (r.ok() && m.status != "succeeded" && m.status != "failed" && m.status != "timed_out" &&
      m.status != "cancelled")
    r.fail("field 'status' has unknown value '" + m.status + "'");
}

void put(BodyWriter& w, const FinishedAck& m) {
  w.begin(m.more.empty() ? 2 : 3);
  w.field("instance", m.instance);
  w.field("attempt", m.attempt);
  if (!m.more.empty()) put_attempts(w, "more", m.more);  // absent: the one-result form, as before
}
void get(BodyReader& r, FinishedAck& m) {
  r.num("instance", m.instance);
  r.num("attempt", m.attempt);
  get_attempts(r, "more", m.more, /*required=*/false);
}

void put_batch(BodyWriter& w, std::span<const std::string> encoded) {
  w.begin(1);
  auto& p = w.packer("messages");
  p.pack_array(static_cast<uint32_t>(encoded.size()));
  for (const auto& e : encoded) {
    p.pack_bin(static_cast<uint32_t>(e.size()));
    p.pack_bin_body(e.data(), static_cast<uint32_t>(e.size()));
  }
}
void put(BodyWriter& w, const Batch& m) { put_batch(w, m.messages); }
void get(BodyReader& r, Batch& m) {
  r.bins("messages", m.messages);
  if (r.ok() && m.messages.empty()) r.fail("field 'messages' is empty");
}

void put(BodyWriter& w, const Cancel& m) {
  w.begin(2);
  w.field("instance", m.instance);
  w.field("attempt", m.attempt);
}
void get(BodyReader& r, Cancel& m) {
  r.num("instance", m.instance);
  r.num("attempt", m.attempt);
}

void put(BodyWriter& w, const Disconnect& m) {
  w.begin(1);
  w.field("reason", m.reason);
}
void get(BodyReader& r, Disconnect& m) { r.str("reason", m.reason); }

void put(BodyWriter& w, const Drain& m) {
  w.begin(1);
  w.field("reason", m.reason);
}
void get(BodyReader& r, Drain& m) { r.str("reason", m.reason); }

void put(BodyWriter& w, const Refused& m) {
  w.begin(1);
  w.field("reason", m.reason);
}
void get(BodyReader& r, Refused& m) { r.str("reason", m.reason); }

void put(BodyWriter& w, const ApiRequest& m) {
  w.begin(3);
  w.field("req", m.req);
  w.field("op", m.op);
  w.field("args", m.args);
}
void get(BodyReader& r, ApiRequest& m) {
  r.num("req", m.req);
  r.str("op", m.op);
  r.any("args", m.args);
  if (r.ok() && !m.args.is_object()) r.fail("field 'args' is not a map");
}

void put(BodyWriter& w, const ApiReply& m) {
  w.begin(4);
  w.field("req", m.req);
  w.field("ok", m.ok);
  w.field("error", m.error);
  w.field("result", m.result);
}
void get(BodyReader& r, ApiReply& m) {
  r.num("req", m.req);
  r.boolean("ok", m.ok);
  r.str("error", m.error);
  r.any("result", m.result);
}

void put(BodyWriter& w, const Event& m) {
  uint32_t n = 3 + !!m.instance + !!m.job + !!m.queue + !!m.member + !!m.attempt + !!m.exit_code +
               !!m.slot + !!m.trigger + !!m.detail;
  w.begin(n);
  w.field("seq", m.seq);
  w.field("ts_us", m.ts_us);
  w.field("type", m.type);
  if (m.instance) w.field("instance", *m.instance);
  if (m.job) w.field("job", *m.job);
  if (m.queue) w.field("queue", *m.queue);
  if (m.member) w.field("member", *m.member);
  if (m.attempt) w.field("attempt", *m.attempt);
  if (m.exit_code) w.field("exit_code", *m.exit_code);
  if (m.slot) w.field("slot", *m.slot);
  if (m.trigger) w.field("trigger", *m.trigger);
  if (m.detail) w.field("detail", *m.detail);
}
void get(BodyReader& r, Event& m) {
  r.num("seq", m.seq);
  r.num("ts_us", m.ts_us);
  r.str("type", m.type);
  r.opt_num("instance", m.instance);
  r.opt_str("job", m.job);
  r.opt_str("queue", m.queue);
  r.opt_str("member", m.member);
  r.opt_num("attempt", m.attempt);
  r.opt_num("exit_code", m.exit_code);
  r.opt_num("slot", m.slot);
  r.opt_num("trigger", m.trigger);
  r.opt_str("detail", m.detail);
}

template <class T>
Decoded decode_body(const msgpack::object& body) {
  BodyReader r(body);
  T m{};
  get(r, m);
  if (!r.ok()) return DecodeError{DecodeFailure::Malformed, r.error()};
  return Message{std::move(m)};
}

}  // namespace

std::string_view msg_type_name(MsgType t) {
  switch (t) {
    case MsgType::Ready: return "READY";
    case MsgType::Welcome: return "WELCOME";
    case MsgType::Heartbeat: return "HEARTBEAT";
    case MsgType::Assign: return "ASSIGN";
    case MsgType::Started: return "STARTED";
    case MsgType::Finished: return "FINISHED";
    case MsgType::FinishedAck: return "FINISHED_ACK";
    case MsgType::Drain: return "DRAIN";
    case MsgType::Batch: return "BATCH";
    case MsgType::Cancel: return "CANCEL";
    case MsgType::Disconnect: return "DISCONNECT";
    case MsgType::Refused: return "REFUSED";
    case MsgType::ApiRequest: return "API_REQUEST";
    case MsgType::ApiReply: return "API_REPLY";
    case MsgType::Event: return "EVENT";
  }
  return "UNKNOWN";
}

template <class T>
constexpr MsgType type_for() {
  if constexpr (std::is_same_v<T, Ready>) return MsgType::Ready;
  else if constexpr (std::is_same_v<T, Welcome>) return MsgType::Welcome;
  else if constexpr (std::is_same_v<T, Heartbeat>) return MsgType::Heartbeat;
  else if constexpr (std::is_same_v<T, Assign> || std::is_same_v<T, AssignView>) return MsgType::Assign;
  else if constexpr (std::is_same_v<T, Started>) return MsgType::Started;
  else if constexpr (std::is_same_v<T, Finished>) return MsgType::Finished;
  else if constexpr (std::is_same_v<T, FinishedAck>) return MsgType::FinishedAck;
  else if constexpr (std::is_same_v<T, Cancel>) return MsgType::Cancel;
  else if constexpr (std::is_same_v<T, Disconnect>) return MsgType::Disconnect;
  else if constexpr (std::is_same_v<T, Refused>) return MsgType::Refused;
  else if constexpr (std::is_same_v<T, ApiRequest>) return MsgType::ApiRequest;
  else if constexpr (std::is_same_v<T, ApiReply>) return MsgType::ApiReply;
  else if constexpr (std::is_same_v<T, Drain>) return MsgType::Drain;
  else if constexpr (std::is_same_v<T, Batch>) return MsgType::Batch;
  else {
    static_assert(std::is_same_v<T, Event>, "every Message alternative has a type");
    return MsgType::Event;
  }
}

MsgType type_of(const Message& m) {
  return std::visit([](const auto& v) { return type_for<std::decay_t<decltype(v)>>(); }, m);
}

namespace {

// The envelope of a message of type `type`, then the body that put_body writes.
template <class PutBody>
std::string encode_envelope(MsgType type, size_t reserve, PutBody&& put_body) {
  StringBuffer buf;
  buf.out.resize(reserve);
  Packer p(buf);
  p.pack_array(5);
  pack_str(p, kSignature);
  p.pack(kMajor);
  p.pack(kMinor);
  p.pack(static_cast<uint32_t>(type));
  BodyWriter w(p);
  put_body(w);
  return buf.take();
}

// Bytes to reserve for a message of type T: enough for the usual one, so the
// buffer is allocated once. An instance event takes 99–129 bytes (more with
// long job or member names): with 64 each one was allocated two or three
// times, four events per instance.
template <class T>
constexpr size_t kReserve = 64;
template <>
constexpr size_t kReserve<Event> = 192;

template <class T>
std::string encode_body(const T& m, size_t reserve = kReserve<T>) {
  return encode_envelope(type_for<T>(), reserve, [&](BodyWriter& w) { put(w, m); });
}

}  // namespace

template <class T>
std::string encode(const T& m) {
  return encode_body(m);
}
template std::string encode(const Ready&);
template std::string encode(const Welcome&);
template std::string encode(const Heartbeat&);
template std::string encode(const Assign&);
template std::string encode(const Started&);
template std::string encode(const Finished&);
template std::string encode(const FinishedAck&);
template std::string encode(const Cancel&);
template std::string encode(const Disconnect&);
template std::string encode(const Refused&);
template std::string encode(const ApiRequest&);
template std::string encode(const ApiReply&);
template std::string encode(const Event&);
template std::string encode(const Drain&);
template std::string encode(const Batch&);

std::string encode_batch(std::span<const std::string> encoded) {
  size_t bytes = 32;
  for (const auto& e : encoded) bytes += e.size() + 5;
  return encode_envelope(MsgType::Batch, bytes, [&](BodyWriter& w) { put_batch(w, encoded); });
}

std::string encode_assign(const AssignView& a) { return encode_body(a, 256); }

std::string encode(const Message& m) {
  return std::visit([](const auto& v) { return encode_body(v); }, m);
}

Decoded decode(const void* data, size_t size, uint32_t* minor_out) {
  msgpack::object_handle oh;
  try {
    size_t offset = 0;
    oh = msgpack::unpack(static_cast<const char*>(data), size, offset, nullptr, nullptr, limits_for(size));
    if (offset != size) return DecodeError{DecodeFailure::Malformed, "trailing bytes after message"};
  } catch (const std::exception& e) {
    return DecodeError{DecodeFailure::Malformed, std::string("not msgpack: ") + e.what()};
  }
  const msgpack::object& o = oh.get();
  if (o.type != msgpack::type::ARRAY || o.via.array.size < 3)
    return DecodeError{DecodeFailure::Malformed, "not a zforce message (expected an array)"};
  const msgpack::object* a = o.via.array.ptr;
  if (a[0].type != msgpack::type::STR ||
      std::string_view(a[0].via.str.ptr, a[0].via.str.size) != kSignature)
    return DecodeError{DecodeFailure::Malformed, "bad signature"};
  if (a[1].type != msgpack::type::POSITIVE_INTEGER || a[2].type != msgpack::type::POSITIVE_INTEGER ||
      a[1].via.u64 > UINT32_MAX || a[2].via.u64 > UINT32_MAX)
    return DecodeError{DecodeFailure::Malformed, "bad version"};
  auto major = static_cast<uint32_t>(a[1].via.u64);
  auto minor = static_cast<uint32_t>(a[2].via.u64);
  if (major != kMajor) {
    return DecodeError{DecodeFailure::VersionMismatch,
                       "protocol version " + std::to_string(major) + "." + std::to_string(minor) +
                           " is not supported (this side speaks " + std::to_string(kMajor) + "." +
                           std::to_string(kMinor) + ")",
                       major, minor};
  }
  if (o.via.array.size != 5) return DecodeError{DecodeFailure::Malformed, "expected 5 elements"};
  if (minor_out) *minor_out = minor;
  if (a[3].type != msgpack::type::POSITIVE_INTEGER)
    return DecodeError{DecodeFailure::Malformed, "bad message type"};
  const msgpack::object& body = a[4];
  switch (a[3].via.u64) {
    case static_cast<uint32_t>(MsgType::Ready): return decode_body<Ready>(body);
    case static_cast<uint32_t>(MsgType::Welcome): return decode_body<Welcome>(body);
    case static_cast<uint32_t>(MsgType::Heartbeat): return decode_body<Heartbeat>(body);
    case static_cast<uint32_t>(MsgType::Assign): return decode_body<Assign>(body);
    case static_cast<uint32_t>(MsgType::Started): return decode_body<Started>(body);
    case static_cast<uint32_t>(MsgType::Finished): return decode_body<Finished>(body);
    case static_cast<uint32_t>(MsgType::FinishedAck): return decode_body<FinishedAck>(body);
    case static_cast<uint32_t>(MsgType::Cancel): return decode_body<Cancel>(body);
    case static_cast<uint32_t>(MsgType::Disconnect): return decode_body<Disconnect>(body);
    case static_cast<uint32_t>(MsgType::Refused): return decode_body<Refused>(body);
    case static_cast<uint32_t>(MsgType::Drain): return decode_body<Drain>(body);
    case static_cast<uint32_t>(MsgType::Batch): return decode_body<Batch>(body);
    case static_cast<uint32_t>(MsgType::ApiRequest): return decode_body<ApiRequest>(body);
    case static_cast<uint32_t>(MsgType::ApiReply): return decode_body<ApiReply>(body);
    case static_cast<uint32_t>(MsgType::Event): return decode_body<Event>(body);
    default:
      return DecodeError{DecodeFailure::Malformed, "unknown message type " + std::to_string(a[3].via.u64)};
  }
}

nlohmann::json event_to_json(const Event& e) {
  nlohmann::json j;
  j["seq"] = e.seq;
  j["ts"] = static_cast<double>(e.ts_us) / 1e6;
  j["type"] = e.type;
  if (e.instance) j["instance"] = *e.instance;
  if (e.job) j["job"] = *e.job;
  if (e.queue) j["queue"] = *e.queue;
  if (e.member) j["member"] = *e.member;
  if (e.attempt) j["attempt"] = *e.attempt;
  if (e.exit_code) j["exit_code"] = *e.exit_code;
  if (e.slot) j["slot"] = *e.slot;
  if (e.trigger) j["trigger"] = *e.trigger;
  if (e.detail) j["detail"] = *e.detail;
  return j;
}

std::string sanitize_sample(const void* data, size_t size, size_t max_chars) {
  static const char* hex = "0123456789abcdef";
  std::string out;
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < size && out.size() < max_chars; ++i) {
    unsigned char c = p[i];
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      out += static_cast<char>(c);
    } else {
      out += "\\x";
      out += hex[c >> 4];
      out += hex[c & 15];
    }
  }
  if (size > 0 && out.size() >= max_chars) out += "...";
  return out;
}

}  // namespace zf::proto
