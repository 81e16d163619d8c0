// Job files: what loads, what is refused and how the error reads (file, line,
// field), and how parameters become argv.
#include <doctest/doctest.h>

#include "common/duration.h"
#include "common/job_loader.h"

using namespace zf;

namespace {
std::string error_of(const std::string& toml) {
  auto j = parse_job(toml, "jobs/x.toml");
  REQUIRE_MESSAGE(!j.ok(), "expected an error for:\n" << toml);
  return j.error().message;
}
}  // namespace

TEST_CASE("a full job file loads") {
  auto j = parse_job(R"(
name = "report"
description = "daily report"
timeout = "10m"

[params.day]
default = "today"
description = "which day"

[params.dest]

[[steps]]
name = "make"
run = ["make-report", "--day={{day}}", "{{ dest }}"]
timeout = "30s"
cwd = "/tmp"
env = { MODE = "fast-{{day}}" }

[[steps]]
builtin = "echo"
text = "done {{day}}"
)",
                     "report.toml");
  REQUIRE_MESSAGE(j.ok(), j.error().message);
  CHECK(j->name == "report");
  CHECK(j->timeout == Millis(600000));
  REQUIRE(j->params.size() == 2);
  REQUIRE(j->steps.size() == 2);
  CHECK(j->steps[0].run.size() == 3);
  CHECK(j->steps[0].timeout == Millis(30000));
  CHECK(j->steps[1].kind == Step::Kind::Builtin);
  CHECK(j->steps[1].name == "step2");

  auto r = resolve_instance(*j, {{"dest", "/out"}});
  REQUIRE_MESSAGE(r.ok(), r.error().message);
  CHECK(r->steps[0].argv == std::vector<std::string>{"make-report", "--day=today", "/out"});
  CHECK(r->steps[0].env.at("MODE") == "fast-today");
  CHECK(r->steps[0].timeout_ms == 30000);
  CHECK(r->steps[1].args.at("text") == "done today");
  CHECK(r->params.at("day") == "today");
}

TEST_CASE("argv substitution keeps each value one argument, whatever it holds") {
  auto j = parse_job("name = \"x\"\n[params.a]\n[[steps]]\nrun = [\"echo\", \"{{a}}\", \"pre{{a}}post{{a}}\"]\n", "x.toml");
  REQUIRE(j.ok());
  auto r = resolve_instance(*j, {{"a", "1; rm -rf / $(x) {{a}}"}});
  REQUIRE(r.ok());
  CHECK(r->steps[0].argv.size() == 3);
  CHECK(r->steps[0].argv[1] == "1; rm -rf / $(x) {{a}}");  // substituted once, never re-expanded
  CHECK(r->steps[0].argv[2] == "pre1; rm -rf / $(x) {{a}}post1; rm -rf / $(x) {{a}}");
}

TEST_CASE("bad run-time parameters are refused with the reason") {
  auto j = parse_job("name = \"x\"\n[params.a]\n[params.b]\ndefault = \"2\"\n[[steps]]\nrun = [\"echo\", \"{{a}}{{b}}\"]\n",
                     "x.toml");
  REQUIRE(j.ok());
  auto missing = resolve_instance(*j, {});
  REQUIRE_FALSE(missing.ok());
  CHECK(missing.error().message == "job 'x' needs parameter 'a'");
  auto unknown = resolve_instance(*j, {{"a", "1"}, {"zz", "2"}});
  REQUIRE_FALSE(unknown.ok());
  CHECK(unknown.error().message == "job 'x' has no parameter 'zz'");
  auto huge = resolve_instance(*j, {{"a", std::string(kMaxParamValueBytes + 1, 'x')}});
  REQUIRE_FALSE(huge.ok());
  CHECK(huge.error().message.find("too long") != std::string::npos);
  auto ok = resolve_instance(*j, {{"a", "1"}});
  REQUIRE(ok.ok());
  CHECK(ok->steps[0].argv[1] == "12");
}

