// Bindings of the data core: the token store, epoch plans and the batch
// prefetcher. Batches reach Python as NumPy arrays that own the native buffers
// (no copy); waiting for a batch releases the GIL and wakes up regularly to
// let KeyboardInterrupt through.
#include <pybind11/numpy.h>
#include <pybind11/stl.h>

#include "bindings/register.h"
#include "bindings/released_gil.h"
#include "data/batch_prefetcher.h"
#include "data/epoch_plan.h"
#include "data/token_store.h"
#include "runtime/error.h"

namespace py = pybind11;

namespace pocketml::bindings {

namespace {

using data::Batch;
using data::BatchPrefetcher;
using data::BatchSchedule;
using data::EpochPlan;
using data::TokenStore;

// A read-only NumPy view of `count` elements at `ptr`, keeping `owner` alive.
template <class T>
py::array readonly_view(const T* ptr, int64_t count, py::handle owner) {
  py::array_t<T> arr({count}, {static_cast<int64_t>(sizeof(T))}, ptr, owner);
  py::detail::array_proxy(arr.ptr())->flags &= ~py::detail::npy_api::NPY_ARRAY_WRITEABLE_;
  return std::move(arr);
}

// Hands a native batch to Python: one capsule owns it, every array refers to it.
py::dict batch_to_arrays(std::unique_ptr<Batch> batch) {
  Batch* raw = batch.release();
  py::capsule owner(raw, [](void* p) { delete static_cast<Batch*>(p); });
  const std::vector<int64_t> shape{raw->batch_size, raw->seq_len};
  auto matrix = [&](AlignedBuffer<int64_t>& v) { return py::array_t<int64_t>(shape, v.data(), owner); };
  py::dict out;
  out["input_ids"] = matrix(raw->input_ids);
  out["labels"] = matrix(raw->labels);
  out["position_ids"] = matrix(raw->position_ids);
  out["cu_seqlens"] = py::array_t<int32_t>({static_cast<int64_t>(raw->cu_seqlens.size())}, raw->cu_seqlens.data(), owner);
  out["sample_ids"] = py::array_t<int64_t>({raw->batch_size}, raw->sample_ids.data(), owner);
  return out;
}

}  // namespace

void register_data(py::module_& m) {
  py::class_<data::ShardFiles>(m, "ShardFiles")
      .def(py::init([](std::string tokens_path, std::string index_path, int64_t num_documents, int64_t num_tokens) {
             return data::ShardFiles{std::move(tokens_path), std::move(index_path), num_documents, num_tokens};
           }),
           py::arg("tokens_path"), py::arg("index_path"), py::arg("num_documents"), py::arg("num_tokens"));

  py::class_<TokenStore, std::shared_ptr<TokenStore>>(m, "TokenStore",
                                                      "Memory-mapped token shards, structure checked on open.")
      .def(py::init([](const std::vector<data::ShardFiles>& shards, int token_bytes, int64_t eos_id) {
             ReleasedGil release;
             return std::make_shared<TokenStore>(shards, token_bytes, eos_id);
           }),
           py::arg("shards"), py::arg("token_bytes"), py::arg("eos_id"))
      .def_property_readonly("num_documents", &TokenStore::num_documents)
      .def_property_readonly("num_tokens", &TokenStore::num_tokens)
      .def_property_readonly("num_shards", &TokenStore::num_shards)
      .def("shard_tokens", [](py::object self, int64_t shard) {
             const auto& store = self.cast<const TokenStore&>();
             if (shard < 0 || shard >= store.num_shards())
               fail_argument(ErrorKind::InvalidArgument, "shard", "a shard in [0, " +
                             std::to_string(store.num_shards()) + ")", std::to_string(shard));
             const void* p = store.shard_tokens(shard);
             const int64_t n = store.shard_num_tokens(shard);
             if (store.token_bytes() == 2) return readonly_view(static_cast<const uint16_t*>(p), n, self);
             return readonly_view(static_cast<const uint32_t*>(p), n, self);
           }, py::arg("shard"), "The shard's tokens: a read-only array over the mapping.")
      .def("shard_offsets", [](py::object self, int64_t shard) {
             const auto& store = self.cast<const TokenStore&>();
             if (shard < 0 || shard >= store.num_shards())
               fail_argument(ErrorKind::InvalidArgument, "shard", "a shard in [0, " +
                             std::to_string(store.num_shards()) + ")", std::to_string(shard));
             return readonly_view(store.shard_offsets(shard), store.shard_num_documents(shard) + 1, self);
           }, py::arg("shard"), "The shard's document offsets (num_documents + 1 of them).");

  py::class_<EpochPlan, std::shared_ptr<EpochPlan>>(m, "EpochPlan", "An epoch's samples, in shuffled order.")
      .def(py::init([](const std::shared_ptr<TokenStore>& store, const std::string& packing, int64_t seq_len,
                       uint64_t seed, uint64_t epoch, bool shuffle, int64_t window) {
             data::PlanOptions options{seq_len, seed, epoch, shuffle, window};
             ReleasedGil release;
             return std::const_pointer_cast<EpochPlan>(data::build_epoch_plan(*store, packing, options));
           }),
           py::arg("store"), py::arg("packing"), py::arg("seq_len"), py::arg("seed"), py::arg("epoch"),
           py::arg("shuffle"), py::arg("window") = 0)
      .def_property_readonly("num_samples", &EpochPlan::num_samples)
      .def_property_readonly("seq_len", &EpochPlan::seq_len)
      .def("segments", [](const EpochPlan& plan, int64_t sample) {
             if (sample < 0 || sample >= plan.num_samples())
               fail_argument(ErrorKind::InvalidArgument, "sample", "a sample in [0, " +
                             std::to_string(plan.num_samples()) + ")", std::to_string(sample));
             std::vector<std::tuple<int64_t, int64_t, int64_t>> out;
             for (auto* s = plan.segments_begin(sample); s != plan.segments_end(sample); ++s)
               out.emplace_back(s->document, s->offset, s->length);
             return out;
           }, py::arg("sample"), "The sample's (document, offset, length) segments; offset == length is the EOS.")
      .def("sample_at", [](const EpochPlan& plan, int64_t position) {
             if (position < 0 || position >= plan.num_samples())
               fail_argument(ErrorKind::InvalidArgument, "position", "a position in [0, " +
                             std::to_string(plan.num_samples()) + ")", std::to_string(position));
             return plan.sample_at(position);
           }, py::arg("position"));

  m.def("live_batches", &data::live_batches, "Native batches currently allocated (built and not yet freed).");

  py::class_<BatchPrefetcher, std::unique_ptr<BatchPrefetcher, data::DeleteUnlessForked>>(
      m, "BatchPrefetcher", "Builds a schedule's batches on native threads.")
      .def(py::init([](std::shared_ptr<TokenStore> store, std::shared_ptr<EpochPlan> plan, int64_t first_step,
                       int64_t step_stride, int64_t num_batches, int64_t global_batch, int64_t row_offset,
                       int64_t batch_size, int capacity, int num_threads, int64_t origin) {
             const BatchSchedule schedule{origin, first_step, step_stride, num_batches, global_batch, row_offset,
                                          batch_size};
             return std::unique_ptr<BatchPrefetcher, data::DeleteUnlessForked>(
                 new BatchPrefetcher(std::move(store), std::move(plan), schedule, capacity, num_threads));
           }),
           py::arg("store"), py::arg("plan"), py::arg("first_step"), py::arg("step_stride"), py::arg("num_batches"),
           py::arg("global_batch"), py::arg("row_offset"), py::arg("batch_size"), py::arg("capacity"),
           py::arg("num_threads"), py::arg("origin") = 0)
      .def("next", [](BatchPrefetcher& self) -> py::object {
             std::unique_ptr<Batch> batch;
             while (true) {
               BatchPrefetcher::Status status;
               {
                 ReleasedGil release;
                 status = self.next(50, batch);
               }
               if (status == BatchPrefetcher::Status::Ready) return batch_to_arrays(std::move(batch));
               if (status == BatchPrefetcher::Status::Exhausted) return py::none();
               if (PyErr_CheckSignals() != 0) throw py::error_already_set();  // KeyboardInterrupt while waiting
             }
           }, "The next batch as a dict of NumPy arrays, or None after the last.")
      .def("close", [](BatchPrefetcher& self) {
             ReleasedGil release;
             self.close();
           }, "Stops and joins the producer threads and frees batches not taken.")
      .def_property_readonly("num_threads", &BatchPrefetcher::num_threads)
      .def_property_readonly("num_batches", &BatchPrefetcher::num_batches)
      .def_property_readonly("consumed", &BatchPrefetcher::consumed);
}

}  // namespace pocketml::bindings
