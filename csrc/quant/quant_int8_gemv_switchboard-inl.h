// The entry of the fused int8-activation GEMV that every variant shares: the
// switches that turn the code width and the activation-row count into template
// arguments.
//
// Included (once, inside `namespace pocketml::<isa> { namespace {`) by each file
// with a gemv_int8 kernel after it has defined, for its instruction set:
//   template <int Bits, int M> void gemv_int8_rows(w, row_begin, row_end, xq, ldx, x_sums, lds, x_scale, m, y, ldy);
// so every instantiation gets that file's ISA flags and internal linkage. It
// includes nothing itself for the same reason.

template <int Bits>
void gemv_int8_bits(const PackedWeights& w, int64_t row_begin, int64_t row_end, const int8_t* xq, int64_t ldx,
                    const float* x_sums, int64_t lds, const float* x_scale, int m, float* y, int64_t ldy) {
  switch (gemv_padded_rows(m)) {
    case 1: gemv_int8_rows<Bits, 1>(w, row_begin, row_end, xq, ldx, x_sums, lds, x_scale, m, y, ldy); break;
    case 2: gemv_int8_rows<Bits, 2>(w, row_begin, row_end, xq, ldx, x_sums, lds, x_scale, m, y, ldy); break;
    case 4: gemv_int8_rows<Bits, 4>(w, row_begin, row_end, xq, ldx, x_sums, lds, x_scale, m, y, ldy); break;
    default: gemv_int8_rows<Bits, 8>(w, row_begin, row_end, xq, ldx, x_sums, lds, x_scale, m, y, ldy); break;
  }
}

// GemvInt8Fn for the codes int8_gemv_handles: 4 or 8 bits.
void gemv_int8_any(const PackedWeights& w, int64_t row_begin, int64_t row_end, const int8_t* xq, int64_t ldx,
                   const float* x_sums, int64_t lds, const float* x_scale, int m, float* y, int64_t ldy) {
  if (w.bits == 4) {
    gemv_int8_bits<4>(w, row_begin, row_end, xq, ldx, x_sums, lds, x_scale, m, y, ldy);
  } else {
    gemv_int8_bits<8>(w, row_begin, row_end, xq, ldx, x_sums, lds, x_scale, m, y, ldy);
  }
}
