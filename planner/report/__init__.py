"""Exports of a simulated step for people and tools: the Chrome/Perfetto trace of the pipeline."""

from planner.report.trace import chrome_trace, write_chrome_trace

__all__ = ["chrome_trace", "write_chrome_trace"]