TEST_CASE("errors name the file, the line and the field") {
  struct Case {
    const char* toml;
    const char* expected;
  };
  const Case cases[] = {
      {"name = \"x\"\n[[steps]]\nrun = \"echo hi\"\n", "jobs/x.toml:3:7: field 'steps[0].run': expected a non-empty array of strings"},
      {"name = \"x\"\n[[steps]]\nrun = [\"echo\", 5]\n", "jobs/x.toml:3:16: field 'steps[0].run[1]': expected a string"},
      {"[[steps]]\nrun = [\"true\"]\n", "jobs/x.toml: field 'name': missing (every job has a name)"},
      {"name = \"x\"\n", "jobs/x.toml: field 'steps': missing"},
      {"name = \"bad name\"\n[[steps]]\nrun=[\"true\"]\n", "jobs/x.toml:1:8: field 'name': 'bad name' is not a valid job name"},
      {"name = \"x\"\n[[steps]]\nrun = [\"true\"]\ntimeout = \"5\"\n", "jobs/x.toml:4:11: field 'steps[0].timeout': invalid duration '5': missing unit"},
      {"name = \"x\"\n[[steps]]\nrun = [\"true\"]\ntimeout = \"5 minutes\"\n", "field 'steps[0].timeout': invalid duration"},
      {"name = \"x\"\n[[steps]]\nrun = [\"echo\", \"{{who}}\"]\n", "jobs/x.toml:3:16: field 'steps[0].run[1]': uses '{{who}}' but the job has no parameter 'who'"},
      {"name = \"x\"\n[[steps]]\nrun = [\"echo\", \"{{who\"]\n", "field 'steps[0].run[1]': unclosed '{{'"},
      {"name = \"x\"\n[[steps]]\nbuiltin = \"teleport\"\n", "jobs/x.toml:3:11: field 'steps[0].builtin': unknown builtin 'teleport' (known: noop, echo, sleep, copy, move, delete, mkdir)"},
      {"name = \"x\"\n[[steps]]\nbuiltin = \"sleep\"\n", "field 'steps[0]': builtin 'sleep' needs 'duration'"},
      {"name = \"x\"\n[[steps]]\nbuiltin = \"sleep\"\nduration = \"soon\"\n", "field 'steps[0].duration': invalid duration 'soon'"},
      {"name = \"x\"\n[[steps]]\nbuiltin = \"echo\"\ntext = \"a\"\ncolour = \"red\"\n", "field 'steps[0].colour': unknown argument for builtin 'echo'"},
      {"name = \"x\"\n[[steps]]\nrun = [\"true\"]\nbuiltin = \"noop\"\n", "a step has exactly one of 'run' or 'builtin'"},
      {"name = \"x\"\n[[steps]]\nname = \"s\"\n", "field 'steps[0]': a step needs 'run = [argv...]' or 'builtin = \"NAME\"'"},
      {"name = \"x\"\n[[steps]]\nchoose = []\n", "step kind 'choose' is planned but not supported"},
      {"name = \"x\"\nretries = 3\n[[steps]]\nrun = [\"true\"]\n", "jobs/x.toml:2:11: field 'retries': unknown field"},
      {"name = \"x\"\n[[triggers]]\nwatch = \"/tmp\"\n[[steps]]\nrun = [\"true\"]\n", "jobs/x.toml:2:1: field 'triggers[0]': a watch trigger passes the file as parameter 'file'"},
      {"name = \"x\"\n[[triggers]]\nevery = \"1s\"\nparams = { day = \"1\" }\n[[steps]]\nrun = [\"true\"]\n", "field 'triggers[0].params.day': the job has no parameter 'day'"},
      {"name = \"x\"\nrequires = \"gpu\"\n[[steps]]\nrun = [\"true\"]\n", "jobs/x.toml:2:12: field 'requires': expected a list of worker tags"},
      {"name = \"x\"\n[params.9a]\n[[steps]]\nrun = [\"true\"]\n", "field 'params.9a': parameter names use letters"},
      {"name = \"x\"\n[params.a]\nvalue = 1\n[[steps]]\nrun = [\"true\"]\n", "field 'params.a.value': unknown field"},
      {"name = \"x\"\n[[steps]]\nrun = [\"true\"]\nenv = { A = 1 }\n", "field 'steps[0].env.A': expected a string"},
      {"name = \"x\"\n[[steps]]\nrun = [\"true\"\n", "jobs/x.toml:3:"},  // TOML syntax error: line and column
      {"name = \"x\"\nname = \"y\"\n", "jobs/x.toml:2:"},
  };
  for (const auto& c : cases) {
    std::string e = error_of(c.toml);
    CHECK_MESSAGE(e.find(c.expected) != std::string::npos, "got: " << e << "\nwanted: " << std::string(c.expected));
  }
}

