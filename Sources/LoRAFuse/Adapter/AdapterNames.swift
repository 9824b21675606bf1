import Foundation

/// Display names of several adapters read together. Two adapters in folders with the same name
/// (`run1/x`, `run2/x`) would otherwise both be called `x`, which breaks every per-name table
/// (and crashed `inspect --json`).
public enum AdapterNames {
    /// Names that occur more than once, sorted.
    public static func duplicates(_ names: [String]) -> [String] {
        var count: [String: Int] = [:]
        for n in names { count[n, default: 0] += 1 }
        return count.filter { $0.value > 1 }.map(\.key).sorted()
    }

    /// `adapters` with duplicate names replaced by as many trailing components of their source
    /// paths as it takes to tell them apart (`run1/x`, `run2/x`); names that are still equal (same
    /// path given twice) get `#1`, `#2` … Unique names are left alone.
    public static func disambiguated(_ adapters: [LoRAAdapter]) -> [LoRAAdapter] {
        var names = adapters.map(\.name)
        let dups = Set(duplicates(names))
        if dups.isEmpty { return adapters }
        let components: [[String]] = adapters.map { a in
            let p = ((a.sourcePath ?? a.name) as NSString).standardizingPath
            return p.split(separator: "/").map(String.init)
        }
        for dup in dups {
            let group = names.indices.filter { names[$0] == dup }
            let deepest = group.map { components[$0].count }.max() ?? 1
            var chosen = group.map { names[$0] }
            for depth in 2...max(deepest, 2) {
                chosen = group.map { components[$0].suffix(depth).joined(separator: "/") }
                if Set(chosen).count == group.count { break }
            }
            for (k, i) in group.enumerated() where !chosen[k].isEmpty { names[i] = chosen[k] }
        }
        // Same path twice, or a new name that collides with another adapter's: number them.
        for dup in Set(duplicates(names)) {
            for (k, i) in names.indices.filter({ names[$0] == dup }).enumerated() { names[i] = "\(dup)#\(k + 1)" }
        }
        var out = adapters
        for i in out.indices { out[i].name = names[i] }
        return out
    }
}
