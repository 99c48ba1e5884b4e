"""Architecture rules: Streamlit only in the app layer; app.py routes to existing pages; config matches the library."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_library_never_imports_streamlit():
    library = [p for p in (REPO / "aff_app").rglob("*.py") if "ui" not in p.relative_to(REPO / "aff_app").parts[:1]]
    assert len(library) >= 5, "the AST scan found suspiciously few library modules"
    offenders = {
        str(p.relative_to(REPO)): sorted(m for m in _imported_modules(p) if m.split(".")[0] == "streamlit")
        for p in library
    }
    offenders = {k: v for k, v in offenders.items() if v}
    assert not offenders, f"only app.py, pages/ and aff_app/ui/ may import streamlit: {offenders}"


def _st_page_paths(app: Path) -> list[str]:
    tree = ast.parse(app.read_text(encoding="utf-8"))
    paths = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "Page"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            paths.append(node.args[0].value)
    return paths


def test_app_routes_with_st_navigation_to_existing_pages():
    app = REPO / "app.py"
    source = app.read_text(encoding="utf-8")
    assert "st.navigation(" in source and ".run()" in source
    assert "st.set_page_config(" in source
    pages = _st_page_paths(app)
    assert "pages/data.py" in pages
    missing = [p for p in pages if not (REPO / p).is_file()]
    assert not missing, f"st.Page entries point to missing files: {missing}"
    assert len(pages) == len(set(pages))
    # every page file is routed (with st.navigation nothing is auto-discovered)
    unrouted = sorted(
        str(p.relative_to(REPO)) for p in (REPO / "pages").glob("*.py") if str(p.relative_to(REPO)) not in pages
    )
    assert not unrouted, f"pages not listed in app.py: {unrouted}"


def test_upload_limit_in_config_matches_library():
    from aff_app.io.files import MAX_UPLOAD_MB

    config = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert config["server"]["maxUploadSize"] == MAX_UPLOAD_MB
    assert config["browser"]["gatherUsageStats"] is False


def test_state_keys_are_unique():
    from aff_app.ui import state

    keys = {name: value for name, value in vars(state).items() if name.isupper() and isinstance(value, str)}
    values = list(keys.values())
    duplicates = sorted({v for v in values if values.count(v) > 1})
    assert not duplicates, f"two session_state constants share a key: {duplicates}"
