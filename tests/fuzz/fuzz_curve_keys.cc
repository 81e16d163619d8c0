// libFuzzer target: CurveZMQ key files (NAME.pub, NAME.key) as a master
// reads them from its key directory: the input is written to a file and read
// with load_public and load_secret (comments, blank lines, the one key line,
// Z85). The same bytes go straight to the Z85 functions too.
//
// Properties: a key that checks decodes to 32 bytes that encode back to the
// same text; a loaded public key is valid Z85; a loaded secret key yields a
// valid public key.
//
// The file lives in a directory made under $TMPDIR at start-up
// (scripts/fuzz.sh points TMPDIR at its own temp dir and removes it).
#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <string_view>

#include "common/curve_keys.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

std::filesystem::path g_dir;
std::filesystem::path g_file;

void remove_dir() {
  std::error_code ec;
  std::filesystem::remove_all(g_dir, ec);
}

// A new file each time: truncating one in place makes ext4 flush it on
// close (auto_da_alloc), which cost milliseconds per input.
bool write_file(const uint8_t* data, size_t size) {
  ::unlink(g_file.c_str());
  int fd = ::open(g_file.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) return false;
  size_t done = 0;
  while (done < size) {
    ssize_t n = ::write(fd, data + done, size - done);
    if (n <= 0) break;
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return done == size;
}

void check_z85(std::string_view text) {
  auto raw = zf::decode_z85_key(text);
  FUZZ_CHECK(raw.ok() == zf::check_z85_key(text).ok(), "check_z85_key and decode_z85_key disagree");
  if (!raw.ok()) return;
  FUZZ_CHECK(raw->size() == zf::kKeyBytes, "a decoded key is not 32 bytes");
  auto back = zf::encode_z85_key(*raw);
  FUZZ_CHECK(back.ok() && *back == text, "Z85 '" + std::string(text) + "' does not encode back");
  FUZZ_CHECK(zf::fingerprint(text) == zf::fingerprint_raw(*raw), "fingerprints of text and bytes differ");
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* tmp = std::getenv("TMPDIR");
  std::string templ = std::string(tmp && *tmp ? tmp : "/tmp") + "/zf-fuzz-keys-XXXXXX";
  if (!::mkdtemp(templ.data())) std::abort();
  g_dir = templ;
  g_file = g_dir / "fuzz.key";
  std::atexit(remove_dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  check_z85(text);
  (void)zf::fingerprint(text);
  (void)zf::check_key_name(text);
  if (size > 0) (void)zf::fingerprint_raw(text);

  FUZZ_CHECK(write_file(data, size), "cannot write the key file");
  if (auto pub = zf::load_public(g_file); pub.ok()) {
    FUZZ_CHECK(zf::check_z85_key(*pub).ok(), "load_public returned an invalid key");
  } else {
    FUZZ_CHECK(pub.error().message.rfind(g_file.string(), 0) == 0, "an error that does not name the file");
  }
  if (auto sec = zf::load_secret(g_file); sec.ok()) {
    FUZZ_CHECK(zf::check_z85_key(sec->secret_key).ok(), "load_secret returned an invalid secret key");
    FUZZ_CHECK(zf::check_z85_key(sec->public_key).ok(), "load_secret derived an invalid public key");
  } else {
    FUZZ_CHECK(sec.error().message.rfind(g_file.string(), 0) == 0, "an error that does not name the file");
  }
  return 0;
}
