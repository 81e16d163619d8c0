// The codec against the spec: every message round-trips, every encoded body
// validates against its schema in schemas/messages/, and bad bytes are a
// "malformed" result, never a crash.
#include <doctest/doctest.h>

#include <fstream>
#include <random>

#include "common/protocol.h"

using namespace zf::proto;
using json = nlohmann::json;

namespace {

json load_schema(const std::string& name) {
  std::ifstream in(std::string(ZF_SCHEMAS_DIR) + "/messages/" + name + ".json");
  REQUIRE_MESSAGE(in.good(), "missing schema " << name);
  return json::parse(in);
}

// A validator for the subset of JSON Schema the message schemas use.
std::string validate(const json& v, const json& s, const std::string& path = "$") {
  if (s.contains("type")) {
    std::string t = s["type"];
    bool ok = (t == "object" && v.is_object()) || (t == "array" && v.is_array()) ||
              (t == "string" && v.is_string()) || (t == "integer" && v.is_number_integer()) ||
              (t == "boolean" && v.is_boolean());
    if (!ok) return path + ": expected " + t + ", got " + v.dump();
  }
  if (s.contains("enum") && std::find(s["enum"].begin(), s["enum"].end(), v) == s["enum"].end())
    return path + ": not in enum";
  if (s.contains("minimum") && v.is_number() && v.get<double>() < s["minimum"].get<double>()) return path + ": below minimum";
  if (s.contains("maximum") && v.is_number() && v.get<double>() > s["maximum"].get<double>()) return path + ": above maximum";
  if (v.is_object()) {
    for (const auto& r : s.value("required", json::array()))
      if (!v.contains(r.get<std::string>())) return path + ": missing required " + r.get<std::string>();
    const json props = s.value("properties", json::object());
    for (const auto& [k, val] : v.items()) {
      if (props.contains(k)) {
        if (auto e = validate(val, props[k], path + "." + k); !e.empty()) return e;
      } else if (s.contains("additionalProperties")) {
        const auto& ap = s["additionalProperties"];
        if (ap.is_boolean() && !ap.get<bool>()) return path + ": unexpected field " + k;
        if (ap.is_object())
          if (auto e = validate(val, ap, path + "." + k); !e.empty()) return e;
      }
    }
  }
  if (v.is_array() && s.contains("items"))
    for (size_t i = 0; i < v.size(); ++i)
      if (auto e = validate(v[i], s["items"], path + "[" + std::to_string(i) + "]"); !e.empty()) return e;
  return "";
}

Message round_trip(const Message& m) {
  std::string bytes = encode(m);
  auto d = decode(bytes);
  REQUIRE_MESSAGE(std::holds_alternative<Message>(d), std::get<DecodeError>(d).reason);
  return std::get<Message>(d);
}

// Checks the envelope and the body of an encoded message against the spec.
void check_against_schema(const Message& m, const std::string& schema_name) {
  json schema = load_schema(schema_name);
  json wire = json::from_msgpack(encode(m));
  REQUIRE(wire.is_array());
  REQUIRE(wire.size() == 5);
  CHECK(wire[0] == "ZF");
  CHECK(wire[1] == kMajor);
  CHECK(wire[2] == kMinor);
  CHECK(wire[3] == schema["x-zforce-type"]);
  CHECK(wire[3] == static_cast<uint32_t>(type_of(m)));
  CHECK_MESSAGE(validate(wire[4], schema) == "", schema_name << ": " << validate(wire[4], schema));
}

Assign sample_assign() {
  Assign a;
  a.instance = 1ULL << 40;
  a.attempt = 2;
  a.job = "nightly";
  a.params = {{"day", "monday"}, {"empty", ""}};
  StepSpec s;
  s.name = "copy";
  s.kind = "run";
  s.argv = {"cp", "a b", "c"};
  s.env = {{"X", "1"}};
  s.cwd = "/tmp";
  s.timeout_ms = 5000;
  StepSpec b;
  b.name = "nap";
  b.kind = "builtin";
  b.builtin = "sleep";
  b.args = {{"duration", "1s"}};
  a.steps = {s, b};
  a.timeout_ms = 60000;
  return a;
}

}  // namespace

