"""The README is the front page: every docs page it links exists, and every page is linked."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
LINK = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")


def links(page: Path) -> set[Path]:
    """The local files a Markdown page links to, resolved from the page's folder."""
    text = page.read_text(encoding="utf-8")
    return {
        (page.parent / target).resolve()
        for target in LINK.findall(text)
        if "://" not in target and not target.startswith("mailto:")
    }


def test_every_local_link_in_the_docs_leads_to_a_file() -> None:
    pages = [ROOT / "README.md", *DOCS.rglob("*.md")]
    broken = [(page.name, str(target)) for page in pages for target in links(page)]
    broken = [(name, target) for name, target in broken if not Path(target).exists()]
    assert not broken


def test_the_readme_links_every_top_level_docs_page() -> None:
    linked = links(ROOT / "README.md")
    pages = set(DOCS.glob("*.md"))
    assert pages, "no docs pages found"
    assert {page.resolve() for page in pages} <= linked, sorted(
        page.name for page in pages if page.resolve() not in linked
    )


def test_the_readme_opens_with_the_demo_and_the_cluster_command() -> None:
    """What the worker is, the demo and running against a cluster, in the first screen."""
    first_screen = "\n".join((ROOT / "README.md").read_text(encoding="utf-8").splitlines()[:40])
    assert "qa-worker demo" in first_screen
    assert "qa-worker run" in first_screen
    assert "## Set up and test" not in first_screen.split("qa-worker run")[0]
