"""What ``torch.compile`` made of the static step, counted, so that a slow path is never silent.

torch runs a compiled function without CUDA graphs when a graph cannot be captured (it logs a
"skipping cudagraphs" line nobody sees, and counts it), and records a graph again when the
addresses or shapes it was recorded with change. Either costs a GPU step many times its
replay, with no word said. :class:`GraphWatch` counts, for this process:

- ``compiled``: graphs dynamo made (``counters["stats"]["unique_graphs"]``);
- ``recorded``: CUDA graphs recorded (torch's CUDAGRAPH_RECORDING compile callback);
- ``skipped``: compiled graphs that run without CUDA graphs (``counters["inductor"]["cudagraph_skips"]``),
  with torch's reason (its ``cudagraphs`` log, which is off by default: a handler of ours reads it).

The static step reads the counts after warm-up (:meth:`GraphWatch.settle`): the load line, bench's
JSON and ``/metrics`` show them, and anything counted after that (a graph compiled, recorded
again or skipped inside a session) is one warning with torch's reason.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from dataclasses import asdict, dataclass

log = logging.getLogger(__name__)

# torch's "cudagraphs" artifact log (torch/_inductor/cudagraph_utils.py: getArtifactLogger(__name__,
# "cudagraphs")): where it says why a graph runs without CUDA graphs.
SKIP_LOGGER = "torch._inductor.cudagraph_utils.__cudagraphs"
REASONS_KEPT = 8


@dataclass(frozen=True)
class GraphCounts:
    compiled: int = 0
    recorded: int = 0
    skipped: int = 0

    def __sub__(self, other: "GraphCounts") -> "GraphCounts":
        return GraphCounts(self.compiled - other.compiled, self.recorded - other.recorded,
                           self.skipped - other.skipped)

    def __bool__(self) -> bool:
        return bool(self.compiled or self.recorded or self.skipped)

    def to_dict(self) -> dict:
        return asdict(self)

    def words(self) -> str:
        """``12 graphs compiled, 12 CUDA graphs recorded, 0 skipped``."""
        return (f"{self.compiled} graphs compiled, {self.recorded} CUDA graphs recorded, "
                f"{self.skipped} skipped")


class _Reasons(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.kept: deque[str] = deque(maxlen=REASONS_KEPT)

    def emit(self, record: logging.LogRecord) -> None:
        self.kept.append(record.getMessage().splitlines()[0] if record.getMessage() else "")


_lock = threading.Lock()
_recordings = [0]
_reasons: _Reasons | None = None


def _install() -> _Reasons:
    """Once per process: count CUDA graph recordings, and keep torch's skip reasons."""
    global _reasons
    if _reasons is not None:  # after every forward: no lock once installed
        return _reasons
    with _lock:
        if _reasons is None:
            from torch._dynamo.callback import CallbackTrigger, callback_handler

            def on_start(args) -> None:
                if args.callback_trigger == CallbackTrigger.CUDAGRAPH_RECORDING:
                    _recordings[0] += 1

            callback_handler.register_start_callback(on_start)
            _reasons = _Reasons()
            logging.getLogger(SKIP_LOGGER).addHandler(_reasons)
        return _reasons


def counts() -> GraphCounts:
    """This process's counts now."""
    from torch._dynamo.utils import counters

    _install()
    return GraphCounts(int(counters["stats"]["unique_graphs"]), _recordings[0],
                       int(counters["inductor"]["cudagraph_skips"]))


def reasons() -> list[str]:
    """torch's latest reasons for running a compiled graph without CUDA graphs."""
    return list(_install().kept)


class GraphWatch:
    """The counts at the end of warm-up, and what changed since (checked after each forward: a
    few dictionary reads). The counts are the process's: another model compiled in the same
    process after this one's warm-up counts too (:meth:`settle` again after it)."""

    def __init__(self) -> None:
        _install()
        self.at_warmup: GraphCounts | None = None
        self.after_warmup = GraphCounts()
        self._said = GraphCounts()

    def settle(self) -> GraphCounts:
        """Warm-up is over: what it made is the baseline."""
        self.at_warmup = counts()
        self.after_warmup = self._said = GraphCounts()
        return self.at_warmup

    def check(self) -> str | None:
        """After a forward: one warning line (logged, and returned) when something was compiled,
        recorded or skipped since warm-up and not yet said."""
        if self.at_warmup is None:
            return None
        now = counts() - self.at_warmup
        if now == self._said:
            return None
        new = now - self._said
        self.after_warmup = self._said = now
        why = reasons()
        line = (f"after warm-up, the compiled step made more: {new.words()}"
                + (f" (torch: {why[-1]})" if new.skipped and why else "")
                + "; a step without its CUDA graph runs many times slower")
        log.warning(line)
        return line
