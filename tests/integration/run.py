#!/usr/bin/env python3
"""run.py NAME - run one integration scenario: test_NAME() from a module
tests/integration/test_*.py. Prints 'ok NAME' and exits 0, or prints the
failure (the harness prints the tail of every log) and exits 1.

    run.py --list     prints the scenario names
    run.py --registered NAME...
                      exits 1 unless NAME... (meson's list) names every
                      scenario and no other
"""
import glob
import importlib
import os
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def scenarios():
    found = {}
    for path in sorted(glob.glob(os.path.join(HERE, "test_*.py"))):
        mod = importlib.import_module(os.path.basename(path)[:-3])
        for attr in dir(mod):
            fn = getattr(mod, attr)
            if attr.startswith("test_") and callable(fn):
                found[attr[5:]] = fn
    return found


def main(argv):
    if len(argv) >= 2 and argv[1] == "--registered":
        have, listed = set(scenarios()), set(argv[2:])
        for what, names in (("not in tests/integration/meson.build", have - listed),
                            ("in tests/integration/meson.build but not defined", listed - have)):
            for n in sorted(names):
                print("scenario %s: %s" % (n, what))
        return 0 if have == listed else 1
    if len(argv) != 2:
        print("usage: run.py NAME | --list | --registered NAME...", file=sys.stderr)
        return 64
    all_ = scenarios()
    if argv[1] == "--list":
        for n in sorted(all_):
            print(n)
        return 0
    name = argv[1]
    if name not in all_:
        print("no scenario %r (have: %s)" % (name, ", ".join(sorted(all_))), file=sys.stderr)
        return 64
    t0 = time.monotonic()
    try:
        all_[name]()
    except BaseException as e:
        sys.stdout.flush()
        traceback.print_exc()
        print("FAIL %s (%.1f s): %s" % (name, time.monotonic() - t0, e))
        return 1
    print("ok %s (%.1f s)" % (name, time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
