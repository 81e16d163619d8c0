#include "common/curve_keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include <zmq.h>

namespace zf {

namespace {

constexpr std::string_view kZ85Alphabet =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

// ---- SHA-256 (FIPS 180-4), only for fingerprints ----

constexpr std::array<uint32_t, 64> kSha256K = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

constexpr uint32_t rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

std::array<uint8_t, 32> sha256(std::string_view data) {
  std::array<uint32_t, 8> h = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                               0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  std::string msg(data);
  const uint64_t bit_len = static_cast<uint64_t>(data.size()) * 8;
  msg.push_back(static_cast<char>(0x80));
  while (msg.size() % 64 != 56) msg.push_back('\0');
  for (int i = 7; i >= 0; --i) msg.push_back(static_cast<char>((bit_len >> (i * 8)) & 0xff));

  for (size_t off = 0; off < msg.size(); off += 64) {
    std::array<uint32_t, 64> w{};
    for (int i = 0; i < 16; ++i) {
      auto byte = [&](int k) { return static_cast<uint32_t>(static_cast<uint8_t>(msg[off + i * 4 + k])); };
      w[i] = (byte(0) << 24) | (byte(1) << 16) | (byte(2) << 8) | byte(3);
    }
    for (int i = 16; i < 64; ++i) {
      uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    auto [a, b, c, d, e, f, g, hh] = h;
    for (int i = 0; i < 64; ++i) {
      uint32_t S1 = rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25);
      uint32_t ch = (e & f) ^ (~e & g);
      uint32_t t1 = hh + S1 + ch + kSha256K[i] + w[i];
      uint32_t S0 = rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22);
      uint32_t maj = (a & b) ^ (a & c) ^ (b & c);
      uint32_t t2 = S0 + maj;
      hh = g;
      g = f;
      f = e;
      e = d + t1;
      d = c;
      c = b;
      b = a;
      a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d;
    h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
  }
  std::array<uint8_t, 32> out{};
  for (int i = 0; i < 8; ++i)
    for (int k = 0; k < 4; ++k) out[i * 4 + k] = static_cast<uint8_t>(h[i] >> (24 - 8 * k));
  return out;
}

std::string hex_prefix(const std::array<uint8_t, 32>& digest, size_t hex_digits) {
  static constexpr char kHex[] = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < digest.size() && s.size() < hex_digits; ++i) {
    s.push_back(kHex[digest[i] >> 4]);
    s.push_back(kHex[digest[i] & 0xf]);
  }
  s.resize(hex_digits);
  return s;
}

std::string errno_text(int err) { return std::strerror(err); }

std::string quoted(const std::filesystem::path& p) { return p.string(); }

// Reads a small text file (keys are tiny; anything over 4 KiB is not a key file).
Result<std::string> read_small_file(const std::filesystem::path& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return make_error(quoted(path) + ": cannot open: " + errno_text(errno));
  std::string text;
  char buf[1024];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return make_error(quoted(path) + ": cannot read: " + errno_text(err));
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > 4096) {
      ::close(fd);
      return make_error(quoted(path) + ": too large for a key file (over 4 KiB)");
    }
  }
  ::close(fd);
  return text;
}

struct ParsedKeyFile {
  std::string key;
  std::string first_comment;  // text of the first '#' line, for "public vs secret" hints
};

std::string_view trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r')) s.remove_suffix(1);
  return s;
}

Result<ParsedKeyFile> parse_key_file(const std::filesystem::path& path, std::string_view text) {
  ParsedKeyFile out;
  int key_lines = 0;
  size_t line_no = 0;
  size_t key_line_no = 0;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t nl = text.find('\n', pos);
    std::string_view line = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
    ++line_no;
    std::string_view t = trim(line);
    if (!t.empty() && t.front() == '#') {
      if (out.first_comment.empty()) out.first_comment = std::string(t);
    } else if (!t.empty()) {
      ++key_lines;
      if (key_lines == 1) {
        out.key = std::string(t);
        key_line_no = line_no;
      }
    }
    if (nl == std::string_view::npos) break;
    pos = nl + 1;
  }
  if (key_lines == 0) return make_error(quoted(path) + ": holds no key (only comments or blank lines)");
  if (key_lines > 1)
    return make_error(quoted(path) + ": holds " + std::to_string(key_lines) +
                      " non-comment lines; a key file holds exactly one key line");
  if (auto st = check_z85_key(out.key); !st)
    return make_error(quoted(path) + ":" + std::to_string(key_line_no) + ": " + st.error().message);
  return out;
}

