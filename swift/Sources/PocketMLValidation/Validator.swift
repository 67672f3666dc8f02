import Foundation
import PocketML

/// The outcome of one check: the largest errors seen and the time the operation took,
/// or why this platform could not run it (a Core ML check off Apple platforms).
public struct CheckResult {
    public let name: String
    public let op: String
    public let maxAbsError: Double
    public let maxRelError: Double
    public let elementsOutOfTolerance: Int
    public let seconds: Double
    public var skippedBecause: String? = nil
    public var passed: Bool { elementsOutOfTolerance == 0 }

    static func skipped(_ check: GoldenCheck, because reason: String) -> CheckResult {
        CheckResult(
            name: check.name, op: check.op, maxAbsError: 0, maxRelError: 0, elementsOutOfTolerance: 0, seconds: 0,
            skippedBecause: reason)
    }
}

/// Recomputes every check of a golden bundle through the C ABI and compares it
/// with the expected tensor. Element i passes when
/// |got - expected| <= max_abs + max_rel * |expected|; NaN must meet NaN.
public enum Validator {
    public static let supportedOps = ["convert", "quant_matmul", "attention", "transformer_decode", "coreml_predict"]

    /// One result per check; a transformer_decode check gives one per step.
    public static func run(_ bundle: GoldenBundle) throws -> [CheckResult] {
        guard !bundle.checks.isEmpty else {  // a bundle that asks nothing must not read as validated
            throw GoldenBundleError(message: "\(bundle.url.path): the bundle has no checks")
        }
        return try bundle.checks.flatMap { check -> [CheckResult] in
            do {
                return check.op == "transformer_decode" ? try transformerDecode(check, bundle) : [try run(check, in: bundle)]
            } catch let error as PocketMLError {  // the C ABI's message names an argument, not the check
                throw GoldenBundleError(message: "check '\(check.name)' (\(check.op)): \(error)")
            }
        }
    }

    static func run(_ check: GoldenCheck, in bundle: GoldenBundle) throws -> CheckResult {
        if check.op == "coreml_predict" { return try coreMLPredict(check, bundle) }
        let expected = bundle.tensors[check.expected]!
        guard expected.count > 0 else {
            throw GoldenBundleError(message: "check '\(check.name)': expected '\(check.expected)' is empty: nothing to compare")
        }
        let start = DispatchTime.now().uptimeNanoseconds
        let got: GoldenTensor
        switch check.op {
        case "convert":
            got = try convert(check, bundle)
        case "quant_matmul":
            got = try quantMatmul(check, bundle)
        case "attention":
            got = try attention(check, bundle)
        default:
            throw GoldenBundleError(
                message: "check '\(check.name)': unsupported op '\(check.op)' "
                    + "(this validator knows: \(supportedOps.joined(separator: ", ")))")
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        guard got.shape == expected.shape else {
            throw GoldenBundleError(
                message: "check '\(check.name)': result shape \(got.shape) differs from expected \(expected.shape)")
        }
        guard check.op != "convert" || got.dtype == expected.dtype else {  // equal values in another dtype would pass
            throw GoldenBundleError(
                message: "check '\(check.name)': result dtype \(got.dtype.rawValue) differs from expected "
                    + "\(expected.dtype.rawValue)")
        }
        return compare(check, got: try got.floats(), expected: try expected.floats(), seconds: seconds)
    }

    static func compare(_ check: GoldenCheck, got: [Float], expected: [Float], seconds: Double) -> CheckResult {
        var maxAbs = 0.0, maxRel = 0.0, bad = 0
        for (g, e) in zip(got, expected) {
            if e.isNaN || g.isNaN {
                if !(e.isNaN && g.isNaN) { bad += 1 }
                continue
            }
            if e.isInfinite || g.isInfinite {
                if g != e { bad += 1 }
                continue
            }
            let error = abs(Double(g) - Double(e))
            maxAbs = max(maxAbs, error)
            if e != 0 { maxRel = max(maxRel, error / abs(Double(e))) }
            if error > check.tolerance.maxAbs + check.tolerance.maxRel * abs(Double(e)) { bad += 1 }
        }
        return CheckResult(
            name: check.name, op: check.op, maxAbsError: maxAbs, maxRelError: maxRel, elementsOutOfTolerance: bad,
            seconds: seconds)
    }

    private static func convert(_ check: GoldenCheck, _ bundle: GoldenBundle) throws -> GoldenTensor {
        guard check.inputs.count == 1, let input = bundle.tensors[check.inputs[0]] else {
            throw GoldenBundleError(message: "check '\(check.name)': convert takes exactly one input")
        }
        guard let name = check.attrs["dtype"]?.string, let target = DType(rawValue: name) else {
            throw GoldenBundleError(message: "check '\(check.name)': convert needs attrs.dtype (fp32, fp16 or bf16)")
        }
        var output = [UInt8](repeating: 0, count: input.count * target.size)
        try input.bytes.withUnsafeBytes { source in
            try output.withUnsafeMutableBytes { destination in
                guard let s = source.baseAddress, let d = destination.baseAddress else { return }
                try Convert.raw(s, input.dtype, into: d, target, count: input.count)
            }
        }
        return GoldenTensor(dtype: target, shape: input.shape, bytes: output)
    }
}
