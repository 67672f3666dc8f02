import CPocketML

/// A Llama-style decoder running on pocketml's kernels (C ABI pocketml_decoder_*):
/// RMSNorm, RoPE (Hugging Face rotate-half), GQA attention with a KV cache,
/// SwiGLU MLP and a tied LM head, every projection a quantized weight.
/// The decoder copies its weights; it is not safe to use from two threads at once.
public final class TransformerDecoder {
    public struct Config: Equatable {
        public var vocabSize, hiddenSize, intermediateSize, numLayers: Int
        public var numHeads, numKVHeads, headDim, maxSequenceLength: Int
        public var rmsNormEps: Float
        public var ropeTheta: Float

        public init(
            vocabSize: Int, hiddenSize: Int, intermediateSize: Int, numLayers: Int, numHeads: Int, numKVHeads: Int,
            headDim: Int, maxSequenceLength: Int, rmsNormEps: Float, ropeTheta: Float
        ) {
            self.vocabSize = vocabSize
            self.hiddenSize = hiddenSize
            self.intermediateSize = intermediateSize
            self.numLayers = numLayers
            self.numHeads = numHeads
            self.numKVHeads = numKVHeads
            self.headDim = headDim
            self.maxSequenceLength = maxSequenceLength
            self.rmsNormEps = rmsNormEps
            self.ropeTheta = ropeTheta
        }
    }

    /// One layer's weights ([out, in]); norms are [hiddenSize].
    public struct Layer {
        public var attnNorm: [Float]
        public var qProj, kProj, vProj, oProj: QuantizedWeight
        public var mlpNorm: [Float]
        public var gateProj, upProj, downProj: QuantizedWeight

        public init(
            attnNorm: [Float], qProj: QuantizedWeight, kProj: QuantizedWeight, vProj: QuantizedWeight,
            oProj: QuantizedWeight, mlpNorm: [Float], gateProj: QuantizedWeight, upProj: QuantizedWeight,
            downProj: QuantizedWeight
        ) {
            self.attnNorm = attnNorm
            self.qProj = qProj
            self.kProj = kProj
            self.vProj = vProj
            self.oProj = oProj
            self.mlpNorm = mlpNorm
            self.gateProj = gateProj
            self.upProj = upProj
            self.downProj = downProj
        }
    }

    public let config: Config
    private let handle: pocketml_decoder

    /// `embedding` [vocabSize, hiddenSize] is also the LM head.
    public init(config: Config, embedding: QuantizedWeight, layers: [Layer], finalNorm: [Float]) throws {
        guard layers.count == config.numLayers else {
            throw PocketMLError(kind: .invalidArgument,
                                message: "argument 'layers': expected \(config.numLayers) layers, got \(layers.count)")
        }
        for (name, norm) in [("finalNorm", finalNorm)] + layers.enumerated().flatMap({ i, l in
            [("layers[\(i)].attnNorm", l.attnNorm), ("layers[\(i)].mlpNorm", l.mlpNorm)]
        }) where norm.count != config.hiddenSize {
            throw PocketMLError(kind: .invalidArgument,
                                message: "argument '\(name)': expected \(config.hiddenSize) values, got \(norm.count)")
        }
        self.config = config
        var cConfig = pocketml_decoder_config(
            vocab_size: Int64(config.vocabSize), hidden_size: Int64(config.hiddenSize),
            intermediate_size: Int64(config.intermediateSize), num_layers: Int64(config.numLayers),
            num_heads: Int64(config.numHeads), num_kv_heads: Int64(config.numKVHeads), head_dim: Int64(config.headDim),
            max_seq_len: Int64(config.maxSequenceLength), rms_norm_eps: config.rmsNormEps,
            rope_theta: config.ropeTheta)
        var created: pocketml_decoder?
        // Every weight's pointers must stay valid for the one call: nest their scopes.
        let weights = layers.flatMap { [$0.qProj, $0.kProj, $0.vProj, $0.oProj, $0.gateProj, $0.upProj, $0.downProj] }
        try withCWeights([embedding] + weights) { c in
            let embeddingC = c[0]
            var cLayers: [pocketml_decoder_layer] = []
            var norms: [[Float]] = []
            for l in layers { norms += [l.attnNorm, l.mlpNorm] }
            try withFloatPointers(norms + [finalNorm], []) { normPointers in
                for i in 0..<layers.count {
                    let w = Array(c[(1 + 7 * i)..<(8 + 7 * i)])
                    cLayers.append(pocketml_decoder_layer(
                        attn_norm: normPointers[2 * i], q_proj: w[0], k_proj: w[1], v_proj: w[2], o_proj: w[3],
                        mlp_norm: normPointers[2 * i + 1], gate_proj: w[4], up_proj: w[5], down_proj: w[6]))
                }
                var embeddingCopy = embeddingC
                try check(pocketml_decoder_new(&cConfig, &embeddingCopy, cLayers, normPointers.last!, &created))
            }
        }
        handle = created!
    }

    deinit { _ = pocketml_decoder_free(handle) }

    /// Tokens in the KV cache.
    public var length: Int {
        var out: Int64 = 0
        _ = pocketml_decoder_length(handle, &out)
        return Int(out)
    }

    /// Appends `tokens` after the cached ones; returns their logits [tokens.count, vocabSize].
    public func forward(_ tokens: [Int32]) throws -> [Float] {
        var logits = [Float](repeating: 0, count: tokens.count * config.vocabSize)
        try tokens.withUnsafeBufferPointer { t in
            try logits.withUnsafeMutableBufferPointer { l in
                try check(pocketml_decoder_forward(handle, t.baseAddress, Int64(tokens.count), l.baseAddress))
            }
        }
        return logits
    }

    /// Empties the KV cache.
    public func reset() throws { try check(pocketml_decoder_reset(handle)) }
}

/// Calls `body` with the C descriptions of all `weights`, each valid for the call.
private func withCWeights<R>(
    _ weights: [QuantizedWeight], _ body: ([pocketml_quantized_weight]) throws -> R
) throws -> R {
    func nest(_ index: Int, _ collected: [pocketml_quantized_weight]) throws -> R {
        if index == weights.count { return try body(collected) }
        return try weights[index].withCWeight { try nest(index + 1, collected + [$0.pointee]) }
    }
    return try nest(0, [])
}

/// Calls `body` with the base address of every array, each valid for the call.
private func withFloatPointers<R>(
    _ arrays: [[Float]], _ collected: [UnsafePointer<Float>?], _ body: ([UnsafePointer<Float>?]) throws -> R
) throws -> R {
    if collected.count == arrays.count { return try body(collected) }
    return try arrays[collected.count].withUnsafeBufferPointer {
        try withFloatPointers(arrays, collected + [$0.baseAddress], body)
    }
}
