// The entry points every SIMD variant of the quant kernels shares: switches that
// turn runtime bit widths, activation-row counts and tile sizes into template
// arguments of the variant's own kernels.
//
// Included (once, inside `namespace pocketml::<isa> { namespace {`) by each
// quant_<isa>.cpp after it has defined, for its instruction set:
//   template <int Bits> struct AffineValues; template <int Bits> struct LutValues;
//   template <class Values> void decode(w, row, chunk_begin, chunk_end, out);
//   template <class Values, int M> void gemv(w, row_begin, row_end, x, ldx, m, y, ldy);
//   template <int M, int N> void dot_block(x, ldx, w, ldw, k, c, ldc);
// so every instantiation is compiled with that file's ISA flags and keeps
// internal linkage. It includes nothing itself for the same reason.

template <template <int> class Values, int Bits>
void gemv_rows(const PackedWeights& w, int64_t row_begin, int64_t row_end, const float* x, int64_t ldx, int m, float* y,
               int64_t ldy) {
  switch (gemv_padded_rows(m)) {
    case 1: gemv<Values<Bits>, 1>(w, row_begin, row_end, x, ldx, m, y, ldy); break;
    case 2: gemv<Values<Bits>, 2>(w, row_begin, row_end, x, ldx, m, y, ldy); break;
    case 4: gemv<Values<Bits>, 4>(w, row_begin, row_end, x, ldx, m, y, ldy); break;
    default: gemv<Values<Bits>, 8>(w, row_begin, row_end, x, ldx, m, y, ldy); break;
  }
}

// Bits become a template argument here, so plane loops and masks are constants.
template <template <int> class Values>
struct ForFormat {
  static void decode_row(const PackedWeights& w, int64_t row, int64_t b, int64_t e, float* out) {
    switch (w.bits) {
      case 1: decode<Values<1>>(w, row, b, e, out); break;
      case 2: decode<Values<2>>(w, row, b, e, out); break;
      case 3: decode<Values<3>>(w, row, b, e, out); break;
      case 4: decode<Values<4>>(w, row, b, e, out); break;
      case 5: decode<Values<5>>(w, row, b, e, out); break;
      case 6: decode<Values<6>>(w, row, b, e, out); break;
      default: decode<Values<8>>(w, row, b, e, out); break;
    }
  }
  static void gemv(const PackedWeights& w, int64_t b, int64_t e, const float* x, int64_t ldx, int m, float* y,
                   int64_t ldy) {
    switch (w.bits) {
      case 1: gemv_rows<Values, 1>(w, b, e, x, ldx, m, y, ldy); break;
      case 2: gemv_rows<Values, 2>(w, b, e, x, ldx, m, y, ldy); break;
      case 3: gemv_rows<Values, 3>(w, b, e, x, ldx, m, y, ldy); break;
      case 4: gemv_rows<Values, 4>(w, b, e, x, ldx, m, y, ldy); break;
      case 5: gemv_rows<Values, 5>(w, b, e, x, ldx, m, y, ldy); break;
      case 6: gemv_rows<Values, 6>(w, b, e, x, ldx, m, y, ldy); break;
      default: gemv_rows<Values, 8>(w, b, e, x, ldx, m, y, ldy); break;
    }
  }
};

void decode_row(const PackedWeights& w, int64_t row, int64_t chunk_begin, int64_t chunk_end, float* out) {
  if (w.kind == QuantKind::lut) {
    ForFormat<LutValues>::decode_row(w, row, chunk_begin, chunk_end, out);
  } else {
    ForFormat<AffineValues>::decode_row(w, row, chunk_begin, chunk_end, out);
  }
}

void gemv_any(const PackedWeights& w, int64_t row_begin, int64_t row_end, const float* x, int64_t ldx, int m, float* y,
              int64_t ldy) {
  if (w.kind == QuantKind::lut) {
    ForFormat<LutValues>::gemv(w, row_begin, row_end, x, ldx, m, y, ldy);
  } else {
    ForFormat<AffineValues>::gemv(w, row_begin, row_end, x, ldx, m, y, ldy);
  }
}

template <int M>
void dot_rows(const float* x, int64_t ldx, const float* w, int64_t ldw, int n, int64_t k, float* c, int64_t ldc) {
  switch (n) {
    case 1: dot_block<M, 1>(x, ldx, w, ldw, k, c, ldc); break;
    case 2: dot_block<M, 2>(x, ldx, w, ldw, k, c, ldc); break;
    case 3: dot_block<M, 3>(x, ldx, w, ldw, k, c, ldc); break;
    default: dot_block<M, 4>(x, ldx, w, ldw, k, c, ldc); break;
  }
}

void dot_tile(const float* x, int64_t ldx, int m, const float* w, int64_t ldw, int n, int64_t k, float* c,
              int64_t ldc) {
  switch (m) {
    case 1: dot_rows<1>(x, ldx, w, ldw, n, k, c, ldc); break;
    case 2: dot_rows<2>(x, ldx, w, ldw, n, k, c, ldc); break;
    case 3: dot_rows<3>(x, ldx, w, ldw, n, k, c, ldc); break;
    default: dot_rows<4>(x, ldx, w, ldw, n, k, c, ldc); break;
  }
}
