import Dispatch
import PocketML

extension Validator {
    static let decoderProjections = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

    /// The decoder a transformer_decode check describes, built through the C ABI.
    static func makeDecoder(_ check: GoldenCheck, _ bundle: GoldenBundle) throws -> TransformerDecoder {
        let config = TransformerDecoder.Config(
            vocabSize: try check.int("vocab_size"), hiddenSize: try check.int("hidden_size"),
            intermediateSize: try check.int("intermediate_size"), numLayers: try check.int("num_layers"),
            numHeads: try check.int("num_heads"), numKVHeads: try check.int("num_kv_heads"),
            headDim: try check.int("head_dim"), maxSequenceLength: try check.int("max_seq_len"),
            rmsNormEps: Float(try check.number("rms_norm_eps")), ropeTheta: Float(try check.number("rope_theta")))
        guard config.numLayers > 0, config.numLayers <= 1024 else {
            throw check.fail("attrs.num_layers must be in 1...1024, got \(config.numLayers)")
        }
        var layers: [TransformerDecoder.Layer] = []
        for i in 0..<config.numLayers {
            let p = "layers.\(i)."
            let w = try decoderProjections.map { try check.namedQuantizedWeight(p + $0, in: bundle) }
            layers.append(TransformerDecoder.Layer(
                attnNorm: try check.named(p + "attn_norm", in: bundle, dtypes: [.fp32]).floats(),
                qProj: w[0], kProj: w[1], vProj: w[2], oProj: w[3],
                mlpNorm: try check.named(p + "mlp_norm", in: bundle, dtypes: [.fp32]).floats(),
                gateProj: w[4], upProj: w[5], downProj: w[6]))
        }
        return try TransformerDecoder(
            config: config, embedding: try check.namedQuantizedWeight("embedding", in: bundle), layers: layers,
            finalNorm: try check.named("final_norm", in: bundle, dtypes: [.fp32]).floats())
    }

    /// op "transformer_decode": builds a TransformerDecoder from the bundle's weights, runs the
    /// first attrs.prompt_length tokens as one prompt, then every further token as one decode
    /// step, and compares each call's logits with the matching rows of expected [T, vocab].
    /// One result per call: "prompt" then "step 1", "step 2", ...
    ///
    /// Inputs (by name): tokens (int32 [T]), embedding.*, layers.<i>.{attn_norm, mlp_norm} (fp32
    /// [hidden]), layers.<i>.<projection>.*, final_norm; a quantized weight W is the arrays
    /// W.packed, W.scales, W.zero_points, W.lut that exist, with attrs W.kind, W.bits,
    /// W.group_size, W.n, W.k. Config attrs: vocab_size, hidden_size, intermediate_size,
    /// num_layers, num_heads, num_kv_heads, head_dim, max_seq_len, rms_norm_eps, rope_theta.
    static func transformerDecode(_ check: GoldenCheck, _ bundle: GoldenBundle) throws -> [CheckResult] {
        let decoder = try makeDecoder(check, bundle)
        let config = decoder.config
        let tokensTensor = try check.named("tokens", in: bundle, dtypes: [.int32])
        let tokens = tokensTensor.bytes.withUnsafeBytes { Array($0.bindMemory(to: Int32.self)) }
        let promptLength = try check.int("prompt_length")
        guard tokensTensor.shape.count == 1, !tokens.isEmpty, (1...tokens.count).contains(promptLength) else {
            throw check.fail("tokens must be [T] with 1 <= prompt_length <= T, got \(tokensTensor.shape) "
                + "and prompt_length \(promptLength)")
        }
        let expected = bundle.tensors[check.expected]!
        guard expected.shape == [tokens.count, config.vocabSize] else {
            throw check.fail("expected '\(check.expected)' must be [\(tokens.count), \(config.vocabSize)], "
                + "got \(expected.shape)")
        }
        let expectedLogits = try expected.floats()

        var results: [CheckResult] = []
        var position = 0
        while position < tokens.count {
            let count = position == 0 ? promptLength : 1
            let start = DispatchTime.now().uptimeNanoseconds
            let logits = try decoder.forward(Array(tokens[position..<(position + count)]))
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            let rows = (position * config.vocabSize)..<((position + count) * config.vocabSize)
            let step = position == 0 ? "prompt (\(count) tokens)" : "step \(position - promptLength + 1)"
            let result = compare(check, got: logits, expected: Array(expectedLogits[rows]), seconds: seconds)
            results.append(CheckResult(
                name: "\(check.name) \(step)", op: check.op, maxAbsError: result.maxAbsError,
                maxRelError: result.maxRelError, elementsOutOfTolerance: result.elementsOutOfTolerance,
                seconds: seconds))
            position += count
        }
        return results
    }
}

extension GoldenCheck {
    /// The input tensor called `name`; it must be listed in the check's inputs.
    func named(_ name: String, in bundle: GoldenBundle, dtypes: [DType]) throws -> GoldenTensor {
        guard let index = inputs.firstIndex(of: name) else { throw fail("missing input '\(name)'") }
        return try input(index, in: bundle, dtypes: dtypes)
    }

    /// The quantized weight whose arrays are the inputs `name`.packed, .scales, .zero_points,
    /// .lut (those present) and whose kind, bits, group_size, n, k are attrs `name`.kind, ...
    func namedQuantizedWeight(_ name: String, in bundle: GoldenBundle) throws -> QuantizedWeight {
        let arrays = ["packed", "scales", "zero_points", "lut"].filter { inputs.contains("\(name).\($0)") }
        guard let first = inputs.firstIndex(of: "\(name).\(arrays.first ?? "packed")") else {
            throw fail("missing input '\(name).packed'")
        }
        guard inputs[first..<min(inputs.count, first + arrays.count)].elementsEqual(arrays.map { "\(name).\($0)" }) else {
            throw fail("the arrays of '\(name)' must be consecutive inputs in the order \(arrays)")
        }
        let weight = try quantizedWeight(first: first, arrays: arrays, in: bundle, attrPrefix: name + ".")
        do {
            try weight.validate()
        } catch let error as PocketMLError {
            throw fail("quantized weight '\(name)': \(error.message)")
        }
        return weight
    }
}
