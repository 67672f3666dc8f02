import Foundation
import PocketML

#if canImport(CoreML)
    import CoreML
#endif

extension Validator {
    /// op coreml_predict: runs the .mlpackage at attrs.package (relative to the bundle)
    /// with Core ML on the check's inputs, fed as the features attrs.feature_names, and
    /// compares the output feature attrs.output with the expected tensor. Off Apple
    /// platforms the check is reported as skipped, not failed.
    static func coreMLPredict(_ check: GoldenCheck, _ bundle: GoldenBundle) throws -> CheckResult {
        guard let package = check.attrs["package"]?.string, let output = check.attrs["output"]?.string,
            case .list(let featureValues)? = check.attrs["feature_names"]
        else {
            throw GoldenBundleError(
                message: "check '\(check.name)': coreml_predict needs attrs package, output and feature_names")
        }
        let featureNames = featureValues.compactMap(\.string)
        guard featureNames.count == check.inputs.count else {
            throw GoldenBundleError(
                message: "check '\(check.name)': expected one feature name per input (\(check.inputs.count)), "
                    + "got \(featureNames.count)")
        }
        let packageURL = bundle.url.appendingPathComponent(package)
        guard FileManager.default.fileExists(atPath: packageURL.path) else {
            throw GoldenBundleError(message: "check '\(check.name)': missing Core ML package \(packageURL.path)")
        }
        #if canImport(CoreML)
            let inputs = check.inputs.map { bundle.tensors[$0]! }
            let start = DispatchTime.now().uptimeNanoseconds
            let got = try predict(packageURL: packageURL, featureNames: featureNames, inputs: inputs, output: output)
            let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
            let expected = try bundle.tensors[check.expected]!.floats()
            guard got.count == expected.count else {
                throw GoldenBundleError(
                    message: "check '\(check.name)': Core ML output '\(output)' has \(got.count) elements, "
                        + "expected \(expected.count)")
            }
            return compare(check, got: got, expected: expected, seconds: seconds)
        #else
            return CheckResult.skipped(check, because: "Core ML runs on Apple platforms only")
        #endif
    }

    #if canImport(CoreML)
        private static func predict(packageURL: URL, featureNames: [String], inputs: [GoldenTensor], output: String)
            throws -> [Float]
        {
            let compiledURL = try MLModel.compileModel(at: packageURL)
            defer { try? FileManager.default.removeItem(at: compiledURL) }
            let configuration = MLModelConfiguration()
            // The CPU computes in fp32: the check is about the weights, not about ANE rounding.
            configuration.computeUnits = .cpuOnly
            let model = try MLModel(contentsOf: compiledURL, configuration: configuration)
            var features: [String: MLFeatureValue] = [:]
            for (name, tensor) in zip(featureNames, inputs) {
                let dataType: MLMultiArrayDataType
                switch tensor.dtype {
                case .int32: dataType = .int32
                case .fp32: dataType = .float32
                default:
                    throw GoldenBundleError(
                        message: "Core ML input '\(name)': expected int32 or fp32, got \(tensor.dtype.rawValue)")
                }
                let array = try MLMultiArray(shape: tensor.shape.map { NSNumber(value: $0) }, dataType: dataType)
                tensor.bytes.withUnsafeBytes { source in
                    if let base = source.baseAddress { array.dataPointer.copyMemory(from: base, byteCount: source.count) }
                }
                features[name] = MLFeatureValue(multiArray: array)
            }
            let prediction = try model.prediction(from: MLDictionaryFeatureProvider(dictionary: features))
            guard let result = prediction.featureValue(for: output)?.multiArrayValue else {
                throw GoldenBundleError(message: "Core ML prediction has no multi-array output '\(output)'")
            }
            return (0..<result.count).map { result[$0].floatValue }
        }
    #endif
}
