import CPocketML
import Foundation

/// Build information, kernel-variant selection and threads of the native core.
public enum Runtime {
    public static var version: String { String(cString: pocketml_version()) }

    /// The core's description of itself: version, compiled and active ISA, threads, backends.
    public static func info() throws -> [String: Any] {
        var json: UnsafePointer<CChar>?
        try check(pocketml_info_json(&json))
        let data = Data(String(cString: json!).utf8)
        return try JSONSerialization.jsonObject(with: data) as? [String: Any] ?? [:]
    }

    /// The kernel variant that runs: "scalar", "avx2", "avx512" or "neon".
    public static func activeISA() throws -> String {
        var name: UnsafePointer<CChar>?
        try check(pocketml_active_isa(&name))
        return String(cString: name!)
    }

    /// Forces a variant this machine supports, e.g. "scalar" to compare against the reference.
    public static func setISA(_ name: String) throws {
        // The C string would end at a NUL: "scalar\0junk" set scalar, where Python refuses it.
        guard !name.contains("\0") else {
            throw PocketMLError(kind: .invalidArgument, message: "argument 'isa': expected a variant name, got \(name.debugDescription)")
        }
        try check(pocketml_set_isa(name))
    }

    public static func numThreads() throws -> Int {
        var n: Int32 = 0
        try check(pocketml_get_num_threads(&n))
        return Int(n)
    }

    public static func setNumThreads(_ n: Int) throws {
        guard let n32 = Int32(exactly: n) else {
            throw PocketMLError(kind: .invalidArgument, message: "argument 'numThreads': expected an Int32, got \(n)")
        }
        try check(pocketml_set_num_threads(n32))
    }
}

extension PocketMLError {
    init(kind: Kind, message: String) {
        self.kind = kind
        self.message = message
    }
}
