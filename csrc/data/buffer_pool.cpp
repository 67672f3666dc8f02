#include "data/buffer_pool.h"

namespace pocketml::data {

AlignedBuffer<int64_t> BufferPool::take(size_t count) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    for (size_t i = 0; i < kept_.size(); ++i) {
      if (kept_[i].size() == count) {
        AlignedBuffer<int64_t> out = std::move(kept_[i]);
        kept_[i] = std::move(kept_.back());
        kept_.pop_back();
        return out;
      }
    }
  }
  return AlignedBuffer<int64_t>(count);
}

void BufferPool::give(AlignedBuffer<int64_t>&& buffer) {
  if (buffer.size() == 0) return;
  AlignedBuffer<int64_t> released;  // freed outside the lock when not kept
  std::lock_guard<std::mutex> lock(mutex_);
  if (kept_.size() < max_kept_)
    kept_.push_back(std::move(buffer));
  else
    released = std::move(buffer);
}

}  // namespace pocketml::data
