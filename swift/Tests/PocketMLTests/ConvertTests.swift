import CPocketML
import XCTest

@testable import PocketML

final class ConvertTests: XCTestCase {
    func testKnownHalfBitPatterns() throws {
        let values: [Float] = [0, -0.0, 1, -2, 65504, 65520, .infinity, 1.0 / 16384, 5.960464477539063e-08, 1e-8]
        let expected: [UInt16] = [0x0000, 0x8000, 0x3C00, 0xC000, 0x7BFF, 0x7C00, 0x7C00, 0x0400, 0x0001, 0x0000]
        XCTAssertEqual(try Convert.toHalfBits(values), expected)
    }

    func testBFloat16RoundsTiesToEven() throws {
        let tieDown = Float(bitPattern: 0x3F80_8000)  // halfway between 0x3F80 and 0x3F81: keep the even 0x3F80
        let tieUp = Float(bitPattern: 0x3F81_8000)  // halfway between 0x3F81 and 0x3F82: go to the even 0x3F82
        let aboveTie = Float(bitPattern: 0x3F80_8001)
        XCTAssertEqual(try Convert.toBFloat16Bits([tieDown, tieUp, aboveTie]), [0x3F80, 0x3F82, 0x3F81])
    }

    func testEveryFiniteHalfRoundTripsExactlyOnEveryVariant() throws {
        let finite = (0...UInt16.max).filter { ($0 & 0x7C00) != 0x7C00 }
        let previous = try Runtime.activeISA()
        defer { try? Runtime.setISA(previous) }
        for isa in try Runtime.info()["supported_isas"] as? [String] ?? [] {
            try Runtime.setISA(isa)
            let widened = try Convert.floats(fromHalfBits: finite)
            XCTAssertEqual(try Convert.toHalfBits(widened), finite, "variant \(isa)")
        }
    }

    func testNaNStaysNaN() throws {
        let out = try Convert.floats(fromBFloat16Bits: try Convert.toBFloat16Bits([.nan, -.nan]))
        XCTAssertTrue(out.allSatisfy { $0.isNaN })
    }

    func testEmptyInputIsFine() throws {
        XCTAssertEqual(try Convert.toHalfBits([]), [])
    }

    func testUnsupportedTargetTypeThrowsWithMessage() throws {
        var source: [Float] = [1, 2]
        var destination = [Int8](repeating: 0, count: 2)
        XCTAssertThrowsError(try Convert.raw(&source, .fp32, into: &destination, .int8, count: 2)) { error in
            let e = error as! PocketMLError
            XCTAssertEqual(e.kind, .type)
            XCTAssertTrue(e.message.contains("expected dtype fp32, fp16, bf16, got int8"), e.message)
        }
    }

    func testInvalidEnumValueFromCIsRejected() throws {
        var source: [Float] = [1]
        var destination: [UInt16] = [0]
        let status = pocketml_convert(&source, pocketml_dtype(rawValue: 42), &destination, POCKETML_FP16, 1)
        XCTAssertEqual(status, POCKETML_ERROR_TYPE)
        XCTAssertTrue(String(cString: pocketml_last_error()).contains("got 42"))
    }

    func testNullPointerIsAnErrorNotACrash() throws {
        var destination: [UInt16] = [0]
        let status = pocketml_convert(nil, POCKETML_FP32, &destination, POCKETML_FP16, 1)
        XCTAssertEqual(status, POCKETML_ERROR_INVALID_ARGUMENT)
        XCTAssertEqual(String(cString: pocketml_last_error()), "argument 'src': expected a non-NULL pointer, got NULL")
    }
}
