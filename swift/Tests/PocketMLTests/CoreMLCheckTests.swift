import Foundation
import PocketML
import XCTest

@testable import PocketMLValidation

/// A coreml_predict check off Apple platforms is skipped with its reason, never
/// failed; a bundle naming a package that does not exist is an error everywhere.
final class CoreMLCheckTests: XCTestCase {
    func bundle(withPackage createPackage: Bool) throws -> GoldenBundle {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("pocketml-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
        let values: [Float] = [1, 2, 3, 4]
        let bytes = values.withUnsafeBytes { [UInt8]($0) }
        try Data(bytes).write(to: dir.appendingPathComponent("x.bin"))
        if createPackage {
            try FileManager.default.createDirectory(
                at: dir.appendingPathComponent("model.mlpackage"), withIntermediateDirectories: true)
        }
        let manifest = """
            {"format": "pocketml-golden-bundle", "version": 1, "name": "coreml", "producer": "test",
             "tensors": {"x": {"file": "x.bin", "dtype": "fp32", "shape": [4], "sha256": "\(try Checksum.sha256(bytes))"}},
             "checks": [{"name": "predict", "op": "coreml_predict", "inputs": ["x"], "expected": "x",
                         "attrs": {"package": "model.mlpackage", "feature_names": ["x"], "output": "y"},
                         "tolerance": {"max_abs": 0, "max_rel": 0}}]}
            """
        try manifest.write(to: dir.appendingPathComponent("manifest.json"), atomically: true, encoding: .utf8)
        return try GoldenBundle(url: dir)
    }

    func testMissingPackageIsAnError() throws {
        XCTAssertThrowsError(try Validator.run(try bundle(withPackage: false))) { error in
            XCTAssertTrue("\(error)".contains("missing Core ML package"), "\(error)")
        }
    }

    #if !canImport(CoreML)
        func testSkippedWithoutCoreML() throws {
            let results = try Validator.run(try bundle(withPackage: true))
            XCTAssertEqual(results.count, 1)
            XCTAssertEqual(results[0].skippedBecause, "Core ML runs on Apple platforms only")
            XCTAssertTrue(results[0].passed)
        }
    #endif
}
