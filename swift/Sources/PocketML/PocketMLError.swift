import CPocketML

/// A failed pocketml call: the C ABI's status and the message saying which
/// argument was wrong, what was expected and what was given.
public struct PocketMLError: Error, CustomStringConvertible, Equatable {
    public enum Kind: Equatable {
        case invalidArgument, type, runtime, notImplemented, outOfMemory, unknown(Int32)
    }

    public let kind: Kind
    public let message: String

    public var description: String { "pocketml: \(message)" }

    init(status: pocketml_status) {
        switch status {
        case POCKETML_ERROR_INVALID_ARGUMENT: kind = .invalidArgument
        case POCKETML_ERROR_TYPE: kind = .type
        case POCKETML_ERROR_RUNTIME: kind = .runtime
        case POCKETML_ERROR_NOT_IMPLEMENTED: kind = .notImplemented
        case POCKETML_ERROR_OUT_OF_MEMORY: kind = .outOfMemory
        default: kind = .unknown(Int32(bitPattern: status.rawValue))
        }
        message = String(cString: pocketml_last_error())
    }
}

/// Throws the thread's last error unless `status` is POCKETML_OK.
@inline(__always)
func check(_ status: pocketml_status) throws {
    if status != POCKETML_OK { throw PocketMLError(status: status) }
}