TEST_CASE("every message round-trips and matches its schema") {
  Ready r{"w1", 8, {"gpu", "ssd"}, "zforce 0.1.0", {{7, 1}, {1ULL << 50, 3}}};
  auto rr = std::get<Ready>(round_trip(r));
  CHECK(rr.name == "w1");
  CHECK(rr.slots == 8);
  CHECK(rr.tags == std::vector<std::string>{"gpu", "ssd"});
  CHECK(rr.running.size() == 2);
  CHECK(rr.running[1].instance == (1ULL << 50));
  CHECK(rr.running[1].attempt == 3);
  check_against_schema(r, "ready");

  Welcome w{250, 4};
  CHECK(std::get<Welcome>(round_trip(w)).heartbeat_ms == 250);
  check_against_schema(w, "welcome");

  CHECK(std::holds_alternative<Heartbeat>(round_trip(Heartbeat{})));
  check_against_schema(Heartbeat{}, "heartbeat");

  Assign a = sample_assign();
  auto ra = std::get<Assign>(round_trip(a));
  CHECK(ra.instance == a.instance);
  CHECK(ra.params == a.params);
  REQUIRE(ra.steps.size() == 2);
  CHECK(ra.steps[0].argv == a.steps[0].argv);
  CHECK(ra.steps[0].env == a.steps[0].env);
  CHECK(ra.steps[0].timeout_ms == 5000);
  CHECK(ra.steps[1].builtin == "sleep");
  CHECK(ra.steps[1].args.at("duration") == "1s");
  CHECK(ra.timeout_ms == 60000);
  check_against_schema(a, "assign");

  check_against_schema(Started{5, 1}, "started");
  CHECK(std::get<Started>(round_trip(Started{5, 1})).instance == 5);

  Finished f{9, 2, "failed", -9, 1234, 1, "killed", std::string("out\0put", 7)};
  auto rf = std::get<Finished>(round_trip(f));
  CHECK(rf.exit_code == -9);
  CHECK(rf.output == std::string("out\0put", 7));
  CHECK(rf.failed_step == 1);
  check_against_schema(f, "finished");

  check_against_schema(FinishedAck{9, 2, {}}, "finished_ack");
  // Several results acknowledged by one message; the single form has no `more`.
  FinishedAck many{9, 2, {{10, 1}, {11, 3}}};
  check_against_schema(many, "finished_ack");
  auto rm = std::get<FinishedAck>(round_trip(many));
  CHECK(rm.instance == 9);
  REQUIRE(rm.more.size() == 2);
  CHECK(rm.more[1].instance == 11);
  CHECK(rm.more[1].attempt == 3);
  CHECK(encode(FinishedAck{9, 2, {}}).find("more") == std::string::npos);
  check_against_schema(Cancel{9, 2}, "cancel");
  CHECK(std::get<Cancel>(round_trip(Cancel{9, 2})).attempt == 2);
  check_against_schema(Disconnect{"bye"}, "disconnect");
  check_against_schema(Refused{"no"}, "refused");
  check_against_schema(Drain{"stop"}, "drain");
  CHECK(std::get<Drain>(round_trip(Drain{"stop"})).reason == "stop");
  CHECK(std::get<Refused>(round_trip(Refused{"no"})).reason == "no");

  ApiRequest q{42, "run", {{"job", "x"}, {"count", 3}, {"params", {{"a", "b"}}}}};
  auto rq = std::get<ApiRequest>(round_trip(q));
  CHECK(rq.req == 42);
  CHECK(rq.args["count"] == 3);
  CHECK(rq.args["params"]["a"] == "b");
  check_against_schema(q, "api_request");

  ApiReply p{42, true, "", {{"instances", {1, 2, 3}}, {"neg", -5}, {"f", 1.5}, {"n", nullptr}}};
  auto rp = std::get<ApiReply>(round_trip(p));
  CHECK(rp.result["instances"][2] == 3);
  CHECK(rp.result["neg"] == -5);
  CHECK(rp.result["f"] == 1.5);
  check_against_schema(p, "api_reply");

  Event e;
  e.seq = 17;
  e.ts_us = 1764390000000000;
  e.type = "instance.succeeded";
  e.instance = 3;
  e.job = "j";
  e.member = "w1";
  e.exit_code = 0;
  e.trigger = 2;
  auto re = std::get<Event>(round_trip(e));
  CHECK(re.trigger == 2u);
  CHECK(re.seq == 17);
  CHECK(re.instance == 3u);
  CHECK(re.exit_code == 0);
  CHECK_FALSE(re.queue.has_value());
  check_against_schema(e, "event");
  json ej = event_to_json(re);
  CHECK(ej["type"] == "instance.succeeded");
  CHECK(ej.contains("ts"));
}

