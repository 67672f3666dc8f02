#pragma once
// The Metal backend's entry points. On platforms without Metal the stub in
// no_metal/ is linked instead and reports that the backend is not available,
// so the core never needs an #ifdef to ask.
#include <string>

namespace pocketml::metal {

bool available();
std::string device_name();  // empty when not available

}  // namespace pocketml::metal
