"""``GET /metrics``: the server's figures in Prometheus' text format (``prometheus-client``).

Each app has its own registry (two servers in one process, as in tests, count apart).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from voxcli.serve.scheduler import CycleTime, Token

MS_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        # Read from the scheduler when scraped (ServerState sets the function): never a count kept apart.
        self.active = Gauge("voxcli_sessions_active", "Streams open on the engine (realtime sessions and "
                            "transcription requests)", registry=r)
        self.capacity = Gauge("voxcli_sessions_max", "Sessions this server takes at once (serve.max_sessions)",
                              registry=r)
        self.sessions = Counter("voxcli_sessions", "Sessions opened", ["api"], registry=r)
        self.tokens = Counter("voxcli_tokens", "Tokens the model emitted (blanks included)", registry=r)
        self.step = Histogram("voxcli_step_seconds", "One decode step: features, forward, id back",
                              buckets=MS_BUCKETS, registry=r)
        self.batch = Histogram("voxcli_batch_size", "Streams stepped in the forward that made each token", buckets=BATCH_BUCKETS,
                               registry=r)
        self.latency = Histogram("voxcli_emission_latency_seconds", "Token emitted - the audio that let it "
                                 "step arrived at the server", buckets=MS_BUCKETS, registry=r)
        # The scheduler's cycles, split (host seconds per row = host / rows: a stream's 80 ms of work).
        self.cycle = Counter("voxcli_cycle_seconds", "Scheduler cycles' time: in forwards, and host work around "
                             "them (feeding, endpointers, features, events, delivery)", ["part"], registry=r)
        for part in ("forward", "host"):
            self.cycle.labels(part)  # both at 0 from the start: a reader takes differences
        self.rows = Counter("voxcli_cycle_rows", "Rows the cycles' forwards stepped (a token each)", registry=r)
        self.cycles = Counter("voxcli_cycles", "Scheduler cycles that stepped a row", registry=r)
        self.host = Histogram("voxcli_cycle_host_seconds_per_row", "Each cycle's host time over the rows it "
                              "stepped", buckets=(0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01),
                              registry=r)
        self.rejected = Counter("voxcli_rejected_requests", "Requests and events refused", ["reason"], registry=r)
        self.dropped = Counter("voxcli_dropped_clients", "Clients dropped by the server", ["reason"], registry=r)

    def watch_graphs(self, environment) -> None:
        """``voxcli_graphs{what, when}``: what torch.compile made of the static step at warm-up, and
        after it (anything after it is a slow step), read from ``environment()`` when scraped."""
        gauge = Gauge("voxcli_graphs", "Compiled step: graphs compiled, CUDA graphs recorded, graphs skipped "
                      "(run without CUDA graphs), at warm-up and after it", ["what", "when"], registry=self.registry)
        for when, key in (("warmup", "graphs"), ("after_warmup", "graphs_after_warmup")):
            for what in ("compiled", "recorded", "skipped"):
                gauge.labels(what, when).set_function(lambda k=key, w=what: (environment().get(k) or {}).get(w, 0))

    def on_step(self, tokens: list[Token], cycle: CycleTime | None = None) -> None:
        """Called by the scheduler thread after each cycle (prometheus-client is thread-safe)."""
        if cycle is not None:  # a cycle that stepped nothing (audio short of a chunk) is host work too
            self.cycle.labels("forward").inc(cycle.forward_s)
            self.cycle.labels("host").inc(cycle.host_s)
            if cycle.rows:
                self.cycles.inc()
                self.rows.inc(cycle.rows)
                self.host.observe(cycle.host_s / cycle.rows)
        for token in tokens:
            e = token.event
            self.tokens.inc()
            if e.step_ms is not None:
                self.step.observe(e.step_ms / 1000.0)
            if e.batch is not None:
                self.batch.observe(e.batch)
            if token.latency_ms is not None:
                self.latency.observe(max(token.latency_ms, 0.0) / 1000.0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
