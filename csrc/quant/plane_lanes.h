#pragma once
// Where each of a chunk's 32 codes sits inside a bit plane, as 32-bit word index
// and shift: the constants the SIMD decoders feed to a word permute and a
// per-lane variable shift, so one register's load yields 16 (or 8) codes.
#include <cstdint>

#include "quant/quant_format.h"

namespace pocketml {

struct PlaneLanes {
  alignas(64) int32_t word[4][kCodesPerChunk];   // [log2(plane width)][code]
  alignas(64) int32_t shift[4][kCodesPerChunk];
};

static constexpr PlaneLanes make_plane_lanes() {
  PlaneLanes lanes{};
  for (int slot = 0; slot < 4; ++slot) {
    const int width = 1 << slot;
    const int plane_bytes = 4 * width;
    for (int i = 0; i < kCodesPerChunk; ++i) {
      const int bit = 8 * (i % plane_bytes) + width * (i / plane_bytes);
      lanes.word[slot][i] = bit / 32;
      lanes.shift[slot][i] = bit % 32;
    }
  }
  return lanes;
}

static constexpr PlaneLanes kPlaneLanes = make_plane_lanes();

static inline int plane_slot(int width) { return width == 1 ? 0 : width == 2 ? 1 : width == 4 ? 2 : 3; }

}  // namespace pocketml
