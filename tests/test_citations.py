"""Every file the repository's code and documents cite exists, and every section of docs/spec.md
they cite is one of its headings.

A citation is a path under one of the repository's top-level folders (``core/train.py``,
``backends/gemm.cuh``, ``tests/conftest.py``, ``docs/spec.md``, ``examples/...``) or a bare test
module name (``test_runs.py``), in any .py, .md, .cu, .cuh or .toml file. A path that continues
another one (``/tmp/x/core/a.py``, ``run/checkpoints/...``) is not a citation of ours: the match
must start the path. A test module name must be a file of some tests/ folder of the repository.
"""

from __future__ import annotations

import functools
import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SUFFIXES = (".py", ".md", ".cu", ".cuh", ".toml")
TOP_FOLDERS = ("core", "backends", "comm", "tests", "tools", "docs", "examples")

PATH = re.compile(r"(?<![\w./-])((?:%s)/[\w+-][\w.+-]*(?:/[\w.+-]+)*)" % "|".join(TOP_FOLDERS))
TEST_MODULE = re.compile(r"(?<![\w./-])(test_\w+\.py)\b")
SPEC_SECTIONS = re.compile(r"docs/spec\.md(?:'s)?[ ,(]*((?:\"[^\"]+\"(?:, )?)+)")

#: Citations of missing files in files other engineers are changing, by file: allowed until that
#: work lands; the lead empties these lists when merging it.
MISSING_ALLOWED: dict[str, list[str]] = {}


@functools.lru_cache(maxsize=None)
def source_files() -> tuple[Path, ...]:
    """The repository's own files of the cited kinds (no virtual environment, build output or
    hidden folder), but this one, whose examples of the rules cite what does not exist."""
    found = []
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if not (
            d.startswith(".") or d in ("build", "dist", "__pycache__") or d.endswith(".egg-info"))]
        found += [Path(folder, name) for name in names if name.endswith(SUFFIXES)]
    return tuple(sorted(p for p in found if p != Path(__file__).resolve()))


def cited_paths(text: str) -> set[str]:
    return {m.rstrip(".,:;") for m in PATH.findall(text)}


def missing_citations(path: Path) -> list[str]:
    """What ``path`` cites that does not exist: a path resolved from the repository (or, for an
    example package, from its own folder), a test module from any tests/ folder."""
    text = path.read_text(encoding="utf-8")
    package = next((p for p in path.parents if (p / "pyproject.toml").exists()), REPO)
    missing = [cited for cited in sorted(cited_paths(text))
               if not (REPO / cited).exists() and not (package / cited).exists()]
    test_modules = {p.name for p in [*REPO.glob("tests/test_*.py"),
                                     *REPO.glob("examples/*/tests/test_*.py")]}
    missing += [name for name in sorted(set(TEST_MODULE.findall(text))) if name not in test_modules]
    return missing


def test_every_cited_file_exists():
    files = source_files()
    assert REPO / "core" / "train.py" in files and REPO / "README.md" in files
    assert REPO / "backends" / "gemm.cuh" in files and REPO / "pyproject.toml" in files
    broken, stale = [], []
    for path in files:
        rel = path.relative_to(REPO).as_posix()
        allowed = MISSING_ALLOWED.get(rel, [])
        missing = missing_citations(path)
        broken += [f"{rel}: {cited}" for cited in missing if cited not in allowed]
        stale += [f"{rel}: {cited}" for cited in allowed if cited not in missing]
    assert not broken, "cited but missing:\n" + "\n".join(broken)
    assert not stale, "exists now: drop from MISSING_ALLOWED\n" + "\n".join(stale)


def test_every_cited_spec_section_is_a_heading():
    headings = set(re.findall(r"^## (.+)$", (REPO / "docs" / "spec.md").read_text(), re.M))
    assert {"Model", "Data parallelism", "Grading modes", "Data format"} <= headings
    cited = {}
    for path in source_files():
        for group in SPEC_SECTIONS.findall(path.read_text(encoding="utf-8")):
            for name in re.findall(r"\"([^\"]+)\"", group):
                cited.setdefault(name, path.relative_to(REPO).as_posix())
    assert "Known pitfalls" in cited  # the pattern finds the citations
    unknown = {name: where for name, where in cited.items() if name not in headings}
    assert not unknown, f"not a section of docs/spec.md: {unknown}"


def test_the_rules_find_what_they_should():
    text = ("see core/train.py, backends/x.cuh and `tests/nope.py`. Not /tmp/a/core/b.py nor "
            "run/docs/c.md; examples/pkg/.")
    assert cited_paths(text) == {"core/train.py", "backends/x.cuh", "tests/nope.py",
                                 "examples/pkg/"}
    assert TEST_MODULE.findall("test_runs.py, tests/test_cli.py, my_test_x.py") == ["test_runs.py"]
    assert SPEC_SECTIONS.findall('docs/spec.md ("Loss", "SGD") and docs/spec.md\'s "Model"') == [
        '"Loss", "SGD"', '"Model"']


def test_readme_names_every_file_of_the_test_suite():
    """README's "Checks" maps the test files by what they check: a new file must be placed there."""
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    checks = readme[readme.index("\n## Checks"):]
    checks = checks[:checks.index("\n## ", 1)]
    unnamed = [p.name for p in sorted((REPO / "tests").glob("*.py")) if f"`{p.name}`" not in checks]
    assert not unnamed, f"not in README's Checks: {unnamed}"
