#pragma once
// Builds a schedule's batches ahead of the consumer on its own threads, into a
// bounded window of `capacity` batches, and hands them over in order. Batch j
// depends only on (plan, schedule, j), so the thread count never changes what
// is produced. Destruction stops and joins the threads whatever state they are
// in; batches not taken are freed with the prefetcher.
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "data/batch.h"

namespace pocketml::data {

class BatchPrefetcher {
 public:
  // capacity 0 builds each batch in next() on the calling thread.
  BatchPrefetcher(std::shared_ptr<const TokenStore> store, std::shared_ptr<const EpochPlan> plan,
                  const BatchSchedule& schedule, int capacity, int num_threads);
  ~BatchPrefetcher();
  BatchPrefetcher(const BatchPrefetcher&) = delete;
  BatchPrefetcher& operator=(const BatchPrefetcher&) = delete;

  enum class Status { Ready, Exhausted, Timeout };
  // Waits at most timeout_ms for the next batch (so a caller can check for
  // interrupts between waits). Rethrows the exception a producer hit on it.
  Status next(int timeout_ms, std::unique_ptr<Batch>& out);

  int64_t num_batches() const { return schedule_.num_batches; }
  int64_t consumed() const;
  int num_threads() const { return static_cast<int>(threads_.size()); }

  // Stops and joins the producers; next() then reports Exhausted. Safe to call
  // from several threads at once (the first joins, the others wait for it).
  void close();

 private:
  void produce();

  std::shared_ptr<const TokenStore> store_;
  std::shared_ptr<const EpochPlan> plan_;
  BatchSchedule schedule_;
  int capacity_;
  std::shared_ptr<BufferPool> pool_;

  mutable std::mutex mutex_;
  std::mutex close_mutex_;  // one joiner: two threads joining one std::thread is undefined
  std::condition_variable slot_free_, batch_ready_;
  std::vector<std::unique_ptr<Batch>> slots_;  // batch j lives in slots_[j % capacity_]
  std::vector<std::exception_ptr> errors_;
  int64_t next_to_build_ = 0, consumed_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> threads_;
};

// The deleter of a prefetcher held by Python: in a process forked from the one
// that made it, the prefetcher is left allocated, never destroyed. Its producer
// threads stayed in the parent: joining them hangs or throws (ESRCH, then
// std::terminate), its mutex may have been copied locked and its condition
// variables with waiters that no longer exist, whose destruction waits for them.
struct DeleteUnlessForked {
  long owner_pid = current_process_id();
  void operator()(BatchPrefetcher* prefetcher) const;
  static long current_process_id();
};

}  // namespace pocketml::data
