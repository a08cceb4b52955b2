"""The registry's Python API, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from registry import (
    ConflictError,
    DatabaseUnavailableError,
    IntegrityError,
    InvalidInputError,
    NotFoundError,
    Registry,
    SchemaOutOfDateError,
)
from tests.conftest import Backend
from tests.onnx_models import color_classifier, color_metadata


@pytest.fixture
def model_file(tmp_path: Path) -> Path:
    return color_classifier(tmp_path / "model.onnx")


def _register(registry: Registry, path: Path, name: str = "colors", **kw: object) -> int:
    return registry.register(name=name, onnx_path=path, metadata=color_metadata(), actor="alice", **kw).version


def test_versions_are_consecutive_and_carry_metadata(registry: Registry, model_file: Path) -> None:
    assert [_register(registry, model_file) for _ in range(3)] == [1, 2, 3]
    info = registry.get_version("colors", 2)
    assert info.contract.labels == ["red", "green", "blue"]
    assert info.contract.input.shape == [None, 16, 16, 3]
    assert info.metadata.metrics["accuracy"] == 1.0
    assert info.created_by == "alice"
    assert info.status == "ready"
    assert info.size == model_file.stat().st_size
    assert registry.get_model("colors").latest_version == 3
    assert registry.open_artifact("colors", 2) == model_file.read_bytes()


def test_identical_artifacts_are_stored_once(registry: Registry, model_file: Path) -> None:
    _register(registry, model_file)
    _register(registry, model_file)
    assert len(list(registry.store.iter_blobs())) == 1


def test_extras_are_stored_and_read_back(registry: Registry, model_file: Path, tmp_path: Path) -> None:
    plot = tmp_path / "curves.png"
    plot.write_bytes(b"\x89PNG fake plot")
    version = _register(registry, model_file, extras={"curves.png": plot})
    assert [e.name for e in registry.get_version("colors", version).extras] == ["curves.png"]
    assert registry.read_extra("colors", version, "curves.png") == plot.read_bytes()


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda m: m.pop("contract"), "contract: Field required"),
        (lambda m: m["contract"].update(labels=["only"]), "at least 2 labels"),
        (lambda m: m["contract"]["input"].update(shape=[None, 16, 16, 1]), "3 channels"),
        (lambda m: m["contract"]["input"].update(shape=[1, 16, 16, 3]), "batch dimension must be dynamic"),
        (lambda m: m["contract"]["output"].update(kind="relu"), "contract.output.kind"),
        (lambda m: m["contract"]["preprocessing"].update(size=[8, 8]), "does not match"),
        (lambda m: m["contract"]["input"].update(dtype="float32"), "contract.input.dtype"),
    ],
)
def test_unusable_contract_is_refused(registry: Registry, model_file: Path, mutate, message: str) -> None:
    meta = color_metadata()
    mutate(meta)
    with pytest.raises(InvalidInputError, match=message):
        registry.register(name="colors", onnx_path=model_file, metadata=meta)
    with pytest.raises(NotFoundError):
        registry.get_model("colors")


def test_sigmoid_contract_needs_two_labels(registry: Registry, model_file: Path) -> None:
    meta = color_metadata(kind="sigmoid", labels=["a", "b", "c"])
    with pytest.raises(InvalidInputError, match="exactly 2 labels"):
        registry.register(name="colors", onnx_path=model_file, metadata=meta)


@pytest.mark.parametrize("name", ["Bad", "-x", "a b", "", "ünï"])
def test_malformed_model_names_are_refused(registry: Registry, model_file: Path, name: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid model name"):
        registry.register(name=name, onnx_path=model_file, metadata=color_metadata())


def test_missing_model_file_is_refused(registry: Registry, tmp_path: Path) -> None:
    with pytest.raises(InvalidInputError, match="does not exist"):
        registry.register(name="colors", onnx_path=tmp_path / "nope.onnx", metadata=color_metadata())


def test_promote_rollback_and_history(registry: Registry, model_file: Path) -> None:
    for _ in range(3):
        _register(registry, model_file)
    registry.promote(name="colors", version=1, actor="ops", reason="first")
    registry.promote(name="colors", version=2, actor="ops", reason="better")
    registry.promote(name="colors", version=3, actor="ops", reason="best")
    assert registry.resolve("colors", "production").version == 3

    move = registry.rollback(name="colors", actor="oncall", reason="v3 misbehaves")
    assert (move.from_version, move.to_version, move.action) == (3, 2, "rollback")
    # A second rollback walks further back instead of returning to v3.
    registry.rollback(name="colors", actor="oncall", reason="v2 too")
    assert registry.resolve("colors", "production").version == 1
    with pytest.raises(ConflictError, match="no earlier version"):
        registry.rollback(name="colors")

    history = registry.history("colors")
    assert [(h.action, h.from_version, h.to_version, h.actor, h.reason) for h in history] == [
        ("promote", None, 1, "ops", "first"),
        ("promote", 1, 2, "ops", "better"),
        ("promote", 2, 3, "ops", "best"),
        ("rollback", 3, 2, "oncall", "v3 misbehaves"),
        ("rollback", 2, 1, "oncall", "v2 too"),
    ]
    assert all(h.created_at.tzinfo is not None for h in history)


def test_aliases_are_independent(registry: Registry, model_file: Path) -> None:
    _register(registry, model_file)
    _register(registry, model_file)
    registry.promote(name="colors", version=1)
    registry.promote(name="colors", version=2, alias="staging")
    assert registry.aliases("colors") == {"production": 1, "staging": 2}
    assert registry.get_version("colors", 2).aliases == ["staging"]
    assert registry.get("colors@staging").version == 2
    assert registry.get("colors:1").version == 1
    registry.remove_alias(name="colors", alias="staging", reason="done")
    assert registry.aliases("colors") == {"production": 1}
    assert registry.history("colors", "staging")[-1].action == "remove"


def test_alias_errors(registry: Registry, model_file: Path) -> None:
    _register(registry, model_file)
    with pytest.raises(InvalidInputError, match="invalid alias"):
        registry.promote(name="colors", version=1, alias="Prod!")
    with pytest.raises(NotFoundError, match="no version 7"):
        registry.promote(name="colors", version=7)
    with pytest.raises(NotFoundError, match="no alias 'production'"):
        registry.resolve("colors", "production")
    with pytest.raises(NotFoundError, match="no model named 'other'"):
        registry.promote(name="other", version=1)
    registry.promote(name="colors", version=1)
    with pytest.raises(ConflictError, match="already points"):
        registry.promote(name="colors", version=1)


def test_archive_rules(registry: Registry, model_file: Path) -> None:
    _register(registry, model_file)
    _register(registry, model_file)
    registry.promote(name="colors", version=1)
    with pytest.raises(ConflictError, match="production points to"):
        registry.archive(name="colors", version=1)
    assert registry.archive(name="colors", version=2).status == "archived"
    with pytest.raises(ConflictError, match="archived and cannot be promoted"):
        registry.promote(name="colors", version=2)
    # Numbers are never reused, archived or not.
    assert _register(registry, model_file) == 3


def test_corrupted_artifact_is_reported(registry: Registry, model_file: Path) -> None:
    _register(registry, model_file)
    sha = registry.get_version("colors", 1).sha256
    blob = registry.store.path_for(sha)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="colors v1 is corrupted"):
        registry.open_artifact("colors", 1)
    checked, problems = registry.verify()
    assert checked == 1
    assert [(p.model_name, p.version) for p in problems] == [("colors", 1)]
    assert "sha256 mismatch" in problems[0].detail


def test_gc_removes_only_unreferenced_blobs(registry: Registry, model_file: Path, tmp_path: Path) -> None:
    _register(registry, model_file)
    orphan = tmp_path / "orphan.bin"
    orphan.write_bytes(b"left behind by a killed registration")
    orphan_sha, _ = registry.store.put_file(orphan)
    assert registry.gc(grace_seconds=3600) == []  # too young: might belong to a registration in flight
    removed = registry.gc(grace_seconds=0)
    assert [sha for sha, _ in removed] == [orphan_sha]
    assert registry.open_artifact("colors", 1) == model_file.read_bytes()


def test_schema_behind_is_a_clear_error(empty_backend: Backend) -> None:
    reg = empty_backend.registry()
    with pytest.raises(SchemaOutOfDateError, match="run `registry db upgrade`"):
        reg.list_models()
    reg.close()


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    reg = Registry(database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", artifacts_dir=tmp_path)
    with pytest.raises(DatabaseUnavailableError, match="cannot reach the registry database"):
        reg.list_models()
    reg.close()
