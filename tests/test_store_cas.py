"""tideline.store: the one compare-and-swap path (with the lost-write check) and the one lease."""

from __future__ import annotations

import doctest
import threading
from pathlib import Path
from typing import Any

import pytest

import tideline.store.cas
import tideline.store.lease
from tideline.errors import AliasConflict, RegistryError
from tideline.store import RELEASED, FileStore, Lease, PreconditionFailed, Unchanged, put_if, update_json


def _bump(doc: dict[str, Any] | None) -> tuple[dict[str, Any], int]:
    doc = doc or {"count": 0}
    doc["count"] += 1
    return doc, doc["count"]


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    results: list[int] = []

    def worker() -> None:
        for _ in range(15):
            results.append(update_json(store, "c.json", _bump, attempts=200))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == list(range(1, 61))  # every increment landed exactly once
    assert update_json(store, "c.json", lambda d: (_ for _ in ()).throw(Unchanged(d["count"]))) == 60


class _AnswerLost:
    """A store whose next conditional put lands, but whose answer is lost and the retry fails its precondition
    (what an S3 client retrying a landed request sees)."""

    def __init__(self, inner: FileStore) -> None:
        self.inner, self.armed = inner, True

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key: str, data: bytes, **kw: Any) -> str:
        etag = self.inner.put(key, data, **kw)
        if self.armed:
            self.armed = False
            raise PreconditionFailed(key)
        return etag


def test_a_write_whose_answer_was_lost_is_recognised_as_ours(tmp_path: Path) -> None:
    store = _AnswerLost(FileStore(tmp_path))
    assert update_json(store, "c.json", _bump) == 1  # not retried as a conflict: the bytes in place are ours
    assert update_json(store, "c.json", _bump) == 2
    etag = store.get("c.json")[1]
    store.armed = True
    new = put_if(store, "c.json", b'{"count": 9, "write_id": "x"}', etag)
    assert store.get("c.json") == (b'{"count": 9, "write_id": "x"}', new)


def test_a_real_conflict_is_refused(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    old = store.put("k", b"one")
    store.put("k", b"two", if_match=old)
    with pytest.raises(PreconditionFailed):
        put_if(store, "k", b"three", old)
    with pytest.raises(PreconditionFailed):
        put_if(store, "k", b"three", None)  # create-only, but it exists
    assert store.get("k")[0] == b"two"


def test_unchanged_writes_nothing_and_errors_write_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    update_json(store, "c.json", _bump)
    before = store.get("c.json")
    assert update_json(store, "c.json", lambda d: (_ for _ in ()).throw(Unchanged("kept"))) == "kept"

    def boom(doc: dict[str, Any] | None) -> tuple[dict[str, Any], None]:
        raise ValueError("refused")

    with pytest.raises(ValueError, match="refused"):
        update_json(store, "c.json", boom)
    assert store.get("c.json") == before


def test_a_corrupt_document_is_never_overwritten(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("c.json", b"{not json")
    with pytest.raises(RegistryError, match="not JSON"):
        update_json(store, "c.json", _bump)
    store.put("l.json", b"[1, 2]")
    with pytest.raises(RegistryError, match="not an object"):
        update_json(store, "l.json", _bump)
    assert store.get("c.json")[0] == b"{not json"


def test_endless_contention_gives_up_with_alias_conflict(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    store.put("c.json", b'{"count": 0}')

    def meddle(doc: dict[str, Any] | None) -> tuple[dict[str, Any], None]:
        store.put("c.json", store.get("c.json")[0] + b" ")  # somebody else writes between our read and write
        return dict(doc or {}), None

    with pytest.raises(AliasConflict, match="kept changing"):
        update_json(store, "c.json", meddle, attempts=3)


def test_lease() -> None:
    a = Lease().taken("a", now=100.0, ttl=30.0)
    assert a.live(129.0) and not a.live(130.0)
    assert a.held_by("a", 110.0) and a.held_by_other("b", 110.0) and not a.held_by_other("a", 110.0)
    assert not a.held_by_other("b", 131.0)  # ran out: free to take over
    assert not RELEASED.live(0.0) and not RELEASED.held_by_other("b", 0.0)
    assert a.due("b", 110.0, ttl=30.0, slack=5.0)  # not ours
    assert not a.due("a", 101.0, ttl=30.0, slack=5.0) and a.due("a", 106.0, ttl=30.0, slack=5.0)
    assert not a.taken("a", now=200.0, ttl=0.0).held_by_other("b", 200.0)  # one pass, nobody kept out
    with pytest.raises(ValueError):
        a.taken("a", now=0.0, ttl=-1.0)


@pytest.mark.parametrize("module", [tideline.store.cas, tideline.store.lease])
def test_docstring_examples_run(module: Any) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
