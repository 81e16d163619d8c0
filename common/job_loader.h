// Reads job files and queue files (TOML, formats in schemas/job-format.md
// and schemas/queue-format.md) into the model.
// Every error names the file, the line and column, and the field.
#pragma once

#include <string>
#include <string_view>

#include "common/job.h"
#include "common/result.h"

namespace zf {

// source_name is what error messages call the file (a path as the operator typed it).
Result<Job> parse_job(std::string_view toml_text, std::string_view source_name);
Result<Job> load_job_file(const std::string& path);
Result<QueueConfig> parse_queue(std::string_view toml_text, std::string_view source_name);

}  // namespace zf