// Creates `path` exclusively with `mode` and writes `text`. Fails if it exists.
Status write_new_file(const std::filesystem::path& path, std::string_view text, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  if (fd < 0) {
    if (errno == EEXIST) return make_error(quoted(path) + ": already exists; not overwriting it");
    return make_error(quoted(path) + ": cannot create: " + errno_text(errno));
  }
  // The umask may have narrowed `mode`; a secret must be exactly 0600, a public key
  // file is fine narrower, so only fix the secret case up.
  if ((mode & 077) == 0 && ::fchmod(fd, mode) != 0) {
    int err = errno;
    ::close(fd);
    ::unlink(path.c_str());
    return make_error(quoted(path) + ": cannot set mode: " + errno_text(err));
  }
  size_t done = 0;
  while (done < text.size()) {
    ssize_t n = ::write(fd, text.data() + done, text.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      ::unlink(path.c_str());
      return make_error(quoted(path) + ": cannot write: " + errno_text(err));
    }
    done += static_cast<size_t>(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    int err = errno;
    ::unlink(path.c_str());
    return make_error(quoted(path) + ": cannot write: " + errno_text(err));
  }
  return {};
}

// Every "*.pub" file directly in `dir` (sorted by name); a missing dir is empty.
Result<std::vector<NamedKey>> load_pub_dir(const std::filesystem::path& dir, bool names_are_fingerprints) {
  std::vector<NamedKey> keys;
  std::error_code ec;
  if (!std::filesystem::exists(dir, ec)) return keys;
  if (!std::filesystem::is_directory(dir, ec)) return make_error(quoted(dir) + ": is not a directory");
  std::vector<std::filesystem::path> files;
  for (std::filesystem::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto& p = it->path();
    std::string fname = p.filename().string();
    if (fname.empty() || fname.front() == '.' || p.extension() != ".pub") continue;
    files.push_back(p);
  }
  if (ec) return make_error(quoted(dir) + ": cannot list: " + ec.message());
  std::sort(files.begin(), files.end());
  std::map<std::string, std::string> seen;  // key -> name
  for (const auto& p : files) {
    std::string name = p.stem().string();
    if (!names_are_fingerprints) {
      if (auto st = check_key_name(name); !st)
        return make_error(quoted(p) + ": bad file name: " + st.error().message);
    }
    auto key = load_public(p);
    if (!key) return key.error();
    if (auto it = seen.find(*key); it != seen.end())
      return make_error(quoted(p) + ": the same key as " + it->second + ".pub in " + quoted(dir) +
                        "; one key, one name");
    seen.emplace(*key, name);
    keys.push_back(NamedKey{name, *key, fingerprint(*key), p});
  }
  return keys;
}

}  // namespace

bool curve_available() { return zmq_has("curve") != 0; }

Result<KeyPair> generate() {
  if (!curve_available()) return make_error("this libzmq was built without CURVE support");
  char pub[kZ85KeyChars + 1] = {};
  char sec[kZ85KeyChars + 1] = {};
  if (zmq_curve_keypair(pub, sec) != 0)
    return make_error(std::string("zmq_curve_keypair failed: ") + zmq_strerror(zmq_errno()));
  KeyPair kp{std::string(pub, kZ85KeyChars), std::string(sec, kZ85KeyChars)};
  std::memset(sec, 0, sizeof sec);
  return kp;
}

