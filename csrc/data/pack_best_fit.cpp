// best_fit: the documents of each shuffle window (consecutive documents of the
// epoch's shuffled order) are placed, longest first, into the open sample with
// the least room that still holds them (best-fit decreasing), so few tokens are
// padded and no document that fits a sample is split. A document longer than
// seq_len (with its EOS, longer than a sample) gives whole samples of its first
// tokens; only its remainder is packed.
#include <algorithm>
#include <set>
#include <utility>

#include "data/epoch_plan.h"

namespace pocketml::data {

namespace {

// Enough documents that the bins fill well; few enough that the bins of one
// window (its memory) stay small and the shuffle stays local to a window.
constexpr int64_t kDefaultWindow = 8192;

struct Item {
  int64_t length;
  int64_t order;  // position in the window: ties keep the shuffled order, so the result is deterministic
  Segment segment;
};

void pack_window(std::vector<Item>& items, int64_t sample_tokens, SampleBuilder& samples) {
  std::sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return a.length != b.length ? a.length > b.length : a.order < b.order;
  });
  std::vector<std::vector<Segment>> bins;
  std::set<std::pair<int64_t, int64_t>> room;  // (free tokens, bin): the first entry >= length is the best fit
  for (const Item& item : items) {
    auto it = room.lower_bound({item.length, 0});
    int64_t bin;
    int64_t free_tokens;
    if (it == room.end()) {
      bin = static_cast<int64_t>(bins.size());
      bins.emplace_back();
      free_tokens = sample_tokens;
    } else {
      bin = it->second;
      free_tokens = it->first;
      room.erase(it);
    }
    bins[bin].push_back(item.segment);
    free_tokens -= item.length;
    if (free_tokens > 0) room.insert({free_tokens, bin});
  }
  for (const auto& bin : bins) {
    for (const Segment& s : bin) samples.add(s);
    samples.close_sample();
  }
  items.clear();
}

}  // namespace

EpochPlan pack_best_fit(const TokenStore& store, const PlanOptions& options) {
  const int64_t sample_tokens = options.seq_len + 1;
  const int64_t window = options.window > 0 ? options.window : kDefaultWindow;
  const IndexPermutation order = document_order(store, options);
  SampleBuilder samples;
  std::vector<Item> items;
  items.reserve(static_cast<size_t>(std::min(window, store.num_documents())));
  for (int64_t i = 0; i < store.num_documents(); ++i) {
    const auto d = static_cast<int64_t>(order(static_cast<uint64_t>(i)));
    const int64_t length = store.document_length(d) + 1;  // + EOS
    const int64_t whole = length / sample_tokens;
    for (int64_t k = 0; k < whole; ++k) {
      samples.add({d, k * sample_tokens, sample_tokens});
      samples.close_sample();
    }
    const int64_t rest = length - whole * sample_tokens;
    if (rest > 0) items.push_back({rest, i % window, {d, whole * sample_tokens, rest}});
    if ((i + 1) % window == 0) pack_window(items, sample_tokens, samples);
  }
  pack_window(items, sample_tokens, samples);
  return samples.finish(options);
}

}  // namespace pocketml::data
