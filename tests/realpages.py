"""Where tests find real pages: ../shared/data/html when the checkout sits beside it, else the
copies shipped in phi4ray/data/samples; a test whose pages are in neither is skipped."""

from pathlib import Path

import pytest

from phi4ray.data.curate import samples_dir

SHARED_HTML = Path(__file__).resolve().parents[2] / "shared" / "data" / "html"
SAMPLES = Path(samples_dir())


def page_path(rel: str) -> Path:
    """`python-docs/library__struct.html` from the shared pages or the shipped samples."""
    for p in (SHARED_HTML / rel, SAMPLES / rel.replace("/", "__")):
        if p.is_file():
            return p
    pytest.skip(f"{rel} is neither in {SHARED_HTML} nor in the shipped samples")


def shared_pages(pattern: str = "*/*.html", at_least: int = 190) -> list[Path]:
    """All shared pages matching `pattern`; skips the test when ../shared/data/html is absent."""
    paths = sorted(SHARED_HTML.glob(pattern))
    if len(paths) < at_least:
        pytest.skip(f"needs the real pages of {SHARED_HTML} ({len(paths)} found)")
    return paths
