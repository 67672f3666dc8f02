#include <pybind11/stl.h>

#include "bindings/register.h"
#include "bindings/released_gil.h"
#include "runtime/build_info.h"
#include "runtime/cpu_features.h"
#include "runtime/machine_probe.h"
#include "runtime/thread_pool.h"

namespace py = pybind11;

namespace pocketml::bindings {

void register_runtime(py::module_& m) {
  m.def("build_info", [] {
    const BuildInfo info = build_info();
    py::dict d;
    d["version"] = info.version;
    d["build_type"] = info.build_type;
    d["compiler"] = info.compiler;
    d["architecture"] = info.architecture;
    d["compiled_isas"] = info.compiled_isas;
    d["supported_isas"] = info.supported_isas;
    d["active_isa"] = info.active_isa;
    d["cpu_features"] = info.cpu_features;
    d["num_threads"] = info.num_threads;
    d["metal_available"] = info.metal_available;
    d["metal_device"] = info.metal_device;
    return d;
  });
  m.def("active_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("set_active_isa", [](const std::string& name) { set_active_isa(parse_isa(name)); }, py::arg("isa"));
  m.def("supported_isas", [] {
    std::vector<std::string> names;
    for (Isa isa : supported_isas()) names.emplace_back(isa_name(isa));
    return names;
  });
  m.def("set_num_threads", [](int n) {
    ReleasedGil release;
    ThreadPool::global().set_num_threads(n);
  }, py::arg("num_threads"));
  m.def("get_num_threads", [] { return ThreadPool::global().num_threads(); });
  m.attr("max_threads") = ThreadPool::kMaxThreads;
  m.def("use_openmp_threads", [](const std::string& library) {
    ReleasedGil release;  // waits for a running job
    return ThreadPool::global().use_openmp_threads(library);
  }, py::arg("library"));
  m.def("use_own_threads", [] {
    ReleasedGil release;
    ThreadPool::global().use_own_threads();
  });
  m.def("on_openmp_threads", [] {
    ReleasedGil release;  // waits for a running job
    return ThreadPool::global().on_openmp_threads();
  });
  py::class_<ThreadPool::KeepWarm>(m, "KeepWarm").def(py::init<>());
  m.def("warm_scopes", [] { return ThreadPool::global().warm_scopes(); });
  m.def("measure_machine", [](int64_t buffer_bytes, int repeats) {
    MachineMeasurement result;
    {
      ReleasedGil release;
      result = measure_machine(buffer_bytes, repeats);
    }
    py::dict d;
    d["read_gbps"] = result.read_gbps;
    d["peak_fp32_gflops"] = result.peak_gflops;
    d["threads"] = result.threads;
    d["isa"] = result.isa;
    return d;
  }, py::arg("buffer_bytes") = int64_t(1) << 30, py::arg("repeats") = 5,
     "Streaming read bandwidth (the best of plain and prefetched reads) and peak fp32 FMA rate on all "
     "pool threads (for benchmarks).");
}

}  // namespace pocketml::bindings
