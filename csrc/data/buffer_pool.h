#pragma once
// Recycles batch buffers between the consumer, which frees a batch when Python
// lets go of it, and the producer threads, which need the same sizes again.
// Fresh large allocations come from mmap (or a thread arena that trims itself)
// and pay a page fault per 4 KiB on first touch: more than building the batch.
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "runtime/aligned_buffer.h"

namespace pocketml::data {

class BufferPool {
 public:
  explicit BufferPool(size_t max_kept) : max_kept_(max_kept) {}

  // A buffer of `count` elements: a returned one when one fits, else a new one.
  AlignedBuffer<int64_t> take(size_t count);
  // Keeps the buffer for reuse, or frees it when max_kept are already kept.
  void give(AlignedBuffer<int64_t>&& buffer);

 private:
  std::mutex mutex_;
  std::vector<AlignedBuffer<int64_t>> kept_;
  size_t max_kept_;
};

}  // namespace pocketml::data
