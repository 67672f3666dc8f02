// Turns the runtime shape of a GEMM register tile (1..6 rows, 1..MaxVectors
// vectors of columns) into the matching instantiation `Tile<ROWS, NV>::run` of a
// SIMD file's tile kernel, e.g.
//   template <int ROWS, int NV> struct GemmTile { static constexpr auto run = gemm_tile<ROWS, NV>; };
//   const auto tile = pick_tile<GemmTile, kVectors>(rows, vectors);
//
// Included (once, inside `namespace pocketml::<isa> { namespace {`) by each
// attention_<isa>.cpp, so every instantiation is compiled with that file's ISA
// flags and keeps internal linkage. It includes nothing itself for that reason.

template <template <int, int> class Tile, int MaxVectors, int ROWS>
auto pick_tile_vectors(int nv) {
  if constexpr (MaxVectors >= 4) {
    if (nv >= 4) return Tile<ROWS, 4>::run;
    if (nv == 3) return Tile<ROWS, 3>::run;
  }
  return nv >= 2 ? Tile<ROWS, 2>::run : Tile<ROWS, 1>::run;
}

template <template <int, int> class Tile, int MaxVectors>
auto pick_tile(int rows, int nv) {
  switch (rows) {
    case 1: return pick_tile_vectors<Tile, MaxVectors, 1>(nv);
    case 2: return pick_tile_vectors<Tile, MaxVectors, 2>(nv);
    case 3: return pick_tile_vectors<Tile, MaxVectors, 3>(nv);
    case 4: return pick_tile_vectors<Tile, MaxVectors, 4>(nv);
    case 5: return pick_tile_vectors<Tile, MaxVectors, 5>(nv);
    default: return pick_tile_vectors<Tile, MaxVectors, 6>(nv);
  }
}
