#!/usr/bin/env python3
"""registered.py NAME... - every tests/unit/test-NAME.c is built, and only those.

meson lists the unit tests by hand; a file left out of the list would
never be compiled, and its tests never run.
"""
import glob
import os
import sys


def main(argv):
    here = os.path.dirname(os.path.abspath(__file__))
    have = {os.path.basename(p)[5:-2] for p in glob.glob(os.path.join(here, "test-*.c"))}
    listed = set(argv[1:])
    for what, names in (("not in tests/unit/meson.build", have - listed),
                        ("in tests/unit/meson.build but has no test-NAME.c", listed - have)):
        for n in sorted(names):
            print("unit test %s: %s" % (n, what))
    return 0 if have == listed else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