TEST_CASE("a missing file is a clear error") {
  auto j = load_job_file("/nonexistent/job.toml");
  REQUIRE_FALSE(j.ok());
  CHECK(j.error().message == "/nonexistent/job.toml: cannot read the file");
}

TEST_CASE("durations parse with units and refuse the rest") {
  CHECK(parse_duration("250ms").value() == Millis(250));
  CHECK(parse_duration("1m30s").value() == Millis(90000));
  CHECK(parse_duration("2h").value() == Millis(7200000));
  CHECK(parse_duration("1d").value() == Millis(86400000));
  CHECK_FALSE(parse_duration("").ok());
  CHECK_FALSE(parse_duration("10").ok());
  CHECK_FALSE(parse_duration("-1s").ok());
  CHECK_FALSE(parse_duration("1 s").ok());
  CHECK_FALSE(parse_duration("1w").ok());
  CHECK_FALSE(parse_duration("99999999999999999999s").ok());
  CHECK(format_duration(Millis(90500)) == "1m30s500ms");
}

TEST_CASE("a retry policy loads, and bad ones are refused") {
  auto j = parse_job("name = \"r\"\n[retry]\nattempts = 4\nbackoff = \"1s\"\nmax_backoff = \"5s\"\n"
                     "on = [\"failed\", \"timed_out\"]\n[[steps]]\nrun = [\"true\"]\n",
                     "r.toml");
  REQUIRE_MESSAGE(j.ok(), j.error().message);
  CHECK(j->retry.attempts == 4);
  CHECK(j->retry.backoff == Millis(1000));
  CHECK(j->retry.max_backoff == Millis(5000));
  CHECK(j->retry.on_failed);
  CHECK(j->retry.on_timed_out);
  CHECK_FALSE(j->retry.on_lost);
  auto d = parse_job("name = \"d\"\n[[steps]]\nrun = [\"true\"]\n", "d.toml");
  REQUIRE(d.ok());
  CHECK(d->retry.on_lost);  // by default only lost instances run again
  CHECK_FALSE(d->retry.on_failed);
  CHECK(error_of("name = \"x\"\n[retry]\nattempts = 0\n[[steps]]\nrun = [\"true\"]\n")
            .find("field 'retry.attempts': must be between 1 and 100") != std::string::npos);
  CHECK(error_of("name = \"x\"\n[retry]\non = [\"crashed\"]\n[[steps]]\nrun = [\"true\"]\n")
            .find("field 'retry.on[0]': unknown outcome 'crashed'") != std::string::npos);
  CHECK(error_of("name = \"x\"\n[retry]\ntimes = 2\n[[steps]]\nrun = [\"true\"]\n")
            .find("field 'retry.times': unknown field") != std::string::npos);
}

TEST_CASE("queues in job files: a shared queue by name, a local [queue] table, priority") {
  auto shared = parse_job("name = \"a\"\nqueue = \"render\"\npriority = 5\n[[steps]]\nrun = [\"true\"]\n", "a.toml");
  REQUIRE(shared.ok());
  CHECK(queue_of(*shared) == "render");
  CHECK(shared->priority == 5);
  auto local = parse_job("name = \"b\"\n[queue]\nmax_parallel = 2\nmin_delay = \"1s\"\nrun_on = \"workers\"\n"
                         "fallback = \"master\"\n[[steps]]\nrun = [\"true\"]\n",
                         "b.toml");
  REQUIRE_MESSAGE(local.ok(), local.error().message);
  CHECK(queue_of(*local) == "job:b");
  CHECK(local->local_queue->max_parallel == 2);
  CHECK(local->local_queue->min_delay == Millis(1000));
  CHECK(local->local_queue->fallback == RunOn::kMaster);
  auto none = parse_job("name = \"c\"\n[[steps]]\nrun = [\"true\"]\n", "c.toml");
  REQUIRE(none.ok());
  CHECK(queue_of(*none) == "default");
  CHECK(error_of("name = \"x\"\n[queue]\nrun_on = \"gpu\"\n[[steps]]\nrun = [\"true\"]\n")
            .find("field 'queue.run_on': expected \"any\", \"master\" or \"workers\"") != std::string::npos);
  CHECK(error_of("name = \"x\"\n[queue]\nrun_on = \"any\"\nfallback = \"master\"\n[[steps]]\nrun = [\"true\"]\n")
            .find("fallback has no effect") != std::string::npos);
  auto q = parse_queue("name = \"render\"\nmax_parallel = 3\nmax_total = 5\n", "render.toml");
  REQUIRE(q.ok());
  CHECK(q->max_total == 5);
  auto bad = parse_queue("name = \"r\"\nmax_paralel = 3\n", "r.toml");
  REQUIRE_FALSE(bad.ok());
  CHECK(bad.error().message == "r.toml:2:15: field 'max_paralel': unknown field (allowed: max_parallel, max_total, "
                               "max_queued, min_delay, run_on, fallback)");
}

