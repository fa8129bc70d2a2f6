"""Print dpmlp's import graph (module -> modules of this project it imports at module level or
inside functions) and check that every arrow points down the layers.

    python tools/import_graph.py            the graph, one line per module, then the verdict

Layers, top to bottom (a module may import its own layer or lower ones only):
    5  core.cli                                 the `dpmlp` command, dispatching to the entry points
    4  core.train, core.bench, core.plot        the entry points
    3  core.job, core.verify, core.train_flags, core.preflight, core.device_preflight,
       core.session, core.flop_bound, core.bench_peers
                                                the job's lifecycle; the lockstep checker; the
                                                training CLI's flags, pre-flight checks (host,
                                                device), session; the bench's FLOP bound and
                                                peers
    2  core.data_parallel, core.model, core.data, core.plugins, core.checkpoint, core.rundir,
       core.progress, core.threads, core.reference, core.exact, core.buckets, core.placement,
       core.scaling   what a run is made of (and its reference; --exact's model; gradient
       buckets, rank placement, the exchange's cost model)
    1  core.ops, core.communicator, core.hookspecs, core.errors, core.exact_math, core (the
       package)   the contracts (exact_math: --exact's element-wise functions, defined once)
Backends (backends.*) and communicators (comm.*) stand beside the entry points' stack and may
import the contracts (layer 1) and their own package only; core never imports them statically
(the built-ins are loaded by name, as plugins). The conformance suite (core/conformance/, a
test package that uses the NumPy reference and the single communicator like tests/ do) is not
part of the graph.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "backends", "comm")

CORE_LAYER = {
    "core": 1, "core.ops": 1, "core.communicator": 1, "core.hookspecs": 1, "core.errors": 1,
    "core.data_parallel": 2, "core.model": 2, "core.data": 2, "core.plugins": 2,
    "core.checkpoint": 2, "core.rundir": 2, "core.progress": 2, "core.threads": 2,
    "core.reference": 2, "core.exact": 2, "core.exact_math": 1,
    "core.buckets": 2, "core.placement": 2, "core.scaling": 2,
    "core.startup": 1, "core.runlock": 2, "core.rescue": 2,
    "core.job": 3, "core.verify": 3,
    "core.train_flags": 3, "core.preflight": 3, "core.session": 3, "core.device_preflight": 3,
    "core.flop_bound": 3, "core.bench_peers": 3,
    "core.train": 4, "core.bench": 4, "core.plot": 4,
    "core.cli": 5,
}
CONTRACT_LAYER = 1


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            name = package if path.stem == "__init__" else f"{package}.{path.stem}"
            found[name] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Project modules that ``path`` imports anywhere (top level or inside functions)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name in known:
                out.add(name)
    return out


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports_of(path, set(found)) - {name} for name, path in found.items()}


def upward_arrows(edges: dict[str, set[str]]) -> list[str]:
    bad = []
    for src, targets in edges.items():
        for dst in targets:
            src_pkg, dst_pkg = src.split(".")[0], dst.split(".")[0]
            if src_pkg == "core" and dst_pkg != "core":
                bad.append(f"{src} -> {dst}: core imports a plugin package")
            elif src_pkg != "core" and dst_pkg == "core" and CORE_LAYER.get(dst, 9) > CONTRACT_LAYER:
                bad.append(f"{src} -> {dst}: a plugin imports core above its contracts")
            elif src_pkg != "core" and dst_pkg not in ("core", src_pkg):
                bad.append(f"{src} -> {dst}: one plugin package imports another")
            elif src_pkg == dst_pkg == "core":
                if src not in CORE_LAYER or dst not in CORE_LAYER:
                    bad.append(f"{src} -> {dst}: module without a layer in tools/import_graph.py")
                elif CORE_LAYER[dst] > CORE_LAYER[src]:
                    bad.append(f"{src} -> {dst}: upward (layer {CORE_LAYER[src]} -> {CORE_LAYER[dst]})")
    return sorted(bad)


def main() -> int:
    edges = graph()
    for src in sorted(edges):
        print(f"{src:22s} -> {', '.join(sorted(edges[src])) or '-'}")
    bad = upward_arrows(edges)
    print("\n" + ("\n".join(bad) if bad else "every import points down"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
