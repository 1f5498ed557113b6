"""Randomized convergence: seeded random operations on 2 or 3 computers'
trees at once, with agents paused and killed and the server killed, then
exact convergence and no lost content required. The engine, what it does
and what it checks are described in randomsync.py.

test_random_convergence runs a few fixed seeds (every operation kind);
test_random_regressions replays seeds that once found a bug.

A failure prints the seed, the last operations and a command to replay it:

    BS_SEED=1234 python3 tests/integration/randomsync.py --seed 1234 --ops 150 --computers 3

Soak (many seeds in a row, a summary of the failing ones at the end; it
goes on after a failure unless --stop is given):

    python3 tests/integration/randomsync.py --seeds 200 --seed 5000 --ops 300

BS_SEED=N changes the first seed test_random_convergence runs.
"""

import os

from randomsync import Run

CONVERGENCE_SEEDS = 4
CONVERGENCE_OPS = 150

# (seed, ops, computers): seeds that found a bug, with what they found.
# A replay acts on trees that depend on timing, so it reproduces its bug
# often, not always.
REGRESSION_SEEDS = [
]


def test_random_convergence():
    first = int(os.environ.get("BS_SEED", "1000"))
    for seed in range(first, first + CONVERGENCE_SEEDS):
        run = Run(seed, CONVERGENCE_OPS, computers=2 + seed % 2)
        took = run.run()
        print("seed %d: %d computers, %d ops (%d failed harmlessly) in %.1f s" % (
            seed, run.ncomputers, run.done, run.errors, took))


def test_random_regressions():
    for seed, ops, computers in REGRESSION_SEEDS:
        run = Run(seed, ops, computers=computers)
        took = run.run()
        print("seed %d: %d computers, %d ops in %.1f s" % (seed, computers, run.done, took))
