import CPocketML

/// A quantized weight [rows, cols] in pocketml's packed layout (docs/formats.md,
/// "Quantized weights"), holding its arrays as raw little-endian bytes. The C ABI
/// validates every size and value; this type only carries them.
public struct QuantizedWeight {
    public enum Kind: String, Sendable {
        case affine, lut

        var cValue: pocketml_quant_kind { self == .affine ? POCKETML_QUANT_AFFINE : POCKETML_QUANT_LUT }
    }

    public let kind: Kind
    public let bits: Int
    public let rows: Int
    public let cols: Int
    /// Affine: input columns per scale. LUT: output rows per table.
    public let groupSize: Int
    public let packed: [UInt8]
    /// Affine: [rows, cols / groupSize] of `scaleType`.
    public let scales: [UInt8]?
    public let scaleType: DType
    /// Affine: [rows, cols / groupSize]; nil for symmetric weights.
    public let zeroPoints: [UInt8]?
    /// LUT: [rows / groupSize, 2^bits] of `lutType`.
    public let lut: [UInt8]?
    public let lutType: DType

    public init(
        kind: Kind, bits: Int, rows: Int, cols: Int, groupSize: Int, packed: [UInt8],
        scales: [UInt8]? = nil, scaleType: DType = .fp16, zeroPoints: [UInt8]? = nil,
        lut: [UInt8]? = nil, lutType: DType = .fp16
    ) {
        self.kind = kind
        self.bits = bits
        self.rows = rows
        self.cols = cols
        self.groupSize = groupSize
        self.packed = packed
        self.scales = scales
        self.scaleType = scaleType
        self.zeroPoints = zeroPoints
        self.lut = lut
        self.lutType = lutType
    }

    /// Throws unless every array holds the bytes its shape needs (the C ABI trusts
    /// buffer sizes, so a short array must be caught before the call) and the kind has
    /// only its own arrays. Values are the C ABI's to check: finite LUT entries, and
    /// scales whose every code decodes within fp32 (a padding code meets a zero
    /// activation: an infinite one would make the whole output NaN).
    public func validate() throws {
        guard rows >= 0, cols > 0, groupSize > 0 else {
            throw PocketMLError(kind: .invalidArgument,
                                message: "weight: expected rows >= 0, cols > 0, group_size > 0, got \(rows), \(cols), \(groupSize)")
        }
        guard let cBits = Int32(exactly: bits) else {
            throw PocketMLError(kind: .invalidArgument, message: "weight.bits: expected 1 to 8, got \(bits)")
        }
        var rowBytes: Int64 = 0
        try check(pocketml_quant_packed_row_bytes(Int64(cols), cBits, &rowBytes))
        func require(_ array: [UInt8]?, _ name: String, _ factors: [Int]) throws {
            guard let count = checkedProduct(factors) else {
                throw PocketMLError(kind: .invalidArgument,
                                    message: "weight.\(name): a size of \(factors.map(String.init).joined(separator: " x ")) bytes overflows")
            }
            guard let array else {
                throw PocketMLError(kind: .invalidArgument, message: "weight.\(name): expected \(count) bytes, got none")
            }
            guard array.count == count else {
                throw PocketMLError(kind: .invalidArgument,
                                    message: "weight.\(name): expected \(count) bytes, got \(array.count)")
            }
        }
        try require(packed, "packed", [rows, Int(rowBytes)])
        switch kind {
        case .affine:
            guard cols % groupSize == 0 else {
                throw PocketMLError(kind: .invalidArgument,
                                    message: "weight.group_size: expected a divisor of cols = \(cols), got \(groupSize)")
            }
            guard lut == nil else {
                throw PocketMLError(kind: .invalidArgument, message: "weight.lut: expected none for an affine weight")
            }
            try require(scales, "scales", [rows, cols / groupSize, scaleType.size])
            if zeroPoints != nil { try require(zeroPoints, "zero_points", [rows, cols / groupSize]) }
        case .lut:
            guard scales == nil, zeroPoints == nil else {
                throw PocketMLError(kind: .invalidArgument,
                                    message: "weight.scales: expected no scales or zero points for a LUT weight")
            }
            guard rows % groupSize == 0, (1...8).contains(bits) else {
                throw PocketMLError(kind: .invalidArgument,
                                    message: "weight: expected group_size dividing rows = \(rows) and bits 1...8, "
                                        + "got \(groupSize), \(bits)")
            }
            try require(lut, "lut", [rows / groupSize, 1 << bits, lutType.size])
        }
    }

