"""The services use libs.storage through its public surface only (libs/storage/__init__.py): no
imports of its modules, no private attributes of other objects, no segment files opened directly,
and the write follow-up (cache invalidation, publication) in one place for both run modes."""

from __future__ import annotations

import ast
from pathlib import Path

import libs.storage

SERVICES = Path(__file__).resolve().parents[2] / "services"


def _trees() -> list[tuple[Path, ast.AST]]:
    return [(path, ast.parse(path.read_text())) for path in sorted(SERVICES.rglob("*.py"))]


def test_services_import_storage_from_the_package_and_only_its_public_names():
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("libs.storage"):
                if node.module != "libs.storage":
                    found.append(f"{path.name}:{node.lineno} imports {node.module}")
                found += [
                    f"{path.name}:{node.lineno} imports {alias.name}"
                    for alias in node.names
                    if alias.name not in libs.storage.__all__
                ]
    assert not found


def test_services_read_no_private_attribute_of_another_object():
    found = [
        f"{path.name}:{node.lineno} {ast.unparse(node)}"
        for path, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute)
        and node.attr.startswith("_")
        and not node.attr.startswith("__")
        and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
    ]
    assert not found


def test_no_service_opens_segment_files_itself():
    # Segments are read through the store's readers (MappedReader) or DuckDB, never pyarrow.parquet.
    found = [
        f"{path.name}:{node.lineno}"
        for path, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        and "parquet" in " ".join([getattr(node, "module", None) or "", *(a.name for a in node.names)])
    ]
    assert not found


def test_cache_invalidation_and_metrics_publication_happen_in_one_place():
    calls = [
        f"{path.relative_to(SERVICES)}:{node.lineno}"
        for path, tree in _trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "invalidate"
    ]
    assert not calls, "services call AfterWrite (libs/writes.py), not the cache"


def test_every_public_name_resolves_and_an_unknown_one_is_an_attribute_error():
    for name in libs.storage.__all__:
        assert getattr(libs.storage, name) is not None
    assert set(libs.storage.__all__) <= set(dir(libs.storage))
    try:
        libs.storage.NoSuchThing  # noqa: B018
    except AttributeError as exc:
        assert "NoSuchThing" in str(exc)
    else:
        raise AssertionError("an unknown name resolved")
