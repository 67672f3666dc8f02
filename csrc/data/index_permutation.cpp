#include "data/index_permutation.h"

namespace pocketml::data {

namespace {

// splitmix64's finaliser: a fast 64-bit mixer with full avalanche, used both to
// derive round keys and as the Feistel round function.
uint64_t mix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

IndexPermutation::IndexPermutation(uint64_t n, uint64_t seed, uint64_t epoch, uint64_t stream, bool shuffle)
    : n_(n), shuffle_(shuffle && n > 1) {
  // A balanced Feistel network permutes 2 * half_bits bits; the smallest such
  // domain >= n is < 4n, so cycle-walking takes < 4 steps on average.
  while (half_bits_ < 32 && (uint64_t{1} << (2 * half_bits_)) < n_) ++half_bits_;
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
  uint64_t key = mix64(seed ^ mix64(epoch ^ mix64(stream)));
  for (uint64_t& k : round_keys_) k = key = mix64(key);
}

uint64_t IndexPermutation::feistel(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (uint64_t k : round_keys_) {
    const uint64_t next = left ^ (mix64(right ^ k) & half_mask_);
    left = right;
    right = next;
  }
  return (left << half_bits_) | right;
}

uint64_t IndexPermutation::operator()(uint64_t position) const {
  if (!shuffle_) return position;
  // Cycle-walking: a bijection of the larger domain, applied until the value
  // lands in [0, n), restricted to [0, n) is still a bijection.
  uint64_t x = feistel(position);
  while (x >= n_) x = feistel(x);
  return x;
}

}  // namespace pocketml::data
