import Foundation
import XCTest

@testable import PocketMLValidation

/// Runs the validator on the bundles Python wrote (`pocketml golden`, done by
/// `make test-swift`, which passes their directory in POCKETML_GOLDEN_DIR), and on
/// damaged copies of them.
final class GoldenBundleTests: XCTestCase {
    func goldenDirectory() throws -> URL {
        guard let dir = ProcessInfo.processInfo.environment["POCKETML_GOLDEN_DIR"] else {
            throw XCTSkip("POCKETML_GOLDEN_DIR is not set: run through `make test-swift`")
        }
        return URL(fileURLWithPath: dir)
    }

    func copyOfConvertBundle() throws -> URL {
        let source = try goldenDirectory().appendingPathComponent("convert")
        let copy = FileManager.default.temporaryDirectory.appendingPathComponent("pocketml-\(UUID().uuidString)")
        try FileManager.default.copyItem(at: source, to: copy)
        addTeardownBlock { try? FileManager.default.removeItem(at: copy) }
        return copy
    }

    func testPythonBundlesPass() throws {
        let dir = try goldenDirectory()
        let names = try FileManager.default.contentsOfDirectory(atPath: dir.path).filter { !$0.hasPrefix(".") }
        XCTAssertEqual(Set(names), ["convert", "quant_matmul", "attention", "transformer_decode"])
        for name in names {
            let bundle = try GoldenBundle(url: dir.appendingPathComponent(name))
            let results = try Validator.run(bundle)
            XCTAssertFalse(results.isEmpty, name)
            for result in results {
                XCTAssertTrue(result.passed, "\(name)/\(result.name): max abs \(result.maxAbsError)")
            }
        }
    }

    func testFlippedByteIsDetected() throws {
        let bundle = try copyOfConvertBundle()
        let file = bundle.appendingPathComponent("x.bin")
        var bytes = try [UInt8](Data(contentsOf: file))
        bytes[100] ^= 0x01
        try Data(bytes).write(to: file)
        XCTAssertThrowsError(try GoldenBundle(url: bundle)) { error in
            XCTAssertTrue("\(error)".contains("sha256 mismatch for x.bin"), "\(error)")
        }
    }

    func testMissingFileIsDetected() throws {
        let bundle = try copyOfConvertBundle()
        try FileManager.default.removeItem(at: bundle.appendingPathComponent("x_fp16.bin"))
        XCTAssertThrowsError(try GoldenBundle(url: bundle)) { error in
            XCTAssertTrue("\(error)".contains("missing file x_fp16.bin"), "\(error)")
        }
    }

    func testWrongShapeIsDetected() throws {
        let bundle = try copyOfConvertBundle()
        let manifestURL = bundle.appendingPathComponent("manifest.json")
        let manifest = try String(contentsOf: manifestURL, encoding: .utf8)
        try manifest.replacingOccurrences(of: "1009", with: "1010").write(to: manifestURL, atomically: true, encoding: .utf8)
        XCTAssertThrowsError(try GoldenBundle(url: bundle)) { error in
            XCTAssertTrue("\(error)".contains("needs 4040 bytes, x.bin has 4036"), "\(error)")
        }
    }

    func testWrongExpectationFailsTheCheck() throws {
        let bundle = try GoldenBundle(url: try copyOfConvertBundle())
        let check = bundle.checks[0]
        let expected = try bundle.tensors[check.expected]!.floats()
        var got = expected
        got[3] += 1
        let result = Validator.compare(check, got: got, expected: expected, seconds: 0)
        XCTAssertFalse(result.passed)
        XCTAssertEqual(result.elementsOutOfTolerance, 1)
        XCTAssertGreaterThanOrEqual(result.maxAbsError, 1 - 1e-3)
    }

    func testNotABundle() {
        XCTAssertThrowsError(try GoldenBundle(url: URL(fileURLWithPath: "/nonexistent/bundle"))) { error in
            XCTAssertTrue("\(error)".contains("not a golden bundle"), "\(error)")
        }
    }
}