Result<std::string> decode_z85_key(std::string_view key) {
  if (key.size() != kZ85KeyChars)
    return make_error("has " + std::to_string(key.size()) + " characters; a Z85 key has " +
                      std::to_string(kZ85KeyChars));
  std::string raw;
  raw.reserve(kKeyBytes);
  for (size_t group = 0; group < kZ85KeyChars; group += 5) {
    uint64_t value = 0;
    for (size_t i = group; i < group + 5; ++i) {
      size_t idx = kZ85Alphabet.find(key[i]);
      if (idx == std::string_view::npos) {
        unsigned code = static_cast<unsigned char>(key[i]);
        std::string shown = (code >= 0x21 && code < 0x7f) ? std::string("'") + key[i] + "'"
                                                           : "byte " + std::to_string(code);
        return make_error("character " + std::to_string(i + 1) + " (" + shown + ") is not Z85");
      }
      value = value * 85 + idx;
    }
    if (value > 0xffffffffULL)
      return make_error("characters " + std::to_string(group + 1) + ".." + std::to_string(group + 5) +
                        " are not valid Z85 (value over 32 bits)");
    for (int s = 24; s >= 0; s -= 8) raw.push_back(static_cast<char>((value >> s) & 0xff));
  }
  return raw;
}

Status check_z85_key(std::string_view key) {
  auto raw = decode_z85_key(key);
  if (!raw) return raw.error();
  return {};
}

Result<std::string> encode_z85_key(std::string_view raw) {
  if (raw.size() != kKeyBytes)
    return make_error("a CURVE key has 32 bytes, not " + std::to_string(raw.size()));
  char text[kZ85KeyChars + 1] = {};
  if (!zmq_z85_encode(text, reinterpret_cast<const uint8_t*>(raw.data()), raw.size()))
    return make_error("Z85 encoding failed");
  return std::string(text, kZ85KeyChars);
}

std::string fingerprint_raw(std::string_view raw_key) { return hex_prefix(sha256(raw_key), 16); }

std::string fingerprint(std::string_view public_key_z85) {
  auto raw = decode_z85_key(public_key_z85);
  return fingerprint_raw(raw ? std::string_view(*raw) : public_key_z85);
}

Status check_key_name(std::string_view name) {
  if (name.empty()) return make_error("a name must not be empty");
  if (name.size() > 64) return make_error("name '" + std::string(name.substr(0, 64)) + "...' is longer than 64 characters");
  if (name.front() == '.' || name.front() == '-')
    return make_error("name '" + std::string(name) + "' must not start with '.' or '-'");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
              c == '_' || c == '-';
    if (!ok)
      return make_error("name '" + std::string(name) + "' may hold only letters, digits, '.', '_' and '-'");
  }
  return {};
}

Status write_public_key(const std::filesystem::path& path, std::string_view public_key,
                        std::string_view comment) {
  if (auto st = check_z85_key(public_key); !st) return make_error(quoted(path) + ": " + st.error().message);
  std::string text = "# " + std::string(comment) + "\n" + std::string(public_key) + "\n";
  return write_new_file(path, text, 0644);
}

Result<KeyPair> write_key_pair(const std::filesystem::path& dir, std::string_view name) {
  if (auto st = check_key_name(name); !st) return st.error();
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return make_error(quoted(dir) + ": is not a directory");
  const auto secret_path = dir / (std::string(name) + ".key");
  const auto public_path = dir / (std::string(name) + ".pub");
  for (const auto& p : {secret_path, public_path})
    if (std::filesystem::exists(std::filesystem::symlink_status(p, ec)))
      return make_error(quoted(p) + ": already exists; not overwriting it (remove it first, or pick another name)");
  auto kp = generate();
  if (!kp) return kp.error();
  const std::string fp = fingerprint(kp->public_key);
  std::string secret_text = "# zforce CURVE secret key " + std::string(name) + " (fingerprint " + fp +
                            "); keep private, mode 0600\n" + kp->secret_key + "\n";
  if (auto st = write_new_file(secret_path, secret_text, 0600); !st) return st.error();
  if (auto st = write_public_key(public_path, kp->public_key,
                                 "zforce CURVE public key " + std::string(name) + " (fingerprint " + fp + ")");
      !st) {
    ::unlink(secret_path.c_str());
    return st.error();
  }
  return kp;
}