    /// Calls `body` with the C description of this weight (sizes checked first);
    /// its pointers live for the call only.
    public func withCWeight<R>(_ body: (UnsafePointer<pocketml_quantized_weight>) throws -> R) throws -> R {
        try validate()
        return try packed.withUnsafeBytes { packedBytes in
            try withOptionalBytes(scales) { scalesPointer in
                try withOptionalBytes(zeroPoints) { zeroPointer in
                    try withOptionalBytes(lut) { lutPointer in
                        var weight = pocketml_quantized_weight(
                            kind: kind.cValue, bits: Int32(bits), rows: Int64(rows), cols: Int64(cols),
                            group_size: Int64(groupSize),
                            packed: packedBytes.baseAddress?.assumingMemoryBound(to: UInt8.self),
                            scales: scalesPointer, scale_dtype: scaleType.cValue,
                            zero_points: zeroPointer?.assumingMemoryBound(to: UInt8.self),
                            lut: lutPointer, lut_dtype: lutType.cValue)
                        return try body(&weight)
                    }
                }
            }
        }
    }

    /// out [m, rows] = x [m, cols] @ W^T in fp32 (the kernels of pocketml.quant.matmul).
    public func matmul(_ x: [Float], rows m: Int) throws -> [Float] {
        guard let count = checkedProduct([m, cols]), x.count == count else {
            throw PocketMLError(kind: .invalidArgument,
                                message: "argument 'x': expected \(m) x \(cols) values, got \(x.count)")
        }
        return try matmul(raw: x.withUnsafeBytes { [UInt8]($0) }, .fp32, rows: m)
    }

    /// The same from raw little-endian bytes of `type` (fp32, fp16 or bf16).
    public func matmul(raw x: [UInt8], _ type: DType, rows m: Int) throws -> [Float] {
        try withCWeight { weight in  // which checks the weight's sizes first: rows and cols are trusted here
            guard [.fp32, .fp16, .bf16].contains(type), let bytes = checkedProduct([m, cols, type.size]),
                  x.count == bytes
            else {
                throw PocketMLError(kind: .invalidArgument,
                                    message: "argument 'x': expected \(m) x \(cols) fp32/fp16/bf16 values, "
                                        + "got \(x.count) bytes of \(type.rawValue)")
            }
            guard let outCount = checkedProduct([m, rows]) else {
                throw PocketMLError(kind: .invalidArgument, message: "argument 'rows': \(m) x \(rows) outputs overflow")
            }
            var out = [Float](repeating: 0, count: outCount)
            try x.withUnsafeBytes { xBytes in
                try out.withUnsafeMutableBytes { outBytes in
                    try check(pocketml_quant_matmul(
                        xBytes.baseAddress, type.cValue, Int64(m), weight, outBytes.baseAddress, POCKETML_FP32))
                }
            }
            return out
        }
    }

    /// The weight [rows, cols] as the kernels see it, in fp32.
    public func dequantize() throws -> [Float] {
        try withCWeight { weight in
            guard let count = checkedProduct([rows, cols]) else {
                throw PocketMLError(kind: .invalidArgument, message: "weight: \(rows) x \(cols) values overflow")
            }
            var out = [Float](repeating: 0, count: count)
            try out.withUnsafeMutableBytes { outBytes in
                try check(pocketml_quant_dequantize(weight, outBytes.baseAddress, POCKETML_FP32))
            }
            return out
        }
    }
}

/// Calls `body` with the array's base address, or nil when there is no array.
func withOptionalBytes<R>(_ bytes: [UInt8]?, _ body: (UnsafeRawPointer?) throws -> R) rethrows -> R {
    guard let bytes else { return try body(nil) }
    return try bytes.withUnsafeBytes { try body($0.baseAddress) }
}
