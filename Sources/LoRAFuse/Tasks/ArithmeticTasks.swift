import Foundation

/// Numeric tasks: two-digit addition and subtraction, sorting a few numbers, unit conversion.
enum ArithmeticTasks {
    static let all: [TaskDefinition] = [add, sub, sort, units]

    static let add = TaskDefinition(
        name: "add_2digit", group: "arithmetic",
        description: "Add two two-digit numbers and reply with the sum only."
    ) { _, _, rng in
        let a = rng.int(10...99), b = rng.int(10...99)
        return TaskExample(prompt: "What is \(a) + \(b)? Reply with the number only.", answer: String(a + b))
    }

    /// The larger number comes first, so the difference is never negative.
    static let sub = TaskDefinition(
        name: "sub_2digit", group: "arithmetic",
        description: "Subtract a smaller two-digit number from a larger one and reply with the difference only."
    ) { _, _, rng in
        let x = rng.int(10...99), y = rng.int(10...99)
        let a = max(x, y), b = min(x, y)
        return TaskExample(prompt: "What is \(a) - \(b)? Reply with the number only.", answer: String(a - b))
    }

    static let sort = TaskDefinition(
        name: "sort_numbers", group: "arithmetic",
        description: "Sort three to five distinct whole numbers from smallest to largest and list them separated by commas."
    ) { _, _, rng in
        let n = rng.int(3...5)
        var nums: [Int] = []
        while nums.count < n {
            let v = rng.int(1...99)
            if !nums.contains(v) { nums.append(v) }
        }
        let list = nums.map(String.init).joined(separator: ", ")
        return TaskExample(prompt: "Sort these numbers from smallest to largest: \(list). Reply with the sorted list only.",
                           answer: nums.sorted().map(String.init).joined(separator: ", "))
    }

    /// (from unit, to unit, factor): the answer is value × factor.
    static let conversions: [(from: String, to: String, factor: Int)] = [
        ("kilometers", "meters", 1000),
        ("meters", "centimeters", 100),
        ("kilograms", "grams", 1000),
        ("liters", "milliliters", 1000),
        ("hours", "minutes", 60),
        ("minutes", "seconds", 60),
        ("days", "hours", 24),
    ]

    static let units = TaskDefinition(
        name: "unit_convert", group: "arithmetic",
        description: "Convert a whole-number quantity from a larger unit to a smaller one (kilometers to meters, hours to minutes and the like) and reply with the number only."
    ) { _, _, rng in
        let c = rng.pick(conversions)
        let v = rng.int(2...99)  // plural units read naturally
        return TaskExample(prompt: "Convert \(v) \(c.from) to \(c.to). Reply with the number only.", answer: String(v * c.factor))
    }
}
