import CPocketML

public enum Checksum {
    /// SHA-256 of `bytes` as lowercase hex, computed by the core (Swift on Linux has no hash library).
    public static func sha256(_ bytes: [UInt8]) throws -> String {
        var hex = [CChar](repeating: 0, count: 65)
        try bytes.withUnsafeBytes { buffer in
            try check(pocketml_sha256(buffer.baseAddress, buffer.count, &hex))
        }
        return String(cString: hex)
    }
}
