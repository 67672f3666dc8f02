import PocketML

/// Typed access to a check's attributes and input tensors, with errors that name
/// the check and what is missing.
extension GoldenCheck {
    func fail(_ problem: String) -> GoldenBundleError {
        GoldenBundleError(message: "check '\(name)' (\(op)): \(problem)")
    }

    func int(_ key: String) throws -> Int {
        guard let value = attrs[key]?.number, value == value.rounded(), abs(value) < 1e15 else {
            throw fail("attrs.\(key) must be an integer, got \(attrs[key].map { "\($0)" } ?? "nothing")")
        }
        return Int(value)
    }

    func number(_ key: String) throws -> Double {
        guard let value = attrs[key]?.number else {
            throw fail("attrs.\(key) must be a number, got \(attrs[key].map { "\($0)" } ?? "nothing")")
        }
        return value
    }

    func string(_ key: String) throws -> String {
        guard let value = attrs[key]?.string else {
            throw fail("attrs.\(key) must be a string, got \(attrs[key].map { "\($0)" } ?? "nothing")")
        }
        return value
    }

    func bool(_ key: String, default fallback: Bool) throws -> Bool {
        guard let value = attrs[key] else { return fallback }
        guard case .bool(let flag) = value else { throw fail("attrs.\(key) must be true or false, got \(value)") }
        return flag
    }

    func strings(_ key: String) throws -> [String] {
        guard case .list(let items) = attrs[key] else { throw fail("attrs.\(key) must be a list of strings") }
        let names = items.compactMap(\.string)
        guard names.count == items.count else { throw fail("attrs.\(key) must be a list of strings") }
        return names
    }

    /// The input tensor at `index`, of `dtypes` and, when given, of `shape`.
    func input(_ index: Int, in bundle: GoldenBundle, dtypes: [DType], shape: [Int]? = nil) throws -> GoldenTensor {
        guard index < inputs.count else { throw fail("expected at least \(index + 1) inputs, got \(inputs.count)") }
        let tensor = bundle.tensors[inputs[index]]!  // GoldenBundle checked that every input exists
        guard dtypes.contains(tensor.dtype) else {
            throw fail("input '\(inputs[index])' must be \(dtypes.map(\.rawValue).joined(separator: " or ")), "
                + "got \(tensor.dtype.rawValue)")
        }
        if let shape, tensor.shape != shape {
            throw fail("input '\(inputs[index])' must have shape \(shape), got \(tensor.shape)")
        }
        return tensor
    }

    /// A quantized weight whose arrays are inputs[first...], named in the order of `arrays`
    /// (packed, scales, zero_points, lut: the ones that exist), with kind, bits, group_size, n, k
    /// in `attrs` under `prefix`.
    func quantizedWeight(first: Int, arrays: [String], in bundle: GoldenBundle, attrPrefix prefix: String = "")
        throws -> QuantizedWeight
    {
        guard let kind = QuantizedWeight.Kind(rawValue: try string(prefix + "kind")) else {
            throw fail("attrs.\(prefix)kind must be 'affine' or 'lut'")
        }
        var tensors: [String: GoldenTensor] = [:]
        for (offset, name) in arrays.enumerated() {
            guard ["packed", "scales", "zero_points", "lut"].contains(name) else {
                throw fail("unknown quantized array '\(name)' (expected packed, scales, zero_points, lut)")
            }
            tensors[name] = try input(first + offset, in: bundle, dtypes: DType.allCases)
        }
        guard let packed = tensors["packed"], packed.dtype == .uint8 else { throw fail("needs a uint8 'packed' array") }
        return QuantizedWeight(
            kind: kind, bits: try int(prefix + "bits"), rows: try int(prefix + "n"), cols: try int(prefix + "k"),
            groupSize: try int(prefix + "group_size"), packed: packed.bytes,
            scales: tensors["scales"]?.bytes, scaleType: tensors["scales"]?.dtype ?? .fp16,
            zeroPoints: tensors["zero_points"]?.bytes, lut: tensors["lut"]?.bytes,
            lutType: tensors["lut"]?.dtype ?? .fp16)
    }
}