Result<KeyPair> load_secret(const std::filesystem::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return make_error(quoted(path) + ": cannot open: " + errno_text(errno));
  if (!S_ISREG(st.st_mode)) return make_error(quoted(path) + ": is not a regular file");
  if ((st.st_mode & 077) != 0) {
    char mode[8];
    std::snprintf(mode, sizeof mode, "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return make_error(quoted(path) + ": secret key file is readable or writable by others (mode " + mode +
                      "); run: chmod 600 " + quoted(path));
  }
  auto text = read_small_file(path);
  if (!text) return text.error();
  auto parsed = parse_key_file(path, *text);
  if (!parsed) return parsed.error();
  if (parsed->first_comment.find("CURVE public key") != std::string::npos)
    return make_error(quoted(path) + ": holds a public key (.pub); a secret key file (.key) is needed here");
  char pub[kZ85KeyChars + 1] = {};
  if (zmq_curve_public(pub, parsed->key.c_str()) != 0)
    return make_error(quoted(path) + ": cannot derive the public key: " + zmq_strerror(zmq_errno()));
  return KeyPair{std::string(pub, kZ85KeyChars), parsed->key};
}

Result<std::string> load_public(const std::filesystem::path& path) {
  auto text = read_small_file(path);
  if (!text) return text.error();
  auto parsed = parse_key_file(path, *text);
  if (!parsed) return parsed.error();
  if (parsed->first_comment.find("CURVE secret key") != std::string::npos)
    return make_error(quoted(path) + ": holds a SECRET key; a public key file (.pub) is needed here. "
                      "Do not hand secret keys around");
  return parsed->key;
}

Result<KeyDir> load_key_dir(const std::filesystem::path& dir) {
  std::error_code ec;
  if (!std::filesystem::is_directory(dir, ec)) return make_error(quoted(dir) + ": key directory does not exist");
  KeyDir kd;
  kd.dir = dir;
  auto master = load_secret(dir / "master.key");
  if (!master) return make_error(master.error().message + " (the master's secret key; make it with: zforce keygen --dir " +
                                 quoted(dir) + " master)");
  kd.master = *master;
  if (std::filesystem::exists(dir / "master.pub", ec)) {
    auto pub = load_public(dir / "master.pub");
    if (!pub) return pub.error();
    if (*pub != kd.master.public_key)
      return make_error(quoted(dir / "master.pub") + ": does not match master.key (fingerprint " + fingerprint(*pub) +
                        ", master.key's is " + fingerprint(kd.master.public_key) + ")");
  }
  struct List {
    std::filesystem::path sub;
    std::vector<NamedKey>* into;
    bool fingerprints;
  };
  for (const List& l : {List{"workers", &kd.workers, false}, List{"clients/admin", &kd.admin_clients, false},
                        List{"clients/readonly", &kd.readonly_clients, false}, List{"pending", &kd.pending, true},
                        List{"revoked", &kd.revoked, false}}) {
    auto keys = load_pub_dir(dir / l.sub, l.fingerprints);
    if (!keys) return keys.error();
    *l.into = std::move(*keys);
  }
  for (const auto& a : kd.admin_clients)
    for (const auto& r : kd.readonly_clients)
      if (a.public_key == r.public_key)
        return make_error(quoted(r.path) + ": the same key as " + quoted(a.path) +
                          "; a client is either admin or read-only, not both");
  return kd;
}

void make_curve_server(zmq::socket_t& socket, const KeyPair& server, std::string_view domain) {
  socket.set(zmq::sockopt::curve_server, 1);
  socket.set(zmq::sockopt::curve_secretkey, server.secret_key);
  socket.set(zmq::sockopt::zap_domain, std::string(domain));
}

void make_curve_client(zmq::socket_t& socket, const KeyPair& client, std::string_view server_public) {
  socket.set(zmq::sockopt::curve_serverkey, std::string(server_public));
  socket.set(zmq::sockopt::curve_publickey, client.public_key);
  socket.set(zmq::sockopt::curve_secretkey, client.secret_key);
}

}  // namespace zf
