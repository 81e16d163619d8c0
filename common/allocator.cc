#include "common/allocator.h"

#ifdef ZF_HAVE_JEMALLOC
#include <jemalloc/jemalloc.h>
#endif

namespace zf {

std::string allocator_description() {
#ifdef ZF_HAVE_JEMALLOC
  // Also what keeps the linker from dropping jemalloc as unneeded
  // (--as-needed): nothing else names one of its symbols.
  const char* version = nullptr;
  size_t size = sizeof version;
  if (mallctl("version", &version, &size, nullptr, 0) == 0 && version) return std::string("jemalloc ") + version;
  return "jemalloc (version unknown)";
#else
  return "the C library's malloc";
#endif
}

}  // namespace zf
