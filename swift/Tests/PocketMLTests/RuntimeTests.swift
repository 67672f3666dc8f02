import XCTest

@testable import PocketML

final class RuntimeTests: XCTestCase {
    func testInfoDescribesTheBuild() throws {
        let info = try Runtime.info()
        XCTAssertEqual(info["version"] as? String, Runtime.version)
        let supported = info["supported_isas"] as? [String] ?? []
        XCTAssertTrue(supported.contains("scalar"))
        XCTAssertTrue(supported.contains(try Runtime.activeISA()))
        #if !canImport(Metal)
            XCTAssertEqual(info["metal_available"] as? Bool, false)
        #endif
    }

    func testUnknownISAThrows() {
        XCTAssertThrowsError(try Runtime.setISA("mmx")) { error in
            XCTAssertEqual((error as? PocketMLError)?.kind, .invalidArgument)
            XCTAssertTrue((error as? PocketMLError)?.message.contains("argument 'isa'") ?? false)
        }
        // The C string ended at the NUL: this set scalar, where Python refuses it.
        XCTAssertThrowsError(try Runtime.setISA("scalar\0junk")) { error in
            XCTAssertTrue("\(error)".contains("expected a variant name"), "\(error)")
        }
    }

    func testThreads() throws {
        let original = try Runtime.numThreads()
        defer { try? Runtime.setNumThreads(original) }
        try Runtime.setNumThreads(3)
        XCTAssertEqual(try Runtime.numThreads(), 3)
        XCTAssertThrowsError(try Runtime.setNumThreads(0))
    }

    func testDTypeSizes() {
        XCTAssertEqual(DType.allCases.map(\.size), [4, 2, 2, 1, 1, 4, 8])
    }
}
