import Foundation

/// A one-line progress bar on stderr. On a terminal it redraws in place; otherwise (CI logs,
/// pipes) it prints a plain line at every 10% so logs stay short.
final class ProgressBar: @unchecked Sendable {
    private var total: Int
    private let label: String
    private var start = Date()
    private let isTTY = isatty(2) != 0  // stderr
    private var lastDecile = -1
    private var lastDraw = Date.distantPast
    private let enabled: Bool

    init(total: Int, label: String, enabled: Bool = true) {
        self.total = max(total, 1)
        self.label = label
        self.enabled = enabled
    }

    /// Measures elapsed time (and so the ETA) from now: for work whose counted units start after
    /// a one-off setup that would otherwise weigh on every unit's rate.
    func restartClock() { start = Date() }

    func update(_ done: Int, total newTotal: Int? = nil, detail: String = "") {
        guard enabled else { return }
        if let t = newTotal { total = max(t, 1) }
        let frac = Double(done) / Double(total)
        let elapsed = Date().timeIntervalSince(start)
        let eta = done > 0 ? elapsed / Double(done) * Double(total - done) : 0
        if isTTY {
            // Redrawing more than ~20 times a second costs more than the work on small modules.
            if done < total && Date().timeIntervalSince(lastDraw) < 0.05 { return }
            lastDraw = Date()
            let width = 30
            let filled = Int(frac * Double(width))
            let bar = String(repeating: "█", count: filled) + String(repeating: "░", count: width - filled)
            var line = "\r\(label) \(bar) \(done)/\(total) \(Self.fmt(elapsed)) ETA \(Self.fmt(eta))"
            if !detail.isEmpty { line += "  " + String(detail.suffix(40)) }
            FileHandle.standardError.write(Data((line + "\u{1B}[K").utf8))
            if done >= total { FileHandle.standardError.write(Data("\n".utf8)) }
        } else {
            // In logs, short work gets no lines at all; long work a line per 10%.
            let decile = Int(frac * 10)
            if decile != lastDecile && elapsed > 1 {
                lastDecile = decile
                FileHandle.standardError.write(Data("\(label) \(done)/\(total) (\(Int(frac * 100))%) \(Self.fmt(elapsed)) ETA \(Self.fmt(eta))\n".utf8))
            }
        }
    }

    static func fmt(_ s: Double) -> String {
        if s < 60 { return String(format: "%.1fs", s) }
        return String(format: "%dm%02ds", Int(s) / 60, Int(s) % 60)
    }
}

func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
