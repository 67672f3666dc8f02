#pragma once
// A seeded bijection of [0, n): position -> index, computed in O(1) memory.
// Shuffling an epoch's documents or samples this way needs no permutation
// array, and any position can be looked up on its own, so the order is a pure
// function of (n, seed, epoch, stream) whatever the thread count.
#include <cstdint>

namespace pocketml::data {

class IndexPermutation {
 public:
  // stream separates independent permutations drawn from the same seed and epoch
  // (documents vs samples). shuffle == false gives the identity.
  IndexPermutation(uint64_t n, uint64_t seed, uint64_t epoch, uint64_t stream, bool shuffle);

  uint64_t size() const { return n_; }
  uint64_t operator()(uint64_t position) const;

 private:
  uint64_t feistel(uint64_t x) const;

  uint64_t n_;
  bool shuffle_;
  int half_bits_ = 1;
  uint64_t half_mask_ = 1;
  uint64_t round_keys_[4] = {};
};

}  // namespace pocketml::data
