// Writes the binary seed corpora of the fuzz targets: one valid frame per
// message type (protocol, protocol_body), ZAP requests (zap) and key files
// (curve_keys). Not a fuzz target; built with -Dfuzz=true and run by hand
// when a message changes:
//   build-fuzz/tests/fuzz/make_seeds tests/fuzz/corpus
// The text corpora (job files, cron lines, durations and times) are
// written by hand and not touched.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "common/curve_keys.h"
#include "common/protocol.h"
#include "tests/fuzz/protocol_check.h"
#include "tests/fuzz/zap_fixture.h"

namespace {

namespace fs = std::filesystem;
using namespace zf::proto;

fs::path g_root;

void write(const std::string& target, const std::string& name, const std::string& bytes) {
  const fs::path dir = g_root / target;
  fs::create_directories(dir);
  std::ofstream out(dir / name, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  if (!out) {
    std::fprintf(stderr, "make_seeds: cannot write %s\n", (dir / name).c_str());
    std::exit(1);
  }
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(c >= 'A' && c <= 'Z' ? c - 'A' + 'a' : c);
  return out;
}

// The frame for `protocol`, and the type index plus body for `protocol_body`.
void message(const Message& m, const std::string& variant = "") {
  const std::string frame = encode(m);
  const std::string name = lower(msg_type_name(type_of(m))) + variant;
  write("protocol", name + ".bin", frame);
  size_t index = 0;
  while (zf::fuzz::kAllTypes[index] != type_of(m)) ++index;
  // The envelope is 7 bytes for every type (see fuzz_protocol_body.cc).
  write("protocol_body", name + ".bin", std::string(1, static_cast<char>(index)) + frame.substr(7));
}

void protocol_seeds() {
  message(Ready{"w1", 4, {"gpu", "linux"}, "0.1.0", {{17, 1}, {18, 2}}});
  message(Ready{"w2", 1, {}, "0.1.0", {}}, "-empty");
  message(Welcome{1000, 3});
  message(Heartbeat{});
  StepSpec run;
  run.name = "greet";
  run.kind = "run";
  run.argv = {"sh", "-c", "echo hello $1", "sh", "world"};
  run.env = {{"LC_ALL", "C"}};
  run.cwd = "/tmp";
  run.timeout_ms = 10000;
  StepSpec builtin;
  builtin.name = "nap";
  builtin.kind = "builtin";
  builtin.builtin = "sleep";
  builtin.args = {{"duration", "100ms"}};
  message(Assign{42, 1, "hello", {{"who", "world"}}, {run, builtin}, 60000});
  message(Started{42, 1});
  message(Finished{42, 1, "succeeded", 0, 12, -1, "", "hello world\n"});
  message(Finished{43, 2, "failed", 3, 40, 0, "exit code 3", "something went wrong\n"}, "-failed");
  message(Cancel{42, 1});
  message(Disconnect{"drained"});
  message(Refused{"protocol version 2.0 is not supported"});
  message(FinishedAck{42, 1});
  message(Drain{"operator asked"});
  ApiRequest req;
  req.req = 7;
  req.op = "run";
  req.args = {{"job", "hello"}, {"params", {{"who", "fuzz"}}}, {"count", 3}};
  message(req);
  ApiRequest put;
  put.req = 8;
  put.op = "job.put";
  put.args = {{"files", nlohmann::json::array({{{"source", "a.toml"},
                                                {"text", "name = \"a\"\n[[steps]]\nrun = [\"true\"]\n"}}})}};
  message(put, "-job-put");
  ApiReply rep;
  rep.req = 7;
  rep.ok = true;
  rep.result = {{"instances", {1, 2, 3}}, {"ratio", 0.5}, {"none", nullptr}, {"neg", -4}};
  message(rep);
  ApiReply err;
  err.req = 9;
  err.ok = false;
  err.error = "no job named 'x'";
  message(err, "-error");
  Event ev;
  ev.seq = 100;
  ev.ts_us = 1'780'000'000'000'000;
  ev.type = "instance.finished";
  ev.instance = 42;
  ev.job = "hello";
  ev.queue = "default";
  ev.member = "w1";
  ev.attempt = 1;
  ev.exit_code = 0;
  ev.slot = 2;
  ev.trigger = 0;
  ev.detail = "succeeded";
  message(ev);
  message(Event{101, 1'780'000'000'000'001, "member.joined", {}, {}, {}, "w2", {}, {}, {}, {}, {}}, "-member");

  // Frames that must be refused: another major version, an unknown type.
  std::string v2 = encode(Heartbeat{});
  v2[4] = '\x02';
  write("protocol", "version-2.bin", v2);
  std::string unknown = encode(Heartbeat{});
  unknown[6] = '\x63';
  write("protocol", "unknown-type.bin", unknown);
}

void zap_seeds() {
  using zf::fuzz::frames_to_input;
  const std::string addr = "192.0.2.1";
  write("zap", "worker-admitted.bin", frames_to_input({"", "1.0", "1", "workers", addr, "", "CURVE", zf::fuzz::kWorkerKey}));
  write("zap", "worker-revoked.bin", frames_to_input({"", "1.0", "2", "workers", addr, "", "CURVE", zf::fuzz::kRevokedKey}));
  write("zap", "worker-pending.bin", frames_to_input({"", "1.0", "3", "workers", addr, "", "CURVE", zf::fuzz::kUnknownKey}));
  write("zap", "api-admin.bin", frames_to_input({"", "1.0", "4", "api", addr, "", "CURVE", zf::fuzz::kAdminKey}));
  write("zap", "events-readonly.bin", frames_to_input({"", "1.0", "5", "events", addr, "", "CURVE", zf::fuzz::kReadOnlyKey}));
  write("zap", "api-unknown.bin", frames_to_input({"", "1.0", "6", "api", addr, "", "CURVE", zf::fuzz::kUnknownKey}));
  write("zap", "other-domain.bin", frames_to_input({"", "1.0", "7", "global", addr, "", "CURVE", zf::fuzz::kWorkerKey}));
  write("zap", "null.bin", frames_to_input({"", "1.0", "8", "workers", addr, "", "NULL"}));
  write("zap", "plain.bin", frames_to_input({"", "1.0", "9", "api", addr, "", "PLAIN", "user", "secret"}));
  write("zap", "gssapi.bin", frames_to_input({"", "1.0", "10", "api", addr, "", "GSSAPI", "principal"}));
  write("zap", "bad-version.bin", frames_to_input({"", "2.0", "11", "workers", addr, "", "NULL"}));
  write("zap", "short-key.bin", frames_to_input({"", "1.0", "12", "workers", addr, "", "CURVE", "short"}));
  write("zap", "too-few.bin", frames_to_input({"", "1.0", "13"}));
  write("zap", "no-delimiter.bin", frames_to_input({"1.0", "14", "workers", addr, "", "CURVE", zf::fuzz::kWorkerKey}));
}

void key_seeds() {
  const std::string pub = *zf::encode_z85_key(zf::fuzz::kWorkerKey);
  const std::string sec = *zf::encode_z85_key(zf::fuzz::fixed_key('S'));
  const std::string fp = zf::fingerprint(pub);
  write("curve_keys", "public.pub", "# zforce CURVE public key w1 (fingerprint " + fp + ")\n" + pub + "\n");
  write("curve_keys", "secret.key",
        "# zforce CURVE secret key w1 (fingerprint " + fp + "); keep private, mode 0600\n" + sec + "\n");
  write("curve_keys", "bare.pub", pub);
  write("curve_keys", "crlf.pub", "# a key written on Windows\r\n\r\n  " + pub + " \r\n");
  write("curve_keys", "two-keys.pub", pub + "\n" + sec + "\n");
  write("curve_keys", "comments-only.pub", "# nothing here\n\n# still nothing\n");
  write("curve_keys", "short.pub", "# one character short\n" + pub.substr(1) + "\n");
  write("curve_keys", "not-z85.pub", "# a quote is not Z85\n\"" + pub.substr(1) + "\n");
  // "#####" is 85^5 - 1, more than 32 bits (and not at the line start, where '#' opens a comment).
  write("curve_keys", "over-32-bits.pub", pub.substr(0, 5) + "#####" + pub.substr(10) + "\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds CORPUS_DIR   (e.g. tests/fuzz/corpus)\n");
    return 2;
  }
  g_root = argv[1];
  protocol_seeds();
  zap_seeds();
  key_seeds();
  return 0;
}
