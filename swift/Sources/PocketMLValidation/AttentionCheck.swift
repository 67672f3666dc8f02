import PocketML

extension Validator {
    /// op "attention": inputs [q [B, Hq, Lq, D], k, v [B, Hkv, Lk, D]] fp32; attrs scale,
    /// mode "forward" (attrs.mask: none, causal, causal_bottom_right) or "decode" (attrs.length:
    /// the cached positions of k, v to use, Lq <= 8 queries at their end); expected out [B, Hq, Lq, D].
    static func attention(_ check: GoldenCheck, _ bundle: GoldenBundle) throws -> GoldenTensor {
        let q = try check.input(0, in: bundle, dtypes: [.fp32])
        let k = try check.input(1, in: bundle, dtypes: [.fp32])
        let v = try check.input(2, in: bundle, dtypes: [.fp32], shape: k.shape)
        guard q.shape.count == 4, k.shape.count == 4, q.shape[0] == k.shape[0], q.shape[3] == k.shape[3] else {
            throw check.fail("q must be [B, Hq, Lq, D] and k, v [B, Hkv, Lk, D], got \(q.shape) and \(k.shape)")
        }
        let shape = Attention.Shape(
            batch: q.shape[0], queryHeads: q.shape[1], kvHeads: k.shape[1], queryLength: q.shape[2],
            kvLength: k.shape[2], headDim: q.shape[3])
        let scale = Float(try check.number("scale"))
        let out: [Float]
        switch try check.string("mode") {
        case "forward":
            guard let mask = Attention.Mask(rawValue: try check.string("mask")) else {
                throw check.fail("attrs.mask must be none, causal or causal_bottom_right")
            }
            out = try Attention.forward(q: try q.floats(), k: try k.floats(), v: try v.floats(), shape: shape,
                                        scale: scale, mask: mask)
        case "decode":
            out = try Attention.decode(q: try q.floats(), kCache: try k.floats(), vCache: try v.floats(), shape: shape,
                                       length: try check.int("length"), scale: scale)
        case let mode:
            throw check.fail("attrs.mode must be forward or decode, got \(mode)")
        }
        return GoldenTensor(floats: out, shape: q.shape)
    }
}
