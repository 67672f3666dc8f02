#pragma once
#include <pybind11/pybind11.h>

namespace pocketml::bindings {

void register_tensor_args(pybind11::module_& m);
void register_runtime(pybind11::module_& m);
void register_convert(pybind11::module_& m);
void register_quant(pybind11::module_& m);
void register_data(pybind11::module_& m);
void register_attention(pybind11::module_& m);
void register_models(pybind11::module_& m);

}  // namespace pocketml::bindings
