// concat: documents in shuffled order, each followed by its EOS, form one token
// stream cut into consecutive samples of seq_len + 1 tokens. Nothing is padded
// except the stream's last, shorter sample.
#include "data/epoch_plan.h"

namespace pocketml::data {

EpochPlan pack_concat(const TokenStore& store, const PlanOptions& options) {
  const int64_t sample_tokens = options.seq_len + 1;
  const IndexPermutation order = document_order(store, options);
  SampleBuilder samples;
  int64_t filled = 0;
  for (int64_t i = 0; i < store.num_documents(); ++i) {
    const auto d = static_cast<int64_t>(order(static_cast<uint64_t>(i)));
    const int64_t length = store.document_length(d) + 1;  // + EOS
    for (int64_t offset = 0; offset < length;) {
      const int64_t take = std::min(length - offset, sample_tokens - filled);
      samples.add({d, offset, take});
      offset += take;
      filled += take;
      if (filled == sample_tokens) {
        samples.close_sample();
        filled = 0;
      }
    }
  }
  return samples.finish(options);
}

}  // namespace pocketml::data
