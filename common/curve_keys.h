// CurveZMQ key pairs, their files and the master's key directory.
//
// Keys are handled as Z85 text (40 characters for 32 bytes), the form
// zmq_curve_keypair produces and the socket options accept.
//
// Key files (written by `zforce keygen NAME`, see docs/security.md):
//   NAME.key  the secret key, mode 0600:   "# zforce CURVE secret key NAME ..."
//                                           "<40 Z85 characters>"
//   NAME.pub  the public key, mode 0644:   "# zforce CURVE public key NAME ..."
//                                           "<40 Z85 characters>"
// Lines starting with '#' and blank lines are ignored; exactly one other line,
// the key, must remain. Surrounding blanks on that line are ignored.
//
// The master's key directory (`zforce-master --keys DIR`):
//   DIR/master.key               the master's secret key (required, mode 0600)
//   DIR/master.pub               its public key (optional; must match if present)
//   DIR/workers/NAME.pub         admitted workers; ZAP User-Id = NAME
//   DIR/clients/admin/NAME.pub   admin api clients; User-Id = "admin:NAME"
//   DIR/clients/readonly/NAME.pub read-only api clients; User-Id = "readonly:NAME"
//   DIR/pending/FINGERPRINT.pub  unknown worker keys seen by the master (it writes these)
//   DIR/revoked/NAME.pub         workers removed by `zforce worker remove NAME`
// Missing subdirectories mean "none". Files not ending in ".pub" are ignored.
//
// Thread contract: free functions, no shared state; safe from any thread.
#pragma once

#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <zmq.hpp>

#include "common/result.h"

namespace zf {

inline constexpr size_t kZ85KeyChars = 40;  // Z85 text of a CURVE key
inline constexpr size_t kKeyBytes = 32;     // the raw key

// A CURVE key pair, both halves as Z85 text.
struct KeyPair {
  std::string public_key;
  std::string secret_key;
};

// A public key with the name it is known by (file name without ".pub").
struct NamedKey {
  std::string name;
  std::string public_key;   // Z85
  std::string fingerprint;  // fingerprint(public_key)
  std::filesystem::path path;
};

// The master's key directory, loaded. See the layout above.
struct KeyDir {
  std::filesystem::path dir;
  KeyPair master;
  std::vector<NamedKey> workers;
  std::vector<NamedKey> admin_clients;
  std::vector<NamedKey> readonly_clients;
  std::vector<NamedKey> pending;  // name = the fingerprint
  std::vector<NamedKey> revoked;
};

// True when the linked libzmq was built with CURVE (libsodium).
bool curve_available();

// A fresh key pair from zmq_curve_keypair.
Result<KeyPair> generate();

// Checks that `key` is 40 Z85 characters that decode to 32 bytes. The error
// says what is wrong ("has 39 characters, a key has 40"), without a file name.
Status check_z85_key(std::string_view key);

// The 32 raw bytes of a valid Z85 key; an error if check_z85_key fails.
Result<std::string> decode_z85_key(std::string_view key);

// Z85 text of 32 raw bytes; an error for any other length.
Result<std::string> encode_z85_key(std::string_view raw);

// Short, stable name for a public key: the first 16 hex digits of the
// SHA-256 of its 32 raw bytes (of the text itself if it is not a valid key).
std::string fingerprint(std::string_view public_key_z85);
// The same for a key given as its 32 raw bytes (the ZAP credentials frame).
std::string fingerprint_raw(std::string_view raw_key);

// Names used for key files and worker names: 1..64 characters of
// [A-Za-z0-9._-], not starting with '.' or '-'.
Status check_key_name(std::string_view name);

// Writes DIR/NAME.key (0600) and DIR/NAME.pub (0644) for a new key pair and
// returns it. Refuses to overwrite: if either file exists nothing is written.
// DIR must exist.
Result<KeyPair> write_key_pair(const std::filesystem::path& dir, std::string_view name);

// Writes one public key file; refuses to overwrite. `comment` becomes the
// first line (without the "# ").
Status write_public_key(const std::filesystem::path& path, std::string_view public_key,
                        std::string_view comment);

// Reads a secret key file and derives its public half. Errors name the file:
// missing, unreadable, readable by group or others, not exactly one key line,
// not valid Z85, or a public key file given where a secret one is expected.
Result<KeyPair> load_secret(const std::filesystem::path& path);

// Reads a public key file (Z85 text). Errors name the file.
Result<std::string> load_public(const std::filesystem::path& path);

// Loads the master's key directory. Errors name the file: a missing
// master.key, a bad key file, a bad file name, a master.pub that does not
// match master.key, the same key twice in one list, or a key that is both
// admin and read-only.
Result<KeyDir> load_key_dir(const std::filesystem::path& dir);

// Socket setup. Call before bind/connect. Preconditions: the keys are valid
// Z85 (from generate/load_* or checked with check_z85_key) and CURVE is
// available; otherwise cppzmq throws zmq::error_t (a bug in the caller).
//
// Server: curve_server = 1, curve_secretkey, zap_domain. The master's
// ZapHandler must be bound in the same context before the first peer
// connects: CURVE without a ZAP handler admits anyone who knows the server key.
void make_curve_server(zmq::socket_t& socket, const KeyPair& server, std::string_view domain);
// Client: curve_serverkey, curve_publickey, curve_secretkey.
void make_curve_client(zmq::socket_t& socket, const KeyPair& client, std::string_view server_public);

}  // namespace zf
