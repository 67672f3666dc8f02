#include "backends/metal_backend.h"

#import <Metal/Metal.h>

namespace pocketml::metal {
namespace {

id<MTLDevice> default_device() {
  static id<MTLDevice> device = MTLCreateSystemDefaultDevice();
  return device;
}

}  // namespace

bool available() { return default_device() != nil; }

std::string device_name() {
  id<MTLDevice> device = default_device();
  return device != nil ? std::string([[device name] UTF8String]) : std::string();
}

}  // namespace pocketml::metal
