"""Every engine and session is held to the written contract (voxcli.engine.contract) by its
signatures: each method a Protocol declares exists, takes every parameter the Protocol names, of
the same kind (positional or keyword-only), with a default where the Protocol has one; anything
more it takes has a default, so a caller that knows only the contract can call it. Protocols'
``isinstance`` checks only names; this checks what a caller passes."""

from __future__ import annotations

import inspect

import pytest

from voxcli.engine import contract
from voxcli.engine.offline import OfflineEngine
from voxcli.engine.realtime import RealtimeEngine
from voxcli.engine.reconnect import ReconnectingSession
from voxcli.engine.remote import RemoteOfflineEngine, RemoteRealtimeEngine
from voxcli.engine.session import RealtimeSession

HELD_TO = [
    (RealtimeEngine, contract.BatchingEngine),
    (OfflineEngine, contract.Engine),
    (RemoteRealtimeEngine, contract.RealtimeEngine),
    (RemoteOfflineEngine, contract.Engine),
    (RealtimeSession, contract.Session),
    (ReconnectingSession, contract.WaitingSession),  # what a server engine's session() gives
]


def declared(protocol) -> dict[str, inspect.Signature]:
    """The methods ``protocol`` declares, its bases' included."""
    out = {}
    for cls in reversed(protocol.__mro__):
        if cls is object or not getattr(cls, "_is_protocol", False):
            continue
        for name, value in vars(cls).items():
            if inspect.isfunction(value) and not name.startswith("_"):
                out[name] = inspect.signature(value)
    return out


def mismatches(impl, protocol) -> list[str]:
    found = []
    for name, wanted in declared(protocol).items():
        method = getattr(impl, name, None)
        if method is None or not callable(method):
            found.append(f"{impl.__name__}.{name}: missing")
            continue
        have = inspect.signature(method).parameters
        for param in list(wanted.parameters.values())[1:]:  # not self
            got = have.get(param.name)
            if got is None:
                found.append(f"{impl.__name__}.{name}: no parameter {param.name!r}")
            elif got.kind != param.kind:
                found.append(f"{impl.__name__}.{name}({param.name}): {got.kind.description}, "
                             f"the contract says {param.kind.description}")
            elif param.default is not inspect.Parameter.empty and got.default is inspect.Parameter.empty:
                found.append(f"{impl.__name__}.{name}({param.name}): no default, the contract has one")
        for extra in set(have) - set(wanted.parameters):
            p = have[extra]
            if p.default is inspect.Parameter.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                found.append(f"{impl.__name__}.{name}({extra}): required, and not in the contract")
    return found


@pytest.mark.parametrize("impl,protocol", HELD_TO, ids=[f"{i.__module__}.{i.__name__}" for i, _ in HELD_TO])
def test_each_implementation_takes_what_the_contract_says(impl, protocol):
    assert mismatches(impl, protocol) == []


def test_the_check_sees_a_missing_keyword_a_wrong_kind_and_a_required_extra():
    class Bad:
        def transcribe(self, audio, language=None, *, max_new_tokens=None, segments=None, strict):
            return iter(())

        def warmup(self):
            return 0.0

        def environment(self):
            return {}

    assert sorted(mismatches(Bad, contract.Engine)) == [
        "Bad.critical_path_ms: missing",
        "Bad.transcribe(language): positional or keyword, the contract says keyword-only",
        "Bad.transcribe(strict): required, and not in the contract",
        "Bad.transcribe: no parameter 'keyterms'",
    ]
