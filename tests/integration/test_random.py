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
import time

from harness import fail
from randomsync import Run

CONVERGENCE_SEEDS = 4
CONVERGENCE_OPS = 150
BUDGET = 480  # seconds: no new seed starts after this (a failing one takes ~2 min)

# (seed, ops, computers, what it found). A replay acts on trees that
# depend on timing, so it reproduces its bug often, not always.
REGRESSION_SEEDS = [
    (308, 150, 2, "a file renamed in a directory, then the directory renamed: the "
                  "file's rename never reached the server (A: sub/l1, server: sub/e.txt)"),
    (314, 150, 3, "a file moved into a directory just before renameat2(RENAME_EXCHANGE) "
                  "swapped that directory with a file: the file was never uploaded"),
    (305, 150, 2, "RENAME_EXCHANGE of a directory and a symlink: the other computer "
                  "logs 'cannot create link d0/d0: Is a directory' forever"),
    (502, 150, 3, "RENAME_EXCHANGE of a file and a directory while another computer "
                  "added files in it: 'MKDIR d0 refused: CONFLICT' ~1700 times a second"),
    (315, 150, 3, "a file moved out of a directory on one computer while the directory "
                  "was renamed on another: a stale copy stays at the new place, not on the server; "
                  "under load, a directory moved here and made again at its old name by a pull "
                  "before the move was read lost its watch, and the files that left it stayed "
                  "on the server"),
    (319, 150, 3, "a file deleted on one computer while its directory was renamed on "
                  "another: the server keeps it at the new place, the deleting computer lacks it"),
    (306, 150, 2, "after directory exchanges, 'ATTR d1/g refused: CONFLICT' repeated "
                  "~1700 times a second: a pull brings nothing newer, the same ATTR goes again"),
    (205, 150, 3, "hard links: a utime through one name (d0/a.conflict-...) changed the "
                  "other name (l1) without an event; l1's mtime never reached the server"),
    (103, 150, 3, "a directory here, a file on the server at the same path (d1): "
                  "'MKDIR d1 refused: CONFLICT' forever"),
    (1001, 150, 3, "a write through one hard link left the other name stale; a file replacing "
                   "a directory with local changes looped on CONFLICT; an upload into a directory "
                   "this computer had deleted came back for good"),
    (2004, 200, 2, "directory moves on both computers at once: a file missing on one, content "
                   "differing on the other"),
    (2002, 200, 2, "a write through the descriptor of a name removed after the file got another "
                   "name (d2/g) reached no one; after a server crash, a directory replaced by a file "
                   "was recorded without its content's hash, the download failed for good and the "
                   "agent sent NOT_FOUND uploads without pause"),
    (8008, 150, 3, "a file deleted on one computer while two others changed its mode and time: "
                   "both kept their copy, and the second upload (same content, another mode, on "
                   "an old base) was acknowledged without its mode and time, so that computer "
                   "never matched the server again"),
]


def _run_seeds(seeds, budget):
    # Each event and request in the logs: a failure's report quotes what
    # the programs said about the paths that differ.
    os.environ.setdefault("BACKUPSYNC_LOG_LEVEL", "debug")
    t0 = time.monotonic()
    failed, skipped = [], []
    for seed, ops, computers, what in seeds:
        if time.monotonic() - t0 > budget:
            skipped.append(seed)
            continue
        # A failing seed's trees, state and logs stay (the path is in the
        # report): its timing rarely comes back in a replay.
        run = Run(seed, ops, computers=computers, keep_failed=True)
        try:
            took = run.run()
            print("seed %d: %d computers, %d ops (%d failed harmlessly) in %.1f s" % (
                seed, run.ncomputers, run.done, run.errors, took))
        except AssertionError as e:
            failed.append("%s%s" % (str(e).strip(), ("\n(found before: %s)" % what) if what else ""))
    if skipped:
        print("not run (time budget spent): seeds %s" % ", ".join(map(str, skipped)))
    if failed:
        fail("%d of %d seeds failed:\n\n%s" % (len(failed), len(seeds) - len(skipped), "\n\n".join(failed)))


def test_random_convergence():
    first = int(os.environ.get("BS_SEED", "1000"))
    _run_seeds([(s, CONVERGENCE_OPS, 2 + s % 2, None) for s in range(first, first + CONVERGENCE_SEEDS)], BUDGET)


def test_random_regressions():
    _run_seeds(REGRESSION_SEEDS, BUDGET + 120)
