import CPocketML

/// Element types shared with the C++ core, Python and the golden bundles.
public enum DType: String, CaseIterable, Sendable {
    case fp32, fp16, bf16, int8, uint8, int32, int64

    var cValue: pocketml_dtype {
        switch self {
        case .fp32: return POCKETML_FP32
        case .fp16: return POCKETML_FP16
        case .bf16: return POCKETML_BF16
        case .int8: return POCKETML_INT8
        case .uint8: return POCKETML_UINT8
        case .int32: return POCKETML_INT32
        case .int64: return POCKETML_INT64
        }
    }

    /// Bytes per element, as the core reports it.
    public var size: Int {
        var out = 0
        _ = pocketml_dtype_size(cValue, &out)
        return out
    }
}
