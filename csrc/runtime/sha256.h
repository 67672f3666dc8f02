#pragma once
// SHA-256 (FIPS 180-4), for the checksums in golden bundles and token shards:
// one implementation for Python, the C ABI and Swift, which has no hash library
// of its own on Linux.
#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

namespace pocketml {

class Sha256 {
 public:
  Sha256();
  void update(const void* data, size_t size);
  std::array<uint8_t, 32> finish();  // the object must not be updated afterwards

 private:
  void compress(const uint8_t* block);

  uint32_t state_[8];
  uint8_t buffer_[64];
  size_t buffered_ = 0;
  uint64_t total_bytes_ = 0;
};

std::string sha256_hex(const void* data, size_t size);

}  // namespace pocketml