// Found by tests/fuzz (fuzz_job_loader): toml++ 3.3.0 checks its own parser's
// preconditions with assert(), and these break them; the master aborted on
// `zforce job put` of such a file.
TEST_CASE("regression: text that fails toml++'s internal checks is a syntax error, not an abort") {
  for (const char* text : {"[#", "[\n", "[[{", "x = 2026-05-01T:00", "name = \"a\"\n[ #\n"}) {
    CAPTURE(text);
    auto job = parse_job(text, "jobs/x.toml");
    REQUIRE_FALSE(job.ok());
    CHECK(job.error().message.rfind("jobs/x.toml: not valid TOML", 0) == 0);
    CHECK_FALSE(parse_queue(text, "queues/q.toml").ok());
  }
}

// Found by tests/fuzz (fuzz_job_loader under UBSan): toml++ 3.3.0 classifies
// non-ASCII characters outside string values with a function that reaches
// __builtin_unreachable for most of them (é, ü, Cyrillic, ...).
TEST_CASE("regression: non-ASCII text outside string values is refused before toml++ reaches undefined behaviour") {
  struct Case {
    std::string toml;
    std::string error;
  };
  const Case cases[] = {
      {"\xc3\xa9 = 1\n", "jobs/x.toml:1:1: non-ASCII characters are allowed only in strings and comments"},
      {"name = \"a\"\n\"\xc3\xa9\" = 1\n", "jobs/x.toml:2:2: non-ASCII characters in keys are not supported"},
      {"x = 1\xc3\xa9\n", "jobs/x.toml:1:6: non-ASCII characters are allowed only in strings and comments"},
      {"x = \"a\"\xc3\xa9\n", "jobs/x.toml:1:8: non-ASCII characters are allowed only in strings and comments"},
      {"x = 1[\"\xc3\xa9\"]\n", "jobs/x.toml:1:8: non-ASCII characters are allowed only in strings and comments"},
      {"me = -\"l\xef\xbb\xafi4s", "jobs/x.toml:1:9: non-ASCII characters are allowed only in strings and comments"},
      {"x = \"\\\xc3\xa9\"\n", "jobs/x.toml:1:7: a non-ASCII character right after a backslash: write it as \\uXXXX"},
  };
  for (const auto& c : cases) {
    CAPTURE(c.toml);
    CHECK(error_of(c.toml) == c.error);
  }
  // Where valid TOML has non-ASCII text, it loads as written.
  auto job = parse_job("# r\xc3\xa9sum\xc3\xa9\nname = \"r\"\ndescription = \"\"\"\\\n   \xc3\xa9t\xc3\xa9 \xd0\xb4\"\"\"\n"
                       "[[steps]]\nrun = [\"echo\", 'd\xc3\xa9j\xc3\xa0', \"\"\"\xe3\x81\x82\"\"\"]  # \xc3\xa9\n",
                       "jobs/r.toml");
  REQUIRE_MESSAGE(job.ok(), job.error().message);
  CHECK(job->description == "\xc3\xa9t\xc3\xa9 \xd0\xb4");
  CHECK(job->steps[0].run == std::vector<std::string>{"echo", "d\xc3\xa9j\xc3\xa0", "\xe3\x81\x82"});
}
