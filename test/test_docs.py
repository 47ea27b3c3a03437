"""README is a front page: short, links every page under docs/, and no link is broken."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
MAX_README_LINES = 200
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def test_readme_is_short_and_keeps_the_entry_points():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_README_LINES
    for needle in ("make demo", "make test", "(`.ci/run`) runs `make test`"):
        assert needle in text, needle


def test_readme_links_every_docs_page():
    links = set(LINK.findall(README.read_text(encoding="utf-8")))
    missing = [p.name for p in DOCS if not any(x.split("#")[0] == f"docs/{p.name}" for x in links)]
    assert DOCS and not missing, f"README does not link {missing}"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.relative_to(ROOT).as_posix())
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding="utf-8")):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading with anchor #{anchor}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_slug_matches_github():
    assert slug("## Python 3.10-3.12".lstrip("# ")) == "python-310-312"
    assert slug("The `full` preset on the trained policy (2026-12-02, 2-core CPU, no GPU)") == (
        "the-full-preset-on-the-trained-policy-2026-12-02-2-core-cpu-no-gpu")
