#!/usr/bin/env python3
"""embed-sql.py - turn an SQL file into a C array of its statements

libpq's extended protocol (and so pipeline mode) takes one statement per
request, so the schema is split here, at build time: at each ';' that
ends a line outside a $$-quoted body. Comment lines outside bodies go.

    embed-sql.py INPUT.sql OUTPUT.h NAME
"""
import sys


def statements(text):
    out, cur, inside = [], [], False
    for line in text.splitlines():
        if not inside and (not line.strip() or line.lstrip().startswith("--")):
            continue
        cur.append(line)
        inside ^= line.count("$$") % 2 == 1
        if not inside and line.rstrip().endswith(";"):
            out.append("\n".join(cur))
            cur = []
    if inside or "".join(cur).strip():
        sys.exit("embed-sql.py: the last statement does not end (unbalanced $$ or no ';')")
    return out


def c_string(s):
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", '\\n"\n        "') + '"'


def main():
    src, dst, name = sys.argv[1:4]
    with open(src, encoding="utf-8") as f:
        stmts = statements(f.read())
    with open(dst, "w", encoding="utf-8") as f:
        f.write("/* Generated from %s by embed-sql.py: do not edit. */\n#pragma once\n\n" % src.split("/")[-1])
        f.write("static const char *const %s[] = {\n" % name)
        for s in stmts:
            f.write("        %s,\n" % c_string(s))
        f.write("};\n")


if __name__ == "__main__":
    main()
