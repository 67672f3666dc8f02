/// The product of `factors`, or nil when one is negative or the product overflows Int:
/// sizes read from files or given by callers are checked before anything is allocated.
public func checkedProduct(_ factors: [Int]) -> Int? {
    var product = 1
    for factor in factors {
        guard factor >= 0 else { return nil }
        let (next, overflow) = product.multipliedReportingOverflow(by: factor)
        guard !overflow else { return nil }
        product = next
    }
    return product
}
