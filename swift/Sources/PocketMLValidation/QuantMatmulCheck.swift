import PocketML

extension Validator {
    /// op "quant_matmul": inputs [x [m, k], then the weight's arrays named by attrs.arrays];
    /// attrs kind, bits, group_size, n, k; expected y [m, n] = x @ dequantize(W)^T.
    static func quantMatmul(_ check: GoldenCheck, _ bundle: GoldenBundle) throws -> GoldenTensor {
        let weight = try check.quantizedWeight(first: 1, arrays: try check.strings("arrays"), in: bundle)
        let x = try check.input(0, in: bundle, dtypes: [.fp32, .fp16, .bf16])
        guard x.shape.count == 2, x.shape[1] == weight.cols else {
            throw check.fail("input '\(check.inputs[0])' must be [m, \(weight.cols)], got \(x.shape)")
        }
        let y = try weight.matmul(raw: x.bytes, x.dtype, rows: x.shape[0])
        return GoldenTensor(floats: y, shape: [x.shape[0], weight.rows])
    }
}

extension GoldenTensor {
    /// An fp32 tensor from values computed here.
    init(floats: [Float], shape: [Int]) {
        self.init(dtype: .fp32, shape: shape, bytes: floats.withUnsafeBytes { [UInt8]($0) })
    }
}
