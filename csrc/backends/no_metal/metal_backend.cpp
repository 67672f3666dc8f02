#include "backends/metal_backend.h"

namespace pocketml::metal {

bool available() { return false; }
std::string device_name() { return ""; }

}  // namespace pocketml::metal
