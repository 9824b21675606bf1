// swift-tools-version:6.0
import PackageDescription

// Linear algebra comes from the platform: Accelerate on Apple systems, OpenBLAS + LAPACKE
// (Debian: libopenblas-dev liblapacke-dev) elsewhere. The C targets below are only module maps.
let linalgDeps: [Target.Dependency] = [
    .target(name: "CBLAS", condition: .when(platforms: [.linux])),
    .target(name: "CLAPACKE", condition: .when(platforms: [.linux])),
]

let package = Package(
    name: "lorafuse",
    // macOS 15 for the Synchronization module's atomics (the compute pool).
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "LoRAFuse", targets: ["LoRAFuse"]),
        .executable(name: "lorafuse", targets: ["lorafuse"]),
        .executable(name: "lorafuse-bench", targets: ["lorafuse-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
        // The HTTP server (`lorafuse serve`) and its tests.
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.28.1"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.37.0"),
    ],
    targets: [
        .systemLibrary(name: "CBLAS", path: "Sources/CBLAS",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CLAPACKE", path: "Sources/CLAPACKE",
                       providers: [.apt(["liblapacke-dev"])]),
        // Quantized mat-vec kernels in plain C11 (intrinsics for AVX2, AVX-512 VNNI and NEON, each
        // compiled per function and chosen at run time; no -march flags), see its cquant.h.
        // Optimised in debug builds too: at -O0 every intrinsic goes through memory and the fast
        // kernels run ~100x slower than at -O2 (slower than the scalar reference), which would make
        // the debug test suite crawl wherever the engine uses them.
        .target(name: "CQuant", path: "Sources/CQuant",
                cSettings: [.unsafeFlags(["-O2"])],
                linkerSettings: [.linkedLibrary("m", .when(platforms: [.linux]))]),
        .target(
            name: "LoRAFuse",
            dependencies: linalgDeps + ["CQuant", .product(name: "Yams", package: "Yams")],
            // Plain -O in release: the bounds and overflow checks stay in what users run, the same
            // build the fuzz and parity tests run on (`make test`).
            path: "Sources/LoRAFuse"
        ),
        // The OpenAI-compatible HTTP server over LoRAFuse's Serve/ (routes, SSE, metrics, errors).
        .target(
            name: "LoRAFuseServer",
            dependencies: [
                "LoRAFuse",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Sources/LoRAFuseServer"
        ),
        .executableTarget(
            name: "lorafuse",
            dependencies: ["LoRAFuse", "LoRAFuseServer", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/lorafuse"
        ),
        .executableTarget(
            name: "lorafuse-bench",
            // The serve benchmark's client is AsyncHTTPClient, already built for the tests.
            dependencies: ["LoRAFuse", .product(name: "ArgumentParser", package: "swift-argument-parser"),
                           .product(name: "AsyncHTTPClient", package: "async-http-client")],
            path: "Benchmarks/lorafuse-bench"
        ),
        .testTarget(
            name: "LoRAFuseTests",
            // The CLI tests run the built `lorafuse` binary, so it must be built with the tests.
            dependencies: ["LoRAFuse", "LoRAFuseServer", "lorafuse",
                           .product(name: "AsyncHTTPClient", package: "async-http-client")],
            path: "Tests/LoRAFuseTests",
            resources: [.copy("Fixtures")]
        ),
    ]
)
