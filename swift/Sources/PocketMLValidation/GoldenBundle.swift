import Foundation
import PocketML

/// A bundle that is missing, corrupt or inconsistent; the message names the file and the problem.
public struct GoldenBundleError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public var description: String { message }
}

/// A tensor of a golden bundle: raw little-endian bytes in C order.
public struct GoldenTensor {
    public let dtype: DType
    public let shape: [Int]
    public let bytes: [UInt8]

    public var count: Int { shape.reduce(1, *) }

    /// Every element widened to Float (exact for fp32, fp16, bf16 and 8-bit integers).
    public func floats() throws -> [Float] {
        switch dtype {
        case .fp32:
            return bytes.withUnsafeBytes { Array($0.bindMemory(to: Float.self)) }
        case .fp16, .bf16:
            let bits = bytes.withUnsafeBytes { Array($0.bindMemory(to: UInt16.self)) }
            return dtype == .fp16 ? try Convert.floats(fromHalfBits: bits) : try Convert.floats(fromBFloat16Bits: bits)
        case .int8:
            return bytes.map { Float(Int8(bitPattern: $0)) }
        case .uint8:
            return bytes.map { Float($0) }
        case .int32:
            return bytes.withUnsafeBytes { $0.bindMemory(to: Int32.self).map { Float($0) } }
        case .int64:
            return bytes.withUnsafeBytes { $0.bindMemory(to: Int64.self).map { Float($0) } }
        }
    }
}

/// One comparison the bundle asks for: run `op` on `inputs` with `attrs`, compare with `expected`.
public struct GoldenCheck: Decodable {
    public struct Tolerance: Decodable {
        public let maxAbs: Double
        public let maxRel: Double
        enum CodingKeys: String, CodingKey {
            case maxAbs = "max_abs"
            case maxRel = "max_rel"
        }
    }

    public let name: String
    public let op: String
    public let inputs: [String]
    public let attrs: [String: AttributeValue]
    public let expected: String
    public let tolerance: Tolerance
}

/// The JSON values an attribute may hold.
public enum AttributeValue: Decodable, Equatable {
    case string(String)
    case number(Double)
    case bool(Bool)
    case list([AttributeValue])

    public init(from decoder: Decoder) throws {
        let container = try decoder.singleValueContainer()
        if let value = try? container.decode(Bool.self) {
            self = .bool(value)
        } else if let value = try? container.decode(Double.self) {
            self = .number(value)
        } else if let value = try? container.decode(String.self) {
            self = .string(value)
        } else {
            self = .list(try container.decode([AttributeValue].self))
        }
    }

    public var string: String? { if case .string(let s) = self { return s } else { return nil } }
    public var number: Double? { if case .number(let n) = self { return n } else { return nil } }
}

/// A golden bundle directory (format: docs/formats.md), verified on load: format
/// and version, every tensor file present with the size its shape needs and the
/// sha256 the manifest records, and every check naming tensors that exist.
public struct GoldenBundle {
    public static let format = "pocketml-golden-bundle"
    public static let version = 1
    /// As Python's reader: no bundle tensor needs more.
    public static let maxDimensions = 32

    public let url: URL
    public let name: String
    public let producer: String
    public let tensors: [String: GoldenTensor]
    public let checks: [GoldenCheck]

    private struct Manifest: Decodable {
        struct Entry: Decodable {
            let file: String
            let dtype: String
            let shape: [Int]
            let sha256: String
        }

        let format: String
        let version: Int
        let name: String
        let producer: String
        let tensors: [String: Entry]
        let checks: [GoldenCheck]
    }

