"""The measuring layer: ``voxcli bench``'s runs, warm-up and statistics, and the load test
against a server. Imports live, output and engine, never cli."""

from voxcli.measure.runs import BenchOptions, BenchReport, Clip, run_bench, run_load

__all__ = ["BenchOptions", "BenchReport", "Clip", "run_bench", "run_load"]
