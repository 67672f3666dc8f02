// Sums of the lanes of several AVX-512 vectors at once, by transposing trees of
// unpacks and adds: a decode block's 16 dot products, a GEMV's rows.
//
// Included (inside `namespace pocketml::avx512 { namespace {`) by the
// *_avx512.cpp files that use it, so it is compiled with their ISA flags and
// keeps internal linkage. It includes nothing itself for that reason.

// Per 128-bit lane: the sums of that lane's four elements of a, b, c and d, in
// that order. Each input's elements are added in the same order whatever its
// place, so a vector's sum does not depend on the vectors beside it.
inline __m512 sum_lanes_per_quarter(__m512 a, __m512 b, __m512 c, __m512 d) {
  // Per 128-bit lane: a0 + a2, b0 + b2, a1 + a3, b1 + b3 (and the same for c, d).
  const __m512d ab = _mm512_castps_pd(_mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b)));
  const __m512d cd = _mm512_castps_pd(_mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d)));
  return _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(ab, cd)), _mm512_castpd_ps(_mm512_unpackhi_pd(ab, cd)));
}

// The lane sums of a, b, c and d, in lanes 0 .. 3.
inline __m128 sum_lanes4(__m512 a, __m512 b, __m512 c, __m512 d) {
  const __m512 quarters = sum_lanes_per_quarter(a, b, c, d);
  const __m256 halves = _mm256_add_ps(_mm512_castps512_ps256(quarters), _mm512_extractf32x8_ps(quarters, 1));
  return _mm_add_ps(_mm256_castps256_ps128(halves), _mm256_extractf128_ps(halves, 1));
}

// Lane i of the result is the sum of the lanes of v[i]: 15 additions and 30
// shuffles finish 16 dot products, where a reduction of each would take 4
// dependent shuffle-add steps per dot product.
inline __m512 sum_lanes16(const __m512 (&v)[16]) {
  __m512 quads[4], halves[2];
#pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) quads[i] = sum_lanes_per_quarter(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
#pragma GCC unroll 2
  for (int i = 0; i < 2; ++i)  // 128-bit lanes: quads[2i] lanes 0+1, 2+3, quads[2i+1] lanes 0+1, 2+3
    halves[i] = _mm512_add_ps(_mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                              _mm512_shuffle_f32x4(quads[2 * i], quads[2 * i + 1], _MM_SHUFFLE(3, 1, 3, 1)));
  return _mm512_add_ps(_mm512_shuffle_f32x4(halves[0], halves[1], _MM_SHUFFLE(2, 0, 2, 0)),
                       _mm512_shuffle_f32x4(halves[0], halves[1], _MM_SHUFFLE(3, 1, 3, 1)));
}
