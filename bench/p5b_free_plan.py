"""P5b the free plan: 30 mapped generations against an emulator that allows 5 calls per window.

The P5 batch (``bench/p5_rate_limit.py``: worker slots run ``execute``/``execute_complete``, one event loop runs
the triggers) on Segmind's free-plan limit. Targets: no failed try, every video stored and paid once, keyed
calls per video <= 2.1, wall <= 1.2x the bound that 2 keyed calls per video set.
"""

from __future__ import annotations

import argparse

from bench import p5_rate_limit
from bench.common import Result, bench_main

TITLE = "P5b 30 mapped generations under a 5-calls-per-window rate limit (free plan)"


def add_args(parser: argparse.ArgumentParser) -> None:
    p5_rate_limit.add_args(parser)


def run(result: Result, args: argparse.Namespace) -> None:
    p5_rate_limit.run_plan(result, args, label="P5b", jobs=(30, 6), rpm=(5, 3), target_ratio=1.2)


if __name__ == "__main__":
    bench_main("p5b_free_plan", TITLE, run, add_args)
