#!/usr/bin/env python3
"""Print the `use crate::X` edges between the top-level modules of each crate given
(its src/ directory) and fail when they form a cycle.

    scripts/module-graph.py plugin/src ipam/src [--with-tests] [--quiet]

An edge is any `crate::m` path in code (comments are ignored), including names the crate
root re-exports (`pub use m::{A, B};` in lib.rs counts `crate::A` as an edge to `m`).
Test code (`tests.rs`, `*_tests.rs`, an inline `#[cfg(test)] mod`) is left out unless
`--with-tests` is given. `--quiet` prints only cycles. README.md's Layout section shows
the intended picture.
"""
import os
import re
import sys


def modules(root):
    found = set()
    for f in os.listdir(root):
        path = os.path.join(root, f)
        if f.endswith('.rs') and f not in ('lib.rs', 'main.rs'):
            found.add(f[:-3])
        elif os.path.isdir(path) and f != 'bin':
            found.add(f)
    return found


def sources(root, module):
    base = os.path.join(root, module)
    paths = [base + '.rs'] if os.path.exists(base + '.rs') else []
    if os.path.isdir(base):
        for d, _, fs in os.walk(base):
            paths += [os.path.join(d, f) for f in fs if f.endswith('.rs')]
    return sorted(paths)


def edges_of(root, with_tests):
    mods = modules(root)
    reexport = {}
    lib = os.path.join(root, 'lib.rs')
    if os.path.exists(lib):
        for m, names in re.findall(r'pub use (\w+)::\{?([^;]*?)\}?;', open(lib).read()):
            for n in re.findall(r'\w+', names):
                reexport[n] = m
    edges = {m: {} for m in mods}
    for m in mods:
        for path in sources(root, m):
            name = os.path.basename(path)
            if not with_tests and (name == 'tests.rs' or name.endswith('_tests.rs')):
                continue
            text = re.sub(r'//[^\n]*', '', open(path).read())
            if not with_tests:
                # an inline `#[cfg(test)] mod x { ... }` runs to the end of its file
                text = re.split(r'#\[cfg\(test\)\]\s*mod \w+\s*\{', text)[0]
            targets = re.findall(r'crate::(\w+)', text)
            for group in re.findall(r'crate::\{([^}]*)\}', text, re.S):
                targets += re.findall(r'(?:^|[,{\s])(\w+)(?=::|\s*,|\s*$)', group)
            for t in targets:
                t = reexport.get(t, t)
                if t in mods and t != m:
                    edges[m].setdefault(t, set()).add(os.path.relpath(path, root))
    return edges


def cycles_of(edges):
    color, found = {}, []

    def visit(u, stack):
        color[u] = 1
        stack.append(u)
        for v in sorted(edges[u]):
            if color.get(v) == 1:
                found.append(stack[stack.index(v):] + [v])
            elif not color.get(v):
                visit(v, stack)
        stack.pop()
        color[u] = 2

    for m in sorted(edges):
        if not color.get(m):
            visit(m, [])
    return found


def main():
    roots = [a for a in sys.argv[1:] if not a.startswith('--')] or ['plugin/src']
    with_tests = '--with-tests' in sys.argv
    quiet = '--quiet' in sys.argv
    failed = False
    for root in roots:
        edges = edges_of(root, with_tests)
        if not quiet:
            print(f'{root}:')
            for m in sorted(edges):
                print(f"  {m:12} -> {', '.join(sorted(edges[m])) or '-'}")
        for cycle in cycles_of(edges):
            failed = True
            print(f'{root}: import cycle ' + ' -> '.join(cycle))
            for a, b in zip(cycle, cycle[1:]):
                print(f"    {a} -> {b}: {', '.join(sorted(edges[a][b]))}")
    sys.exit(1 if failed else 0)


if __name__ == '__main__':
    main()