    public init(url: URL) throws {
        self.url = url
        let manifestURL = url.appendingPathComponent("manifest.json")
        // attributesOfItem does not follow a symbolic link: a linked manifest is refused like a linked tensor file.
        if let attributes = try? FileManager.default.attributesOfItem(atPath: manifestURL.path),
            attributes[.type] as? FileAttributeType == .typeSymbolicLink
        {
            throw GoldenBundleError(message: "\(manifestURL.path): is a symbolic link")
        }
        guard let data = FileManager.default.contents(atPath: manifestURL.path) else {
            throw GoldenBundleError(message: "\(url.path): not a golden bundle (no manifest.json)")
        }
        // JSON text carries no byte order mark (RFC 8259), and Python's reader refuses one.
        if data.starts(with: [0xEF, 0xBB, 0xBF]) {
            throw GoldenBundleError(message: "\(manifestURL.path): invalid manifest (starts with a byte order mark)")
        }
        let manifest: Manifest
        do {
            manifest = try JSONDecoder().decode(Manifest.self, from: data)
            try Self.requireIntegerLiterals(data)
            if let key = Self.firstDuplicateKey(in: data) {
                throw GoldenBundleError(message: "duplicate key '\(key)'")
            }
        } catch let error as DecodingError {
            throw GoldenBundleError(message: "\(manifestURL.path): invalid manifest (\(Self.describe(error)))")
        } catch let error as GoldenBundleError {
            throw GoldenBundleError(message: "\(manifestURL.path): invalid manifest (\(error.message))")
        } catch {
            throw GoldenBundleError(message: "\(manifestURL.path): invalid manifest (\(error))")
        }
        guard manifest.format == Self.format, manifest.version == Self.version else {
            throw GoldenBundleError(
                message: "\(manifestURL.path): expected format \(Self.format) version \(Self.version), "
                    + "got \(manifest.format) version \(manifest.version)")
        }
        var tensors: [String: GoldenTensor] = [:]
        for (tensorName, entry) in manifest.tensors.sorted(by: { $0.key < $1.key }) {  // deterministic first error
            guard let dtype = DType(rawValue: entry.dtype) else {
                throw GoldenBundleError(message: "\(url.path): tensor '\(tensorName)' has unknown dtype \(entry.dtype)")
            }
            guard !entry.file.isEmpty, !entry.file.contains("/"), entry.file != ".", entry.file != ".." else {
                throw GoldenBundleError(
                    message: "\(url.path): tensor '\(tensorName)': file '\(entry.file)' is not a file of the bundle")
            }
            let fileURL = url.appendingPathComponent(entry.file)
            // attributesOfItem does not follow a symbolic link, whose target may lie outside the bundle.
            guard let attributes = try? FileManager.default.attributesOfItem(atPath: fileURL.path) else {
                throw GoldenBundleError(message: "\(url.path): tensor '\(tensorName)': missing file \(entry.file)")
            }
            guard attributes[.type] as? FileAttributeType == .typeRegular else {
                throw GoldenBundleError(
                    message: "\(url.path): tensor '\(tensorName)': file \(entry.file) is not a regular file "
                        + "(a symbolic link, a directory or a device)")
            }
            guard entry.shape.count <= Self.maxDimensions, let needed = checkedProduct(entry.shape + [dtype.size])
            else {
                throw GoldenBundleError(
                    message: "\(url.path): tensor '\(tensorName)': shape \(entry.shape) is negative, too large "
                        + "or of more than \(Self.maxDimensions) dimensions")
            }
            // The size first: a huge file is refused unread.
            let size = (attributes[.size] as? NSNumber)?.intValue ?? -1
            guard size == needed, let contents = FileManager.default.contents(atPath: fileURL.path) else {
                throw GoldenBundleError(
                    message: "\(url.path): tensor '\(tensorName)': shape \(entry.shape) \(entry.dtype) needs "
                        + "\(needed) bytes, \(entry.file) has \(size)")
            }
            let bytes = [UInt8](contents)
            guard bytes.count == needed else {
                throw GoldenBundleError(
                    message: "\(url.path): tensor '\(tensorName)': shape \(entry.shape) \(entry.dtype) needs "
                        + "\(needed) bytes, \(entry.file) has \(bytes.count)")
            }
            guard try Checksum.sha256(bytes) == entry.sha256 else {
                throw GoldenBundleError(
                    message: "\(url.path): tensor '\(tensorName)': sha256 mismatch for \(entry.file) (corrupt file)")
            }
            tensors[tensorName] = GoldenTensor(dtype: dtype, shape: entry.shape, bytes: bytes)
        }
        for check in manifest.checks {
            for ref in check.inputs + [check.expected] where tensors[ref] == nil {
                throw GoldenBundleError(message: "\(url.path): check '\(check.name)' names missing tensor '\(ref)'")
            }
            for bound in [check.tolerance.maxAbs, check.tolerance.maxRel] where !(bound.isFinite && bound >= 0) {
                throw GoldenBundleError(
                    message: "\(url.path): check '\(check.name)': tolerances must be finite and >= 0, got \(bound)")
            }
        }
        self.name = manifest.name
        self.producer = manifest.producer
        self.tensors = tensors
        self.checks = manifest.checks
    }

