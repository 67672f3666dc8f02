#pragma once
// The core's views of a pocketml_quantized_weight that came through the C ABI;
// errors name the fields under `arg` (e.g. "layers[0].q_proj.scales").
#include <string>

#include "pocketml/pocketml.h"
#include "quant/quant.h"

namespace pocketml::capi {

QuantizedViews quantized_views(const pocketml_quantized_weight* weight, const std::string& arg);

}  // namespace pocketml::capi
