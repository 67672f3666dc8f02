import Foundation
import XCTest

@testable import PocketML
@testable import PocketMLValidation

/// The C-ABI wrappers the validator uses (quantized matmul, attention, the
/// transformer decoder), checked on Python's bundles and on known answers, and
/// damaged bundles of each op failing with a message rather than a crash.
final class HarnessTests: XCTestCase {
    func bundle(_ name: String) throws -> GoldenBundle {
        guard let dir = ProcessInfo.processInfo.environment["POCKETML_GOLDEN_DIR"] else {
            throw XCTSkip("POCKETML_GOLDEN_DIR is not set: run through `make test-swift`")
        }
        return try GoldenBundle(url: URL(fileURLWithPath: dir).appendingPathComponent(name))
    }

    func copyOfBundle(_ name: String) throws -> URL {
        let source = try bundle(name).url
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent("pocketml-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: source, to: copy)
        addTeardownBlock { try? FileManager.default.removeItem(at: copy) }
        return copy
    }

    func editManifest(_ bundle: URL, _ from: String, _ to: String) throws {
        let url = bundle.appendingPathComponent("manifest.json")
        let text = try String(contentsOf: url, encoding: .utf8)
        XCTAssertTrue(text.contains(from), "manifest has no \(from)")
        try text.replacingOccurrences(of: from, with: to).write(to: url, atomically: true, encoding: .utf8)
    }

    func assertFails(_ url: URL, mentioning text: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertThrowsError(try Validator.run(try GoldenBundle(url: url)), file: file, line: line) { error in
            XCTAssertTrue("\(error)".contains(text), "\(error)", file: file, line: line)
        }
    }

    // MARK: quantized matmul

    func testQuantMatmulEqualsProductWithDequantizedWeight() throws {
        let bundle = try bundle("quant_matmul")
        for check in bundle.checks {
            let weight = try check.quantizedWeight(first: 1, arrays: try check.strings("arrays"), in: bundle)
            let x = try bundle.tensors[check.inputs[0]]!.floats()
            let m = x.count / weight.cols
            let w = try weight.dequantize()
            let y = try weight.matmul(x, rows: m)
            for i in 0..<m {
                for j in 0..<weight.rows {
                    var sum = 0.0
                    for c in 0..<weight.cols { sum += Double(x[i * weight.cols + c]) * Double(w[j * weight.cols + c]) }
                    XCTAssertEqual(Double(y[i * weight.rows + j]), sum, accuracy: 1e-4, check.name)
                }
            }
        }
    }

    func testShortQuantizedArraysAreRejectedBeforeTheCall() throws {
        let bundle = try bundle("quant_matmul")
        let weight = try bundle.checks[0].quantizedWeight(first: 1, arrays: ["packed", "scales", "zero_points"], in: bundle)
        let short = QuantizedWeight(
            kind: weight.kind, bits: weight.bits, rows: weight.rows, cols: weight.cols, groupSize: weight.groupSize,
            packed: Array(weight.packed.dropLast()), scales: weight.scales, scaleType: weight.scaleType,
            zeroPoints: weight.zeroPoints)
        XCTAssertThrowsError(try short.matmul([Float](repeating: 1, count: weight.cols), rows: 1)) { error in
            XCTAssertTrue("\(error)".contains("weight.packed: expected"), "\(error)")
        }
        XCTAssertThrowsError(try weight.matmul([1, 2, 3], rows: 1)) { error in
            XCTAssertTrue("\(error)".contains("argument 'x'"), "\(error)")
        }
        let huge = QuantizedWeight(
            kind: weight.kind, bits: weight.bits, rows: Int.max / 2, cols: weight.cols, groupSize: weight.groupSize,
            packed: weight.packed, scales: weight.scales, scaleType: weight.scaleType, zeroPoints: weight.zeroPoints)
        XCTAssertThrowsError(try huge.validate()) { error in  // rows * row bytes overflowed Int: a crash
            XCTAssertTrue("\(error)".contains("weight.packed: a size of"), "\(error)")
        }
        // Python and the C ABI refuse these (QuantizedWeight leaves values to the C ABI); an infinite scale gave
        // NaN outputs and a LUT given to an affine weight was ignored.
        var infiniteScales = weight.scales!  // the first scale +inf, little-endian
        let infinity: [UInt8] = [.fp16: [0x00, 0x7C], .bf16: [0x80, 0x7F], .fp32: [0x00, 0x00, 0x80, 0x7F]][weight.scaleType]!
        infiniteScales.replaceSubrange(0..<infinity.count, with: infinity)
        let infinite = QuantizedWeight(
            kind: weight.kind, bits: weight.bits, rows: weight.rows, cols: weight.cols, groupSize: weight.groupSize,
            packed: weight.packed, scales: infiniteScales, scaleType: weight.scaleType, zeroPoints: weight.zeroPoints)
        XCTAssertThrowsError(try infinite.dequantize()) {
            XCTAssertTrue("\($0)".contains("argument 'weight.scales': expected finite values"), "\($0)")
        }
        // A finite fp32 scale of 3e36 for 8-bit symmetric codes: code 0 decodes to -128 * 3e36, past fp32.
        let overflowing = QuantizedWeight(
            kind: .affine, bits: 8, rows: 1, cols: 32, groupSize: 32, packed: [UInt8](repeating: 200, count: 32),
            scales: withUnsafeBytes(of: Float(3e36).bitPattern.littleEndian, Array.init), scaleType: .fp32)
        XCTAssertThrowsError(try overflowing.dequantize()) {
            XCTAssertTrue("\($0)".contains("8-bit codes all decode within fp32's range"), "\($0)")
        }
        let extraLUT = QuantizedWeight(
            kind: weight.kind, bits: weight.bits, rows: weight.rows, cols: weight.cols, groupSize: weight.groupSize,
            packed: weight.packed, scales: weight.scales, scaleType: weight.scaleType, zeroPoints: weight.zeroPoints,
            lut: [0, 0])
        XCTAssertThrowsError(try extraLUT.dequantize()) {
            XCTAssertTrue("\($0)".contains("weight.lut: expected none for an affine weight"), "\($0)")
        }
        // Each of these trapped (Int32 conversion, negative array count, overflowing product) before any check.
        let hugeBits = QuantizedWeight(kind: .affine, bits: 1 << 40, rows: 1, cols: 32, groupSize: 32, packed: [], scales: [])
        let negativeRows = QuantizedWeight(kind: .affine, bits: 4, rows: -1, cols: 32, groupSize: 32, packed: [], scales: [])
        for (bad, message) in [(hugeBits, "weight.bits"), (negativeRows, "rows >= 0")] {
            XCTAssertThrowsError(try bad.dequantize()) { XCTAssertTrue("\($0)".contains(message), "\($0)") }
            XCTAssertThrowsError(try bad.matmul([Float](repeating: 0, count: 32), rows: 1)) {
                XCTAssertTrue("\($0)".contains(message), "\($0)")
            }
        }
        XCTAssertThrowsError(try weight.matmul([], rows: Int.max / 4)) { XCTAssertTrue("\($0)".contains("argument 'x'")) }
    }

    // MARK: attention

    func testAttentionOverOneKeyReturnsItsValue() throws {
        let shape = Attention.Shape(batch: 1, queryHeads: 4, kvHeads: 2, queryLength: 1, kvLength: 1, headDim: 8)
        let q = (0..<32).map { Float($0) * 0.1 }
        let k = (0..<16).map { Float($0) * -0.2 }
        let v = (0..<16).map { Float($0) }
        let out = try Attention.forward(q: q, k: k, v: v, shape: shape, scale: 0.5, mask: .causal)
        // heads 0, 1 share kv head 0; heads 2, 3 share kv head 1 (GQA)
        XCTAssertEqual(out, Array(v[0..<8]) + Array(v[0..<8]) + Array(v[8..<16]) + Array(v[8..<16]))
        let decoded = try Attention.decode(q: q, kCache: k, vCache: v, shape: shape, length: 1, scale: 0.5)
        XCTAssertEqual(decoded, out)
    }

    func testAttentionErrorsNameTheArgument() {
        let shape = Attention.Shape(batch: 1, queryHeads: 3, kvHeads: 2, queryLength: 1, kvLength: 1, headDim: 4)
        XCTAssertThrowsError(try Attention.forward(q: [Float](repeating: 0, count: 12), k: [0, 0, 0, 0, 0, 0, 0, 0],
                                                   v: [0, 0, 0, 0, 0, 0, 0, 0], shape: shape, scale: 1)) { error in
            XCTAssertEqual((error as? PocketMLError)?.kind, .invalidArgument, "\(error)")
        }
        XCTAssertThrowsError(try Attention.forward(q: [1, 2], k: [1], v: [1], shape: shape, scale: 1)) { error in
            XCTAssertTrue("\(error)".contains("argument 'q'"), "\(error)")
        }
        let huge = Attention.Shape(batch: Int.max / 2, queryHeads: 4, kvHeads: 1, queryLength: 1, kvLength: 1, headDim: 1)
        XCTAssertThrowsError(try Attention.forward(q: [], k: [], v: [], shape: huge, scale: 1)) { error in  // was a trap
            XCTAssertTrue("\(error)".contains("sizes whose product overflows"), "\(error)")
        }
    }

    // MARK: transformer decoder

    func testDecoderStepsMatchOneCallAndRejectBadTokens() throws {
        let bundle = try bundle("transformer_decode")
        let check = bundle.checks[0]
        let decoder = try Validator.makeDecoder(check, bundle)
        let tokens: [Int32] = [1, 2, 3, 4, 5, 6]
        let all = try decoder.forward(tokens)
        XCTAssertEqual(decoder.length, 6)
        try decoder.reset()
        XCTAssertEqual(decoder.length, 0)
        var stepped = try decoder.forward(Array(tokens[0..<3]))
        for t in tokens[3...] { stepped += try decoder.forward([t]) }
        XCTAssertEqual(stepped.count, all.count)
        for (a, b) in zip(stepped, all) { XCTAssertEqual(a, b, accuracy: 1e-3) }
        XCTAssertThrowsError(try decoder.forward([Int32(decoder.config.vocabSize)])) { error in
            XCTAssertTrue("\(error)".contains("argument 'tokens[0]'"), "\(error)")
        }
        XCTAssertThrowsError(try decoder.forward([Int32](repeating: 0, count: decoder.config.maxSequenceLength))) {
            error in XCTAssertTrue("\(error)".contains("argument 'tokens': expected at most"), "\(error)")
        }
    }

    // MARK: corrupted bundles of each op

    func testCorruptQuantMatmulBundles() throws {
        let wrongBits = try copyOfBundle("quant_matmul")
        try editManifest(wrongBits, "\"bits\": 2,", "\"bits\": 3,")
        assertFails(wrongBits, mentioning: "weight.packed: expected")
        let missing = try copyOfBundle("quant_matmul")
        try FileManager.default.removeItem(at: missing.appendingPathComponent("lut4.lut.bin"))
        assertFails(missing, mentioning: "missing file lut4.lut.bin")
    }

    func testCorruptAttentionBundles() throws {
        let pastCache = try copyOfBundle("attention")
        try editManifest(pastCache, "\"length\": 33", "\"length\": 49")
        assertFails(pastCache, mentioning: "argument 'cache.length': expected 1 (the queries, already appended) to 48, got 49")
        let badMode = try copyOfBundle("attention")
        try editManifest(badMode, "\"mode\": \"decode\"", "\"mode\": \"prefill\"")
        assertFails(badMode, mentioning: "attrs.mode must be forward or decode, got prefill")
    }

    func testCorruptTransformerBundles() throws {
        let flipped = try copyOfBundle("transformer_decode")
        let file = flipped.appendingPathComponent("layers.0.q_proj.scales.bin")
        var bytes = try [UInt8](Data(contentsOf: file))
        bytes[5] ^= 0x04
        try Data(bytes).write(to: flipped.appendingPathComponent("layers.0.q_proj.scales.bin"))
        assertFails(flipped, mentioning: "sha256 mismatch for layers.0.q_proj.scales.bin")
        let wrongHeads = try copyOfBundle("transformer_decode")
        try editManifest(wrongHeads, "\"num_kv_heads\": 3", "\"num_kv_heads\": 4")
        assertFails(wrongHeads, mentioning: "argument 'config.num_kv_heads': expected a divisor of num_heads = 9")
        let wrongShape = try copyOfBundle("transformer_decode")
        try editManifest(wrongShape, "\"layers.1.up_proj.n\": 1536", "\"layers.1.up_proj.n\": 768")
        assertFails(wrongShape, mentioning: "quantized weight 'layers.1.up_proj': weight.packed: expected")
    }
}