    /// `version` and every shape entry written as integers: JSONDecoder reads 1.0 as the Int 1,
    /// which the format (and Python's reader) refuses.
    private static func requireIntegerLiterals(_ data: Data) throws {
        guard let manifest = try JSONSerialization.jsonObject(with: data) as? [String: Any] else { return }
        // An integer JSON number parses to an NSNumber of an integer type; 1.0 and 1e0 to a double, true to a char.
        func isInteger(_ value: Any?) -> Bool {
            guard let number = value as? NSNumber else { return false }
            return ["i", "s", "l", "q", "I", "S", "L", "Q"].contains(String(cString: number.objCType))
        }
        guard isInteger(manifest["version"]) else {
            throw GoldenBundleError(message: "version must be the integer 1, got \(manifest["version"] ?? "nothing")")
        }
        for case let (name, entry as [String: Any]) in manifest["tensors"] as? [String: Any] ?? [:] {
            let shape = entry["shape"] as? [Any] ?? []
            guard shape.allSatisfy(isInteger) else {
                throw GoldenBundleError(message: "tensor '\(name)': shape \(shape) is not a list of integers")
            }
        }
    }

    /// The first key repeated within one object of valid JSON `data`: JSONDecoder keeps the
    /// first of equal keys and Python's json the last, so the two readers would check
    /// different values (Python refuses them). Keys compare as written, escapes and all.
    static func firstDuplicateKey(in data: Data) -> String? {
        let bytes = [UInt8](data)
        let quote = UInt8(ascii: "\""), backslash = UInt8(ascii: "\\")
        var objects: [(keys: Set<[UInt8]>, expectingKey: Bool)?] = []  // nil: an array
        var i = 0
        while i < bytes.count {
            switch bytes[i] {
            case UInt8(ascii: "{"): objects.append((keys: [], expectingKey: true))
            case UInt8(ascii: "["): objects.append(nil)
            case UInt8(ascii: "}"), UInt8(ascii: "]"): _ = objects.popLast()
            case UInt8(ascii: ","): if objects.last??.keys != nil { objects[objects.count - 1]!.expectingKey = true }
            case quote:
                var end = i + 1
                while end < bytes.count, bytes[end] != quote { end += bytes[end] == backslash ? 2 : 1 }
                if let object = objects.last ?? nil, object.expectingKey {
                    let key = Array(bytes[(i + 1)..<min(end, bytes.count)])
                    if object.keys.contains(key) { return String(decoding: key, as: UTF8.self) }
                    objects[objects.count - 1] = (keys: object.keys.union([key]), expectingKey: false)
                }
                i = end
            default: break
            }
            i += 1
        }
        return nil
    }

    /// A decoding error as the key path it is about and what was wrong there.
    private static func describe(_ error: DecodingError) -> String {
        func path(_ keys: [CodingKey]) -> String {
            let text = keys.map { $0.intValue.map { "[\($0)]" } ?? ".\($0.stringValue)" }.joined()
            return text.isEmpty ? "the top level" : String(text.drop(while: { $0 == "." }))
        }
        switch error {
        case .keyNotFound(let key, let context):
            return "missing key '\(key.stringValue)' in \(path(context.codingPath))"
        case .typeMismatch(let type, let context):
            return "expected \(type) at \(path(context.codingPath))"
        case .valueNotFound(let type, let context):
            return "expected \(type) at \(path(context.codingPath)), got null"
        case .dataCorrupted(let context):
            return "\(context.debugDescription) at \(path(context.codingPath))"
        @unknown default:
            return "\(error)"
        }
    }
}
