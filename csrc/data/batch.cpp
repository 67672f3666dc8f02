#include "data/batch.h"

#include <algorithm>
#include <atomic>

#include "runtime/error.h"

namespace pocketml::data {

namespace {
std::atomic<int64_t> g_live_batches{0};
}  // namespace

Batch::Batch() { g_live_batches.fetch_add(1, std::memory_order_relaxed); }
Batch::~Batch() {
  if (pool) {
    pool->give(std::move(input_ids));
    pool->give(std::move(labels));
    pool->give(std::move(position_ids));
  }
  g_live_batches.fetch_sub(1, std::memory_order_relaxed);
}
int64_t live_batches() { return g_live_batches.load(std::memory_order_relaxed); }

void validate_schedule(const BatchSchedule& s) {
  auto positive = [](const char* arg, int64_t v) {
    if (v < 1) fail_argument(ErrorKind::InvalidArgument, arg, "a positive integer", std::to_string(v));
  };
  positive("batch_size", s.batch_size);
  positive("global_batch", s.global_batch);
  positive("step_stride", s.step_stride);
  if (s.origin < 0 || s.first_step < 0 || s.num_batches < 0)
    fail_argument(ErrorKind::InvalidArgument, "schedule", "non-negative origin, first_step and num_batches",
                  std::to_string(s.origin) + ", " + std::to_string(s.first_step) + " and " +
                      std::to_string(s.num_batches));
  if (s.row_offset < 0 || s.row_offset + s.batch_size > s.global_batch)
    fail_argument(ErrorKind::InvalidArgument, "row_offset",
                  "rows inside the global batch of " + std::to_string(s.global_batch),
                  std::to_string(s.row_offset) + " + " + std::to_string(s.batch_size));
}

namespace {

// One row: the sample's tokens (seq_len + 1 of them, padded with EOS and
// ignored labels), its positions and segment starts.
void fill_row(const TokenStore& store, const EpochPlan& plan, int64_t sample, int64_t row_start, int64_t* tokens,
              Batch& batch) {
  const int64_t seq_len = plan.seq_len();
  int64_t* inputs = batch.input_ids.data() + row_start;
  int64_t* labels = batch.labels.data() + row_start;
  int64_t* positions = batch.position_ids.data() + row_start;
  int64_t filled = 0;
  if (sample >= 0) {
    for (const Segment* s = plan.segments_begin(sample); s != plan.segments_end(sample); ++s) {
      store.copy_tokens(s->document, s->offset, s->length, tokens + filled);
      // A segment starting at or past the last input position only contributes labels.
      if (filled < seq_len) batch.cu_seqlens.push_back(static_cast<int32_t>(row_start + filled));
      for (int64_t i = 0; i < s->length && filled + i < seq_len; ++i) positions[filled + i] = i;
      filled += s->length;
    }
  }
  // Padding: one more segment of EOS tokens whose labels are ignored.
  if (filled < seq_len) batch.cu_seqlens.push_back(static_cast<int32_t>(row_start + filled));
  for (int64_t i = filled; i < seq_len; ++i) positions[i] = i - filled;
  std::copy(tokens, tokens + std::min(filled, seq_len), inputs);
  std::fill(inputs + std::min(filled, seq_len), inputs + seq_len, store.eos_id());
  const int64_t labelled = std::max<int64_t>(0, std::min(filled - 1, seq_len));
  std::copy(tokens + 1, tokens + 1 + labelled, labels);
  std::fill(labels + labelled, labels + seq_len, kIgnoreLabel);
}

}  // namespace

std::unique_ptr<Batch> build_batch(const TokenStore& store, const EpochPlan& plan, const BatchSchedule& s,
                                   int64_t j, const std::shared_ptr<BufferPool>& pool) {
  auto batch = std::make_unique<Batch>();
  const int64_t seq_len = plan.seq_len();
  const auto cells = static_cast<size_t>(s.batch_size * seq_len);
  batch->batch_size = s.batch_size;
  batch->seq_len = seq_len;
  batch->pool = pool;
  batch->input_ids = pool ? pool->take(cells) : AlignedBuffer<int64_t>(cells);
  batch->labels = pool ? pool->take(cells) : AlignedBuffer<int64_t>(cells);
  batch->position_ids = pool ? pool->take(cells) : AlignedBuffer<int64_t>(cells);
  batch->sample_ids.resize(static_cast<size_t>(s.batch_size));
  batch->cu_seqlens.reserve(static_cast<size_t>(s.batch_size) * 2 + 1);
  std::vector<int64_t> tokens(static_cast<size_t>(seq_len + 1));
  const int64_t first_position = s.origin + (s.first_step + j * s.step_stride) * s.global_batch + s.row_offset;
  for (int64_t row = 0; row < s.batch_size; ++row) {
    const int64_t position = first_position + row;
    const int64_t sample = position < plan.num_samples() ? plan.sample_at(position) : -1;
    batch->sample_ids[row] = sample;
    fill_row(store, plan, sample, row * seq_len, tokens.data(), *batch);
  }
  batch->cu_seqlens.push_back(static_cast<int32_t>(cells));
  return batch;
}

}  // namespace pocketml::data
