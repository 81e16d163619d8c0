// Conversions between the master's in-memory records and what the store
// keeps (master/store.h): resolved steps and retry policies as JSON text,
// Instance <-> InstanceRecord. No I/O here.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "common/job.h"
#include "common/protocol.h"
#include "common/result.h"
#include "master/store.h"

namespace zf {

struct Instance;
struct InstanceSpec;

std::string steps_to_json(const std::vector<proto::StepSpec>& steps);
Result<std::vector<proto::StepSpec>> steps_from_json(const std::string& text);
std::string retry_to_json(const RetryPolicy& r);
Result<RetryPolicy> retry_from_json(const std::string& text);

// History entries from `first` on are in record.history (the store writes
// them with add_transition).
InstanceRecord to_record(const Instance& inst);
// The row of a bulk submission: instances first_id … first_id+count-1 of
// `spec`, created at created_us.
SubmissionRecord to_submission_record(const InstanceSpec& spec, uint64_t first_id, uint64_t count,
                                      int64_t created_us);
// Only what Store::update_instance() writes: the columns that change after
// creation (no params, steps or retry policy to copy and encode).
InstanceRecord to_update_record(const Instance& inst);
// `required_tags` come from the job as it is now (they are not stored per
// instance). Consecutive records of one submission share one spec: pass the
// previous instance's as `previous`, and it is reused when it matches.
Result<Instance> from_record(const InstanceRecord& rec, const std::vector<std::string>& required_tags,
                             const std::shared_ptr<const InstanceSpec>& previous);

}  // namespace zf
