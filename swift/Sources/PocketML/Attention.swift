import CPocketML

/// Fused attention through the C ABI on fp32 arrays in torch's layout:
/// q [batch, queryHeads, queryLength, headDim], k and v [batch, kvHeads, kvLength, headDim].
/// queryHeads is a multiple of kvHeads (grouped-query attention).
public enum Attention {
    public struct Shape: Equatable {
        public var batch, queryHeads, kvHeads, queryLength, kvLength, headDim: Int

        public init(batch: Int, queryHeads: Int, kvHeads: Int, queryLength: Int, kvLength: Int, headDim: Int) {
            self.batch = batch
            self.queryHeads = queryHeads
            self.kvHeads = kvHeads
            self.queryLength = queryLength
            self.kvLength = kvLength
            self.headDim = headDim
        }

        /// nil when the element count overflows Int.
        var queryCount: Int? { checkedProduct([batch, queryHeads, queryLength, headDim]) }
        var kvCount: Int? { checkedProduct([batch, kvHeads, kvLength, headDim]) }
        var cValue: pocketml_attention_shape {
            pocketml_attention_shape(
                batch: Int64(batch), query_heads: Int64(queryHeads), kv_heads: Int64(kvHeads),
                query_len: Int64(queryLength), kv_len: Int64(kvLength), head_dim: Int64(headDim))
        }
    }

    public enum Mask: String {
        /// No mask.
        case none
        /// Query i sees keys j <= i (torch's is_causal).
        case causal
        /// Query i sees keys j <= i + kvLength - queryLength (queries at the end of a KV cache).
        case causalBottomRight = "causal_bottom_right"

        var cValue: pocketml_attention_mask {
            switch self {
            case .none: return POCKETML_MASK_NONE
            case .causal: return POCKETML_MASK_CAUSAL
            case .causalBottomRight: return POCKETML_MASK_CAUSAL_BOTTOM_RIGHT
            }
        }
    }

    /// softmax(scale * q k^T + mask) v, [batch, queryHeads, queryLength, headDim].
    public static func forward(q: [Float], k: [Float], v: [Float], shape: Shape, scale: Float, mask: Mask = .none)
        throws -> [Float]
    {
        let queryCount = try requireCounts(q: q, k: k, v: v, shape: shape)
        var out = [Float](repeating: 0, count: queryCount)
        var cShape = shape.cValue
        try q.withUnsafeBytes { qb in
            try k.withUnsafeBytes { kb in
                try v.withUnsafeBytes { vb in
                    try out.withUnsafeMutableBytes { ob in
                        try check(pocketml_attention_forward(
                            qb.baseAddress, kb.baseAddress, vb.baseAddress, POCKETML_FP32, &cShape, scale,
                            mask.cValue, ob.baseAddress))
                    }
                }
            }
        }
        return out
    }

    /// q (queryLength <= 8) against the first `length` positions of a KV cache
    /// [batch, kvHeads, shape.kvLength (capacity), headDim]; the queries are the last
    /// queryLength of those positions.
    public static func decode(q: [Float], kCache: [Float], vCache: [Float], shape: Shape, length: Int, scale: Float)
        throws -> [Float]
    {
        let queryCount = try requireCounts(q: q, k: kCache, v: vCache, shape: shape)
        var out = [Float](repeating: 0, count: queryCount)
        var cShape = shape.cValue
        try q.withUnsafeBytes { qb in
            try kCache.withUnsafeBytes { kb in
                try vCache.withUnsafeBytes { vb in
                    try out.withUnsafeMutableBytes { ob in
                        try check(pocketml_attention_decode(
                            qb.baseAddress, kb.baseAddress, vb.baseAddress, POCKETML_FP32, &cShape, Int64(length),
                            scale, ob.baseAddress))
                    }
                }
            }
        }
        return out
    }

    /// The query element count, once every array holds the values its shape needs.
    private static func requireCounts(q: [Float], k: [Float], v: [Float], shape: Shape) throws -> Int {
        guard [shape.batch, shape.queryHeads, shape.kvHeads, shape.queryLength, shape.kvLength, shape.headDim]
            .allSatisfy({ $0 > 0 })
        else { throw PocketMLError(kind: .invalidArgument, message: "argument 'shape': expected positive sizes, got \(shape)") }
        guard let queryCount = shape.queryCount, let kvCount = shape.kvCount else {
            throw PocketMLError(kind: .invalidArgument, message: "argument 'shape': sizes whose product overflows, got \(shape)")
        }
        for (name, array, count) in [("q", q, queryCount), ("k", k, kvCount), ("v", v, kvCount)]
        where array.count != count {
            throw PocketMLError(kind: .invalidArgument,
                                message: "argument '\(name)': expected \(count) values for \(shape), got \(array.count)")
        }
        return queryCount
    }
}
