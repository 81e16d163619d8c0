// The one doctest main shared by the unit-test executables.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <cstdlib>

int main(int argc, char** argv) {
  // Every master a test starts inherits this: its `stats` then also counts
  // the instances in memory one by one and fails if the counts it keeps
  // differ (master/master.h, state_counts_). Every test that asks for stats
  // checks them.
  ::setenv("ZFORCE_TEST_CHECK_COUNTS", "1", 1);
  return doctest::Context(argc, argv).run();
}
