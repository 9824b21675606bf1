import Foundation
import LoRAFuse
import Prometheus

/// The server's Prometheus metrics: requests and errors, tokens in and out, time to first token
/// and per-token latency, queue depth, batch size, requests per model (base, adapter, fusion) and
/// adapter residency, loads, evictions and fusions built, key/value blocks held and sequences preempted for memory. Its own registry (no global bootstrap), emitted by `GET /metrics`.
public final class ServeMetrics: ServeObserver, @unchecked Sendable {
    public let registry = PrometheusCollectorRegistry()
    private let promptTokens, completionTokens: Counter
    private let ttft, interToken, batchSize: ValueHistogram
    private let queueDepth, running, adaptersResident, adapterBytes, adaptersRegistered: Gauge
    private let kvBlocks, kvBytes, kvBlocksPeak: Gauge
    private let adapterLoads, adapterEvictions, fusionsBuilt, preemptions, prefixReused: Counter
    private var seenReused = 0
    /// The registry's counters when last rendered (the Prometheus counters advance by the difference).
    private var seen = (loads: 0, fusions: 0, evictions: 0)
    private let lock = NSLock()

    public init() {
        promptTokens = registry.makeCounter(descriptor: d("lorafuse_prompt_tokens_total", "Prompt tokens of admitted requests."))
        completionTokens = registry.makeCounter(descriptor: d("lorafuse_completion_tokens_total", "Tokens generated."))
        ttft = registry.makeValueHistogram(descriptor: d("lorafuse_time_to_first_token_seconds", "From submission to the first generated token."), buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30])
        interToken = registry.makeValueHistogram(descriptor: d("lorafuse_time_per_output_token_seconds", "Between consecutive tokens of one sequence."), buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1])
        batchSize = registry.makeValueHistogram(descriptor: d("lorafuse_decode_batch_size", "Sequences in each decode step."), buckets: [1, 2, 4, 8, 16, 32, 64, 128])
        queueDepth = registry.makeGauge(descriptor: d("lorafuse_queue_depth", "Requests waiting for a place in the batch."))
        running = registry.makeGauge(descriptor: d("lorafuse_running_sequences", "Sequences being decoded."))
        adaptersRegistered = registry.makeGauge(descriptor: d("lorafuse_adapters_registered", "Adapters and cached fusions known by name."))
        adaptersResident = registry.makeGauge(descriptor: d("lorafuse_adapters_resident", "Adapter sets in memory."))
        adapterBytes = registry.makeGauge(descriptor: d("lorafuse_adapter_resident_bytes", "Bytes of the adapter sets in memory."))
        adapterLoads = registry.makeCounter(descriptor: d("lorafuse_adapter_loads_total", "Adapter sets read from disk (again after an eviction)."))
        adapterEvictions = registry.makeCounter(descriptor: d("lorafuse_adapter_evictions_total", "Adapter sets evicted to fit the memory budget."))
        fusionsBuilt = registry.makeCounter(descriptor: d("lorafuse_fusions_built_total", "Per-request fusions built (cache misses)."))
        kvBlocks = registry.makeGauge(descriptor: d("lorafuse_kv_blocks", "Key/value cache blocks held by sequences."))
        kvBlocksPeak = registry.makeGauge(descriptor: d("lorafuse_kv_blocks_peak", "Most key/value cache blocks held at once."))
        kvBytes = registry.makeGauge(descriptor: d("lorafuse_kv_bytes", "Bytes of the key/value cache blocks held (counted in --memory-budget with the adapters)."))
        prefixReused = registry.makeCounter(descriptor: d("lorafuse_prefix_tokens_reused_total", "Prompt positions whose keys and values were copied from a running sequence on the same adapters instead of computed."))
        preemptions = registry.makeCounter(descriptor: d("lorafuse_preemptions_total", "Running sequences that gave their key/value blocks back for memory and were queued again."))
    }

    public func request(endpoint: String, status: Int) {
        registry.makeCounter(descriptor: d("lorafuse_requests_total", "HTTP requests by endpoint and status."), labels: [("endpoint", endpoint), ("status", String(status))]).increment()
    }

    public func admitted(model: String, promptTokens n: Int) {
        promptTokens.increment(by: Int64(n))
        registry.makeCounter(descriptor: d("lorafuse_model_requests_total", "Admitted generation requests per model (base, adapter or fusion)."), labels: [("model", model)]).increment()
    }

    public func firstToken(model: String, seconds: Double) { ttft.record(seconds) }
    public func nextToken(seconds: Double) { interToken.record(seconds) }
    public func finished(model: String, completionTokens n: Int, reason: String) { completionTokens.increment(by: Int64(n)) }
    public func preempted(model: String) { preemptions.increment() }

    public func step(batch: Int, running r: Int, waiting: Int) {
        batchSize.record(Double(batch))
        running.set(Double(r))
        queueDepth.set(Double(waiting))
    }

    /// The exposition text, with the residency gauges read from `engine` now.
    public func render(engine: ServeEngine) -> String {
        let infos = engine.registry.list()
        adaptersRegistered.set(Double(infos.count))
        adaptersResident.set(Double(infos.filter(\.resident).count))
        adapterBytes.set(Double(infos.reduce(0) { $0 + ($1.resident ? $1.bytes : 0) }))
        queueDepth.set(Double(engine.queueDepth))
        running.set(Double(engine.runningCount))
        let kv = engine.kvPool.counters
        kvBlocks.set(Double(kv.inUse))
        kvBlocksPeak.set(Double(kv.peak))
        kvBytes.set(Double(kv.inUse * engine.kvPool.blockBytes))
        let c = engine.registry.counters
        lock.lock()
        adapterLoads.increment(by: Int64(max(0, c.loads - seen.loads)))
        adapterEvictions.increment(by: Int64(max(0, c.evictions - seen.evictions)))
        fusionsBuilt.increment(by: Int64(max(0, c.fusions - seen.fusions)))
        seen = c
        let reused = engine.prefixTokensReused
        prefixReused.increment(by: Int64(max(0, reused - seenReused)))
        seenReused = reused
        lock.unlock()
        return registry.emitToString()
    }
}

private func d(_ name: String, _ help: String) -> MetricNameDescriptor {
    MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
}