TEST_CASE("every message type has a schema file and the numbers agree") {
  std::map<std::string, MsgType> files = {
      {"ready", MsgType::Ready},         {"welcome", MsgType::Welcome},   {"heartbeat", MsgType::Heartbeat},
      {"assign", MsgType::Assign},       {"started", MsgType::Started},   {"finished", MsgType::Finished},
      {"finished_ack", MsgType::FinishedAck}, {"cancel", MsgType::Cancel}, {"disconnect", MsgType::Disconnect},
      {"refused", MsgType::Refused},     {"api_request", MsgType::ApiRequest}, {"api_reply", MsgType::ApiReply},
      {"event", MsgType::Event},         {"drain", MsgType::Drain},       {"batch", MsgType::Batch}};
  for (const auto& [name, type] : files) CHECK(load_schema(name)["x-zforce-type"] == static_cast<uint32_t>(type));
}

TEST_CASE("a BATCH carries encoded messages in order; send_batched splits by size and leaves one message alone") {
  std::vector<std::string> parts = {encode(Started{1, 1}), encode(FinishedAck{2, 1, {{3, 1}}}), encode(Heartbeat{})};
  Batch b{parts};
  check_against_schema(b, "batch");
  CHECK(encode_batch(parts) == encode(b));
  uint32_t minor = 99;
  auto d = decode(encode_batch(parts), &minor);
  REQUIRE(std::holds_alternative<Message>(d));
  CHECK(minor == kMinor);
  const auto& back = std::get<Batch>(std::get<Message>(d));
  CHECK(back.messages == parts);
  CHECK(std::get<FinishedAck>(std::get<Message>(decode(back.messages[1]))).more[0].instance == 3);

  // An empty BATCH is malformed.
  CHECK(std::holds_alternative<DecodeError>(decode(encode(Batch{}))));

  std::vector<std::string> frames;
  auto collect = [&](const std::string& f) { frames.push_back(f); };
  send_batched(std::span(parts).first(1), 1 << 20, collect);
  REQUIRE(frames.size() == 1);
  CHECK(frames[0] == parts[0]);  // one message is sent as itself
  frames.clear();
  send_batched(parts, 1 << 20, collect);
  REQUIRE(frames.size() == 1);
  CHECK(frames[0] == encode_batch(parts));
  frames.clear();
  // At most about max_bytes per frame: here two messages fit, then one alone.
  send_batched(parts, parts[0].size() + parts[1].size(), collect);
  REQUIRE(frames.size() == 2);
  CHECK(frames[0] == encode_batch(std::span(parts).first(2)));
  CHECK(frames[1] == parts[2]);
}

TEST_CASE("a peer of another major version is recognised, with a reason") {
  json wire = json::array({"ZF", 2, 0, 1, {{"name", "w"}}});
  auto bytes = json::to_msgpack(wire);
  auto d = decode(bytes.data(), bytes.size());
  REQUIRE(std::holds_alternative<DecodeError>(d));
  const auto& e = std::get<DecodeError>(d);
  CHECK(e.kind == DecodeFailure::VersionMismatch);
  CHECK(e.peer_major == 2);
  CHECK(e.reason.find("protocol version 2.0 is not supported") != std::string::npos);
}

TEST_CASE("malformed frames are rejected with a reason") {
  auto expect_malformed = [](const std::vector<uint8_t>& bytes, const std::string& needle) {
    auto d = decode(bytes.data(), bytes.size());
    REQUIRE(std::holds_alternative<DecodeError>(d));
    CHECK(std::get<DecodeError>(d).kind == DecodeFailure::Malformed);
    CHECK_MESSAGE(std::get<DecodeError>(d).reason.find(needle) != std::string::npos, std::get<DecodeError>(d).reason);
  };
  expect_malformed({}, "not msgpack");
  expect_malformed({0xc1}, "not msgpack");
  expect_malformed(json::to_msgpack(json("hello")), "expected an array");
  expect_malformed(json::to_msgpack(json::array({"XX", 1, 0, 1, json::object()})), "signature");
  expect_malformed(json::to_msgpack(json::array({"ZF", 1, 0, 99, json::object()})), "unknown message type");
  expect_malformed(json::to_msgpack(json::array({"ZF", 1, 0, 1, json::object()})), "missing field 'name'");
  expect_malformed(json::to_msgpack(json::array({"ZF", 1, 0, 1, {{"name", 5}}})), "'name' is not a string");
  expect_malformed(json::to_msgpack(json::array({"ZF", 1, 0, 2, {{"heartbeat_ms", -1}, {"liveness", 3}}})),
                   "heartbeat_ms");
  expect_malformed(json::to_msgpack(json::array({"ZF", 1, 0, 2, {{"heartbeat_ms", 1ULL << 40}, {"liveness", 3}}})),
                   "in range");
  expect_malformed(json::to_msgpack(json::array({"ZF", 1, 0, 3, "body"})), "not a map");
  json fin = {{"instance", 1}, {"attempt", 1}, {"status", "exploded"}, {"exit_code", 0}, {"duration_ms", 0},
              {"failed_step", -1}, {"error", ""}, {"output", ""}};
  expect_malformed(json::to_msgpack(json::array({"ZF", 1, 0, 6, fin})), "unknown value");
  auto good = encode(Heartbeat{});
  std::vector<uint8_t> trailing(good.begin(), good.end());
  trailing.push_back(0);
  expect_malformed(trailing, "trailing");
  // Deeply nested input stops at the depth limit instead of recursing away.
  std::vector<uint8_t> deep(100000, 0x91);
  deep.push_back(0xc0);
  expect_malformed(deep, "not msgpack");
}

