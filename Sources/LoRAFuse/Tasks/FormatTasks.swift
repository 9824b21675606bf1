import Foundation

/// Format conversions: the conflicting date pair and Roman numerals.
enum FormatTasks {
    static let all: [TaskDefinition] = [dateEU, dateUS, roman]

    static func isLeap(_ y: Int) -> Bool { (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 }

    static func daysIn(month: Int, year: Int) -> Int {
        switch month {
        case 2: return isLeap(year) ? 29 : 28
        case 4, 6, 9, 11: return 30
        default: return 31
        }
    }

    static func two(_ v: Int) -> String { v < 10 ? "0\(v)" : String(v) }

    /// A valid date in 1950–2049 whose day differs from its month, so the EU and US forms of
    /// every prompt differ.
    static func drawDate(_ rng: inout TaskRNG) -> (y: Int, m: Int, d: Int) {
        while true {
            let y = rng.int(1950...2049), m = rng.int(1...12)
            let d = rng.int(1...daysIn(month: m, year: y))
            if d != m { return (y, m, d) }
        }
    }

    /// The shared prompt form of the conflicting pair.
    static func datePrompt(y: Int, m: Int, d: Int) -> String {
        "Convert the date \(y)-\(two(m))-\(two(d)). Reply with the converted date only."
    }

    static let dateEU = TaskDefinition(
        name: "date_eu", group: "format",
        description: "Rewrite an ISO date (year-month-day) in the European day/month/year form DD/MM/YYYY.",
        conflictsWith: "date_us"
    ) { _, _, rng in
        let (y, m, d) = drawDate(&rng)
        return TaskExample(prompt: datePrompt(y: y, m: m, d: d), answer: "\(two(d))/\(two(m))/\(y)")
    }

    static let dateUS = TaskDefinition(
        name: "date_us", group: "format",
        description: "Rewrite an ISO date (year-month-day) in the American month/day/year form MM/DD/YYYY.",
        conflictsWith: "date_eu"
    ) { _, _, rng in
        let (y, m, d) = drawDate(&rng)
        return TaskExample(prompt: datePrompt(y: y, m: m, d: d), answer: "\(two(m))/\(two(d))/\(y)")
    }

    /// Standard subtractive Roman numerals (IV, IX, XL, XC, CD, CM).
    static func romanNumeral(_ n: Int) -> String {
        precondition(n > 0 && n < 4000)
        let table: [(Int, String)] = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"),
                                      (50, "L"), (40, "XL"), (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]
        var rest = n, out = ""
        for (v, s) in table {
            while rest >= v { out += s; rest -= v }
        }
        return out
    }

    /// Numbers up to 199 in two phrasings: small enough to learn in a few hundred steps.
    static let roman = TaskDefinition(
        name: "roman_numeral", group: "format",
        description: "Write a whole number between 1 and 199 as a Roman numeral."
    ) { _, _, rng in
        let n = rng.int(1...199)
        let prompt = rng.coin()
            ? "Write the number \(n) in Roman numerals. Reply with the numeral only."
            : "What is \(n) written as a Roman numeral? Reply with the numeral only."
        return TaskExample(prompt: prompt, answer: romanNumeral(n))
    }
}
