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

    /// Moves the bundle's file `name` out of the bundle and leaves a symbolic link to it in its place.
    @discardableResult
    func linkedOutside(_ bundle: URL, _ name: String) throws -> URL {
        let file = bundle.appendingPathComponent(name)
        let outside = bundle.deletingLastPathComponent().appendingPathComponent("outside-\(UUID().uuidString)-\(name)")
        try FileManager.default.moveItem(at: file, to: outside)
        addTeardownBlock { try? FileManager.default.removeItem(at: outside) }
        try FileManager.default.createSymbolicLink(at: file, withDestinationURL: outside)
        return file
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

    func testSymbolicLinkAndHugeFileAreRefusedUnread() throws {
        let bundle = try copyOfConvertBundle()
        let file = try linkedOutside(bundle, "x.bin")
        XCTAssertThrowsError(try GoldenBundle(url: bundle)) { error in
            XCTAssertTrue("\(error)".contains("x.bin is not a regular file"), "\(error)")
        }
        try FileManager.default.removeItem(at: file)
        FileManager.default.createFile(atPath: file.path, contents: nil)
        let handle = try FileHandle(forWritingTo: file)
        try handle.truncate(atOffset: 1 << 40)  // sparse: reading it whole would take a terabyte
        try handle.close()
        XCTAssertThrowsError(try GoldenBundle(url: bundle)) { error in
            XCTAssertTrue("\(error)".contains("x.bin has 1099511627776"), "\(error)")
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

    /// Manifests whose files check out but that would crash the validator or pass it
    /// without comparing anything.
    func testManifestsThatCannotBeValidatedAreRefused() throws {
        func edited(_ edit: (inout [String: Any]) -> Void) throws -> URL {
            let bundle = try copyOfConvertBundle()
            let url = bundle.appendingPathComponent("manifest.json")
            var manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as! [String: Any]
            edit(&manifest)
            try JSONSerialization.data(withJSONObject: manifest).write(to: url)
            return bundle
        }
        func tensor(_ manifest: inout [String: Any], _ key: String, _ value: Any) {
            var tensors = manifest["tensors"] as! [String: [String: Any]]
            tensors["x"]![key] = value
            manifest["tensors"] = tensors
        }
        let cases: [(String, (inout [String: Any]) -> Void)] = [
            ("shape [4294967296, 4294967296] is negative, too large", { tensor(&$0, "shape", [1 << 32, 1 << 32]) }),
            ("of more than 32 dimensions", { tensor(&$0, "shape", [Int](repeating: 1, count: 33)) }),
            ("file '../x.bin' is not a file of the bundle", { tensor(&$0, "file", "../x.bin") }),
            ("tolerances must be finite and >= 0, got -1.0", {
                var checks = $0["checks"] as! [[String: Any]]
                checks[0]["tolerance"] = ["max_abs": -1.0, "max_rel": 0.0]
                $0["checks"] = checks
            }),
        ]
        for (message, edit) in cases {
            XCTAssertThrowsError(try GoldenBundle(url: try edited(edit))) { error in
                XCTAssertTrue("\(error)".contains(message), "\(error)")
            }
        }
        // fp32 -> fp16 compared against the same values stored as fp32 passed on values alone.
        let otherDType = try GoldenBundle(url: try edited {
            var checks = $0["checks"] as! [[String: Any]]
            checks[0]["expected"] = "x_fp16_widened"
            $0["checks"] = checks
        })
        XCTAssertThrowsError(try Validator.run(otherDType)) { error in
            XCTAssertTrue("\(error)".contains("result dtype fp16 differs from expected fp32"), "\(error)")
        }
        let empty = try GoldenBundle(url: try edited { $0["checks"] = [] })
        XCTAssertThrowsError(try Validator.run(empty)) { error in
            XCTAssertTrue("\(error)".contains("the bundle has no checks"), "\(error)")
        }
    }

    /// What Python's reader refuses, Swift's refuses too: JSONDecoder alone reads 1.0 as 1,
    /// skips a byte order mark and takes null for a missing producer.
    func testManifestsPythonRefusesAreRefused() throws {
        func editedText(_ edit: (String) -> String) throws -> URL {
            let bundle = try copyOfConvertBundle()
            let url = bundle.appendingPathComponent("manifest.json")
            let text = try String(contentsOf: url, encoding: .utf8)
            let changed = edit(text)
            XCTAssertNotEqual(changed, text, "the edit changed nothing")
            try Data(changed.utf8).write(to: url)
            return bundle
        }
        let cases: [(String, (String) -> String)] = [
            ("version must be the integer 1", { $0.replacingOccurrences(of: "\"version\": 1,", with: "\"version\": 1.0,") }),
            ("shape [1009.0] is not a list of integers", { $0.replacingOccurrences(of: "1009", with: "1009.0") }),
            ("starts with a byte order mark", { "\u{FEFF}" + $0 }),
            ("expected String at producer, got null", {
                $0.replacingOccurrences(of: #""producer": "pocketml"#, with: #""producer": null, "was": "pocketml"#)
            }),
            ("missing key 'max_rel' in checks[0].tolerance", {
                $0.replacingOccurrences(of: "\"max_rel\"", with: "\"maxrel\"")
            }),
            // JSONDecoder kept the first of equal keys (a tolerance of 1e9 here), Python the last.
            ("duplicate key 'max_abs'", {
                $0.replacingOccurrences(of: "\"max_abs\":", with: "\"max_abs\": 1e9, \"max_abs\":")
            }),
        ]
        for (message, edit) in cases {
            XCTAssertThrowsError(try GoldenBundle(url: try editedText(edit))) { error in
                XCTAssertTrue("\(error)".contains(message), "\(error)")
            }
        }
        let linked = try copyOfConvertBundle()
        try linkedOutside(linked, "manifest.json")
        XCTAssertThrowsError(try GoldenBundle(url: linked)) { error in
            XCTAssertTrue("\(error)".contains("manifest.json: is a symbolic link"), "\(error)")
        }
    }

    func testNotABundle() {
        XCTAssertThrowsError(try GoldenBundle(url: URL(fileURLWithPath: "/nonexistent/bundle"))) { error in
            XCTAssertTrue("\(error)".contains("not a golden bundle"), "\(error)")
        }
    }
}
