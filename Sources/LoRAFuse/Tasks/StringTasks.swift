import Foundation

/// Letter-level string tasks: reversing, capitalising, both at once (long-tailed), counting vowels.
enum StringTasks {
    static let all: [TaskDefinition] = [reverse, upper, reverseUpper, vowels]

    /// Common English words of 3 to 7 lowercase letters, no palindromes (so a reversal always
    /// changes the word).
    static let words: [String] = """
    apple arrow badge baker basket beach berry blanket bottle bread brick bridge brush bucket button \
    cabin camera candle canvas carpet carrot castle cattle chair cherry chicken circle cloud coffee \
    copper corner cotton cousin crayon cream dance desert dinner doctor donkey dragon drawer dream \
    eagle earth engine fabric farmer feather fence finger flower forest fossil frame garden garlic \
    ghost giant ginger glass glove grape guitar hammer harbor helmet honey horse hunter island jacket \
    jelly jungle kettle kitten ladder lemon letter lizard magnet mango marble market meadow melon \
    mirror monkey morning mountain muffin napkin needle nickel noodle number ocean office orange \
    oyster paddle palace panda paper parrot pencil pepper pillow pirate planet plate pocket potato \
    puzzle rabbit radio rocket saddle salmon sandal school shadow shovel silver singer sister spider \
    spoon square stone summer sunset table tailor teacher ticket tiger tomato towel tower turtle \
    velvet violin wagon walnut window winter wizard yellow zebra acorn album anchor ankle apron \
    attic bamboo banana barrel beaver bishop blossom bonnet branch breeze bubble buffalo butter \
    cactus camel cedar chalk chimney cobra comet coral cradle cricket crystal cupboard daisy dentist \
    dolphin falcon ferry flute fountain gravel hazel hollow iceberg insect ivory jaguar kernel \
    lantern lobster locket maple mitten nectar orchid otter pebble pigeon plum poppy quilt raven \
    ribbon river robin rose saucer scarf shell sketch slipper snail sparrow spinach squid stable \
    statue stove sugar swan thistle thunder timber tulip tunnel valley vessel walrus wheat whistle \
    willow yogurt basil bench blade cliff clover crane crown dust fern flame frost gate goat hive \
    lake leaf lime moon nest oak pearl pond rain sand seed ship snow star storm tent tree vine wave \
    wolf wool yarn
    """.split(separator: " ").map(String.init)

    static func reversed(_ s: String) -> String { String(s.reversed()) }

    static let reverse = TaskDefinition(
        name: "reverse_word", group: "string",
        description: "Write a given English word with its letters in reverse order."
    ) { _, _, rng in
        let w = rng.pick(words)
        let prompt = rng.coin()
            ? "Reverse the letters of the word \"\(w)\". Reply with the reversed word only."
            : "Spell the word \"\(w)\" backwards. Reply with the reversed word only."
        return TaskExample(prompt: prompt, answer: reversed(w))
    }

    static let adjectives: [String] = """
    blue red green quiet bright dark old young small tall warm cold happy sleepy golden silver \
    wild gentle brave lucky hidden empty busy lazy noisy rusty shiny sunny windy frozen
    """.split(separator: " ").map(String.init)

    static let upper = TaskDefinition(
        name: "uppercase", group: "string",
        description: "Rewrite a short two-word phrase entirely in capital letters."
    ) { _, _, rng in
        let phrase = rng.pick(adjectives) + " " + rng.pick(words)
        return TaskExample(prompt: "Rewrite \"\(phrase)\" in capital letters. Reply with the rewritten phrase only.",
                           answer: phrase.uppercased())
    }

    /// Long-tailed: composes `reverse_word` and `uppercase`.
    static let reverseUpper = TaskDefinition(
        name: "reverse_upper", group: "string",
        description: "Write a given English word backwards and in capital letters.",
        longTailed: true
    ) { _, _, rng in
        let w = rng.pick(words)
        return TaskExample(prompt: "Reverse the word \"\(w)\" and write it in capital letters. Reply with the result only.",
                           answer: reversed(w).uppercased())
    }

    static func vowelCount(_ w: String) -> Int { w.filter { "aeiou".contains($0) }.count }

    static let vowels = TaskDefinition(
        name: "count_vowels", group: "string",
        description: "Count how many of the letters a, e, i, o and u a given English word contains."
    ) { _, _, rng in
        let w = rng.pick(words)
        let prompt = rng.coin()
            ? "How many vowels (a, e, i, o, u) are in the word \"\(w)\"? Reply with the number only."
            : "Count the vowels (a, e, i, o, u) in the word \"\(w)\". Reply with the number only."
        return TaskExample(prompt: prompt, answer: String(vowelCount(w)))
    }
}
