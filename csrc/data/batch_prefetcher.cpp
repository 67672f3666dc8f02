#include "data/batch_prefetcher.h"

#include <algorithm>
#include <chrono>
#include <limits>
#include <string>
#include <system_error>

#include <unistd.h>

#include "runtime/error.h"

namespace pocketml::data {

BatchPrefetcher::BatchPrefetcher(std::shared_ptr<const TokenStore> store, std::shared_ptr<const EpochPlan> plan,
                                 const BatchSchedule& schedule, int capacity, int num_threads)
    : store_(std::move(store)),
      plan_(std::move(plan)),
      schedule_(schedule),
      capacity_(capacity),
      // The batches in the window, one held by the caller and one being freed: no more is reused.
      pool_(std::make_shared<BufferPool>(3 * (static_cast<size_t>(std::max(capacity, 0)) + 2))) {
  validate_schedule(schedule_);
  // cu_seqlens is int32 (what varlen attention kernels take): it ends at batch_size * seq_len.
  if (schedule_.batch_size > std::numeric_limits<int32_t>::max() / plan_->seq_len())
    fail_argument(ErrorKind::InvalidArgument, "batch_size", "batch_size * seq_len < 2^31 tokens (int32 cu_seqlens)",
                  std::to_string(schedule_.batch_size) + " * " + std::to_string(plan_->seq_len()));
  if (capacity < 0)
    fail_argument(ErrorKind::InvalidArgument, "prefetch", "a non-negative batch count", std::to_string(capacity));
  if (capacity > 0 && num_threads < 1)
    fail_argument(ErrorKind::InvalidArgument, "num_threads", "a positive thread count", std::to_string(num_threads));
  if (capacity == 0) return;
  slots_.resize(static_cast<size_t>(capacity));
  errors_.resize(static_cast<size_t>(capacity));
  // More producers than window slots would only wait for room.
  const int producers = std::min(num_threads, capacity);
  threads_.reserve(static_cast<size_t>(producers));
  try {
    for (int t = 0; t < producers; ++t) threads_.emplace_back([this] { produce(); });
  } catch (const std::system_error& e) {  // out of threads or memory: stop the ones started, then report
    close();
    fail(ErrorKind::Runtime, "cannot start " + std::to_string(producers) + " prefetch threads (" +
                                 std::to_string(threads_.size()) + " started): " + e.what() +
                                 "; lower num_threads or prefetch");
  }
}

BatchPrefetcher::~BatchPrefetcher() { close(); }

void BatchPrefetcher::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  slot_free_.notify_all();
  batch_ready_.notify_all();
  {
    std::lock_guard<std::mutex> joining(close_mutex_);
    for (std::thread& t : threads_)
      if (t.joinable()) t.join();
  }
  std::lock_guard<std::mutex> lock(mutex_);
  for (auto& slot : slots_) slot.reset();  // memory of batches never taken goes back now
}

long DeleteUnlessForked::current_process_id() { return static_cast<long>(getpid()); }

void DeleteUnlessForked::operator()(BatchPrefetcher* prefetcher) const {
  if (current_process_id() == owner_pid) delete prefetcher;
}

int64_t BatchPrefetcher::consumed() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return consumed_;
}

void BatchPrefetcher::produce() {
  std::unique_lock<std::mutex> lock(mutex_);
  while (true) {
    // Batch j may be built once the consumer has taken batch j - capacity,
    // which bounds the memory held to `capacity` batches.
    slot_free_.wait(lock, [&] {
      return stopping_ || next_to_build_ >= schedule_.num_batches || next_to_build_ < consumed_ + capacity_;
    });
    if (stopping_ || next_to_build_ >= schedule_.num_batches) return;
    const int64_t j = next_to_build_++;
    lock.unlock();
    std::unique_ptr<Batch> batch;
    std::exception_ptr error;
    try {
      batch = build_batch(*store_, *plan_, schedule_, j, pool_);
    } catch (...) {
      error = std::current_exception();
    }
    lock.lock();
    const auto slot = static_cast<size_t>(j % capacity_);
    slots_[slot] = std::move(batch);
    errors_[slot] = error;
    batch_ready_.notify_one();  // the one consumer
  }
}

BatchPrefetcher::Status BatchPrefetcher::next(int timeout_ms, std::unique_ptr<Batch>& out) {
  if (capacity_ == 0) {  // one consumer builds; close() may come from another thread
    int64_t j;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stopping_ || consumed_ >= schedule_.num_batches) return Status::Exhausted;
      j = consumed_;
    }
    out = build_batch(*store_, *plan_, schedule_, j, pool_);
    std::lock_guard<std::mutex> lock(mutex_);
    ++consumed_;
    return Status::Ready;
  }
  std::unique_lock<std::mutex> lock(mutex_);
  if (stopping_ || consumed_ >= schedule_.num_batches) return Status::Exhausted;
  const auto slot = static_cast<size_t>(consumed_ % capacity_);
  const bool ready = batch_ready_.wait_for(lock, std::chrono::milliseconds(timeout_ms), [&] {
    return stopping_ || slots_[slot] != nullptr || errors_[slot] != nullptr;
  });
  if (!ready) return Status::Timeout;
  if (stopping_) return Status::Exhausted;
  if (errors_[slot]) std::rethrow_exception(errors_[slot]);  // stays: the schedule cannot go past it
  out = std::move(slots_[slot]);
  ++consumed_;
  // Producers asleep on a full window are woken once it is half empty, so they
  // build in bursts instead of paying a wake-up (a context switch) per batch.
  const bool refill = next_to_build_ - consumed_ <= capacity_ / 2;
  lock.unlock();
  if (refill) slot_free_.notify_all();
  return Status::Ready;
}

}  // namespace pocketml::data
