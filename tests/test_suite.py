"""The suite's own machinery: what keeps it fast must keep working (tests/conftest.py)."""

from __future__ import annotations

import pytest


def _grouping(request) -> None:
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("runs under pytest-xdist with --dist loadgroup (the suite's default)")


@pytest.mark.xdist_group("serve")
def test_an_xdist_group_mark_holds_its_tests_together(request):
    """A grouped test's id carries its group: how xdist keeps a group on one worker. pytest 9.2
    with pytest-xdist 3.8 drops it silently (pytest-xdist #1386), so pyproject keeps pytest < 9.2."""
    _grouping(request)
    assert request.node.nodeid.endswith("@serve")


@pytest.mark.vllm
def test_the_vllm_tests_are_one_group(request):
    """conftest marks every vLLM test as the group ``vllm`` before xdist reads the marks (tryfirst):
    added after, they grouped nothing and every vLLM server started in both workers."""
    _grouping(request)
    assert request.node.nodeid.endswith("@vllm")
