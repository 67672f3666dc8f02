#include "data/epoch_plan.h"

#include "runtime/error.h"

namespace pocketml::data {

namespace {
// Streams of the seeded permutations: one for documents, one for samples.
constexpr uint64_t kDocumentStream = 0;
constexpr uint64_t kSampleStream = 1;
}  // namespace

EpochPlan::EpochPlan(int64_t seq_len, std::vector<Segment> segments, std::vector<int64_t> sample_begin,
                     const PlanOptions& options)
    : seq_len_(seq_len),
      segments_(std::move(segments)),
      sample_begin_(std::move(sample_begin)),
      order_(static_cast<uint64_t>(sample_begin_.size() - 1), options.seed, options.epoch, kSampleStream,
             options.shuffle) {}

EpochPlan SampleBuilder::finish(const PlanOptions& options) {
  if (sample_open()) close_sample();
  segments_.shrink_to_fit();
  return EpochPlan(options.seq_len, std::move(segments_), std::move(sample_begin_), options);
}

IndexPermutation document_order(const TokenStore& store, const PlanOptions& options) {
  return IndexPermutation(static_cast<uint64_t>(store.num_documents()), options.seed, options.epoch, kDocumentStream,
                          options.shuffle);
}

PackFn packer(const std::string& name) {
  if (name == "concat") return pack_concat;
  if (name == "best_fit") return pack_best_fit;
  fail_argument(ErrorKind::InvalidArgument, "packing", "'concat' or 'best_fit'", "'" + name + "'");
}

std::shared_ptr<const EpochPlan> build_epoch_plan(const TokenStore& store, const std::string& packing,
                                                  const PlanOptions& options) {
  const PackFn pack = packer(packing);
  if (options.seq_len < 1)
    fail_argument(ErrorKind::InvalidArgument, "seq_len", "a positive length", std::to_string(options.seq_len));
  if (options.window < 0)
    fail_argument(ErrorKind::InvalidArgument, "window", "a non-negative document count",
                  std::to_string(options.window));
  return std::make_shared<const EpochPlan>(pack(store, options));
}

}  // namespace pocketml::data