TEST_CASE("random and truncated bytes never crash the decoder") {
  std::mt19937 rng(12345);
  std::string valid = encode(sample_assign());
  int decoded = 0;
  for (int i = 0; i < 20000; ++i) {
    std::string b = valid;
    switch (i % 3) {
      case 0: b.resize(rng() % b.size()); break;                      // truncated
      case 1: b[rng() % b.size()] = static_cast<char>(rng()); break;  // one byte flipped
      default: {
        b.resize(rng() % 64);
        for (auto& c : b) c = static_cast<char>(rng());
      }
    }
    auto d = decode(b);
    if (std::holds_alternative<Message>(d)) ++decoded;
  }
  // Some single-byte changes still decode (e.g. inside a string); truncations never do.
  CHECK(decoded < 20000);
}

TEST_CASE("sanitize_sample keeps log lines printable and short") {
  std::string s = sanitize_sample("ab\x01\xff\n", 5);
  CHECK(s == "ab\\x01\\xff\\x0a");
  CHECK(sanitize_sample(std::string(100, 'x').data(), 100, 10).size() <= 14);
}

// Found by tests/fuzz (fuzz_protocol ran at ~300 inputs/s): msgpack allocates
// a map's or array's elements when it reads the count, so 31 nested "map of
// 100000 pairs" headers, 162 bytes, made the decoder allocate ~150 MB and
// spend ~18 ms before it found the frame truncated. Counts are now capped by
// the frame's size (an element takes at least one byte).
TEST_CASE("regression: a frame cannot declare more elements than it has bytes") {
  std::string frame = "\x95\xa2ZF\x01\x00\x0b";
  for (int i = 0; i < 31; ++i) frame += std::string("\xdf\x00\x01\x86\xa0", 5);  // map32, 100000 pairs
  auto d = decode(frame);
  REQUIRE(std::holds_alternative<DecodeError>(d));
  CHECK(std::get<DecodeError>(d).kind == DecodeFailure::Malformed);
  CHECK(std::get<DecodeError>(d).reason == "not msgpack: map size overflow");
  auto a = decode(std::string("\xdd\x00\x01\x86\xa0", 5));  // array32 of 100000, 5 bytes
  REQUIRE(std::holds_alternative<DecodeError>(a));
  CHECK(std::get<DecodeError>(a).reason == "not msgpack: array size overflow");
  // A frame that does hold its elements still decodes: 50000 of them here.
  ApiReply big;
  big.req = 1;
  big.ok = true;
  big.result = json::array();
  for (int i = 0; i < 50000; ++i) big.result.push_back(i % 100);
  auto r = decode(encode(big));
  REQUIRE(std::holds_alternative<Message>(r));
  CHECK(std::get<ApiReply>(std::get<Message>(r)).result.size() == 50000);
}

TEST_CASE("encoding one message type directly, or an ASSIGN from its parts, gives the same bytes as through Message") {
  Assign a = sample_assign();
  std::string via_message = encode(Message{a});
  CHECK(encode(a) == via_message);
  CHECK(encode_assign({a.instance, a.attempt, a.job, a.params, a.steps, a.timeout_ms}) == via_message);
  Event e;
  e.seq = 9;
  e.ts_us = 1234567;
  e.type = "instance.succeeded";
  e.instance = 3;
  e.job = "a-job-name-longer-than-the-small-string-buffer";
  e.member = "w1";
  e.exit_code = 0;
  CHECK(encode(e) == encode(Message{e}));
  // Bigger than the encoder's first buffer: it grows without losing bytes.
  ApiReply big;
  big.req = 1;
  big.ok = true;
  big.result = {{"text", std::string(100000, 'x')}};
  auto rb = std::get<ApiReply>(std::get<Message>(decode(encode(big))));
  CHECK(rb.result["text"].get<std::string>().size() == 100000);
}
