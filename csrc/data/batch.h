#pragma once
// Assembling one batch from an epoch plan: rows of seq_len inputs and their
// next-token labels, plus the document boundaries of packed rows.
#include <cstdint>
#include <memory>
#include <vector>

#include "data/buffer_pool.h"
#include "data/epoch_plan.h"
#include "data/token_store.h"
#include "runtime/aligned_buffer.h"

namespace pocketml::data {

// Label of positions that carry no target (padding); what torch's cross_entropy ignores.
inline constexpr int64_t kIgnoreLabel = -100;

struct Batch {
  Batch();
  ~Batch();
  Batch(const Batch&) = delete;
  Batch& operator=(const Batch&) = delete;

  int64_t batch_size = 0, seq_len = 0;
  // Uninitialised (every element is written once): zero-filling first would double
  // the memory traffic of the batch, which is most of its cost.
  AlignedBuffer<int64_t> input_ids;     // (batch_size, seq_len)
  AlignedBuffer<int64_t> labels;        // (batch_size, seq_len): input_ids shifted by one; kIgnoreLabel on padding
  AlignedBuffer<int64_t> position_ids;  // (batch_size, seq_len): position inside its segment, 0 at each start
  std::vector<int32_t> cu_seqlens;    // segment starts in the flattened batch, then batch_size * seq_len
  std::vector<int64_t> sample_ids;    // (batch_size,): the plan's sample of each row, -1 for a padding row
  std::shared_ptr<BufferPool> pool;   // where the three matrices go back when the batch is freed (may be null)
};

// Which rows a consumer reads: batch j covers the epoch positions
// origin + (first_step + j * step_stride) * global_batch + row_offset + [0, batch_size).
// origin is where the iteration resumed.
// Ranks differ by row_offset, DataLoader workers by first_step and step_stride.
// Positions at or past the plan's samples are padding rows.
struct BatchSchedule {
  int64_t origin = 0;
  int64_t first_step = 0;
  int64_t step_stride = 1;
  int64_t num_batches = 0;
  int64_t global_batch = 0;
  int64_t row_offset = 0;
  int64_t batch_size = 0;
};

// Batches alive in the process (built and not yet freed): how tests prove that
// an abandoned iteration returns its memory.
int64_t live_batches();

void validate_schedule(const BatchSchedule& schedule);

std::unique_ptr<Batch> build_batch(const TokenStore& store, const EpochPlan& plan, const BatchSchedule& schedule,
                                   int64_t j, const std::shared_ptr<BufferPool>& pool);

}  // namespace pocketml::data
