#pragma once
// An epoch's samples. A sample is one sequence of seq_len + 1 tokens built from
// segments of documents, where a document's tokens are followed by its EOS
// (position `length` of a document is the EOS, which shards do not store).
// Samples shorter than seq_len + 1 are padded when batched.
//
// The plan is a pure function of (dataset, seq_len, packing, seed, epoch,
// shuffle, window): thread count, world size and batch size never enter it.
// Packing algorithms are registered by name (pack_concat.cpp, pack_best_fit.cpp).
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/index_permutation.h"
#include "data/token_store.h"

namespace pocketml::data {

struct Segment {
  int64_t document;
  int64_t offset;  // first token, counting the document's EOS as its last token
  int64_t length;
};

struct PlanOptions {
  int64_t seq_len = 0;
  uint64_t seed = 0;
  uint64_t epoch = 0;
  bool shuffle = true;
  int64_t window = 0;  // best_fit: documents packed together (0: the packer's default)
};

class EpochPlan {
 public:
  EpochPlan(int64_t seq_len, std::vector<Segment> segments, std::vector<int64_t> sample_begin,
            const PlanOptions& options);

  int64_t seq_len() const { return seq_len_; }
  int64_t num_samples() const { return static_cast<int64_t>(sample_begin_.size()) - 1; }

  // The sample at `position` of the epoch's (shuffled) order.
  int64_t sample_at(int64_t position) const { return static_cast<int64_t>(order_(static_cast<uint64_t>(position))); }
  const Segment* segments_begin(int64_t sample) const { return segments_.data() + sample_begin_[sample]; }
  const Segment* segments_end(int64_t sample) const { return segments_.data() + sample_begin_[sample + 1]; }

 private:
  int64_t seq_len_;
  std::vector<Segment> segments_;
  std::vector<int64_t> sample_begin_;  // sample s is segments_[sample_begin_[s], sample_begin_[s + 1])
  IndexPermutation order_;
};

// Builds samples in construction order; EpochPlan then shuffles their order.
class SampleBuilder {
 public:
  void add(const Segment& segment) { segments_.push_back(segment); }
  void close_sample() { sample_begin_.push_back(static_cast<int64_t>(segments_.size())); }
  bool sample_open() const { return static_cast<int64_t>(segments_.size()) > sample_begin_.back(); }
  EpochPlan finish(const PlanOptions& options);

 private:
  std::vector<Segment> segments_;
  std::vector<int64_t> sample_begin_{0};
};

// Document order of an epoch (stream 0 of the seeded permutations).
IndexPermutation document_order(const TokenStore& store, const PlanOptions& options);

using PackFn = EpochPlan (*)(const TokenStore& store, const PlanOptions& options);

EpochPlan pack_concat(const TokenStore& store, const PlanOptions& options);
EpochPlan pack_best_fit(const TokenStore& store, const PlanOptions& options);

// "concat" or "best_fit"; anything else is a ValueError naming the choices.
PackFn packer(const std::string& name);

std::shared_ptr<const EpochPlan> build_epoch_plan(const TokenStore& store, const std::string& packing,
                                                  const PlanOptions& options);

}  // namespace pocketml::data
