import Dispatch

/// Shares a buffer with `concurrentPerform` workers that each write their own disjoint slots.
struct UnsafeSendableBuffer<T>: @unchecked Sendable {
    let base: UnsafeMutablePointer<T>
}

public enum Parallel {
    /// `items.map(transform)` spread over the cores; results land at their own index, so the
    /// output does not depend on scheduling.
    public static func map<T: Sendable, U>(_ items: [T], _ transform: @Sendable (T) -> U) -> [U] {
        if items.count < 2 { return items.map(transform) }
        var out = [U?](repeating: nil, count: items.count)
        out.withUnsafeMutableBufferPointer { slots in
            let buf = UnsafeSendableBuffer(base: slots.baseAddress!)
            DispatchQueue.concurrentPerform(iterations: items.count) { i in
                (buf.base + i).pointee = transform(items[i])
            }
        }
        return out.map { $0! }
    }
}
