import CPocketML

/// Conversions between fp32, fp16 and bf16 with round-to-nearest-even, on the
/// same kernels Python uses. Half-precision values travel as their UInt16 bit
/// patterns, which every platform Swift runs on can hold.
public enum Convert {
    /// Converts `count` elements from `source` to `destination`; the buffers must not overlap.
    public static func raw(
        _ source: UnsafeRawPointer, _ sourceType: DType,
        into destination: UnsafeMutableRawPointer, _ destinationType: DType, count: Int
    ) throws {
        try check(pocketml_convert(source, sourceType.cValue, destination, destinationType.cValue, count))
    }

    public static func toHalfBits(_ values: [Float]) throws -> [UInt16] {
        try narrow(values, to: .fp16)
    }

    public static func toBFloat16Bits(_ values: [Float]) throws -> [UInt16] {
        try narrow(values, to: .bf16)
    }

    public static func floats(fromHalfBits bits: [UInt16]) throws -> [Float] {
        try widen(bits, from: .fp16)
    }

    public static func floats(fromBFloat16Bits bits: [UInt16]) throws -> [Float] {
        try widen(bits, from: .bf16)
    }

    private static func narrow(_ values: [Float], to type: DType) throws -> [UInt16] {
        var out = [UInt16](repeating: 0, count: values.count)
        try values.withUnsafeBytes { src in
            try out.withUnsafeMutableBytes { dst in
                guard let s = src.baseAddress, let d = dst.baseAddress else { return }
                try raw(s, .fp32, into: d, type, count: values.count)
            }
        }
        return out
    }

    private static func widen(_ bits: [UInt16], from type: DType) throws -> [Float] {
        var out = [Float](repeating: 0, count: bits.count)
        try bits.withUnsafeBytes { src in
            try out.withUnsafeMutableBytes { dst in
                guard let s = src.baseAddress, let d = dst.baseAddress else { return }
                try raw(s, type, into: d, .fp32, count: bits.count)
            }
        }
        return out
    }
}
