"""vhjax.memo.Memo: hits return the remembered object, ids reused by Python never hit, the bound holds."""

import gc
import weakref

import pytest

from vhjax.memo import Memo


class Thing:
    pass


def test_hit_returns_the_same_object_and_builds_once():
    memo, built = Memo(4), []
    a = Thing()
    build = lambda: built.append(1) or object()
    first = memo.get((a,), build, settings=3)
    assert memo.get((a,), build, settings=3) is first
    assert len(built) == 1
    assert memo.get((a,), build, settings=4) is not first  # other settings: another entry
    assert memo.get((a, a), build, settings=3) is not first  # other objects: another entry
    assert len(built) == 3 and len(memo) == 3


def test_a_recycled_id_does_not_hit():
    memo, ids, seen = Memo(1), set(), 0
    for n in range(200):  # short-lived objects: CPython hands a freed address to the next one
        obj = Thing()
        seen += id(obj) in ids
        ids.add(id(obj))
        assert memo.get((obj,), lambda o=obj: (o, n))[0] is obj  # never another object's value
        del obj  # freed at once (reference counting); the memo drops its entry at the next get
    assert seen > 0  # ids were reused, so the check above was exercised


def test_an_entry_under_a_reused_id_is_replaced():
    memo, a, b = Memo(2), Thing(), Thing()
    memo._entries[((id(b),), ())] = ((a,), "built for a")  # as if b had a's old address
    assert memo.get((b,), lambda: "built for b") == "built for b"
    assert memo.get((b,), lambda: "again") == "built for b" and len(memo) == 1


def test_bound_holds_and_the_oldest_goes_first():
    memo = Memo(2)
    a, b, c = Thing(), Thing(), Thing()
    gone = weakref.ref(a)
    memo.get((a,), lambda: "a")
    memo.get((b,), lambda: "b")
    memo.get((c,), lambda: "c")
    assert len(memo) == 2
    assert memo.get((b,), lambda: "new b") == "b" and memo.get((c,), lambda: "new c") == "c"
    del a
    gc.collect()
    assert gone() is None  # an evicted entry no longer holds its objects
    memo.clear()
    assert len(memo) == 0


def test_a_failed_build_leaves_the_cache_as_it_was():
    memo, a = Memo(1), Thing()
    memo.get((a,), lambda: "a")

    def fail():
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        memo.get((Thing(),), fail)
    assert memo.get((a,), lambda: "new") == "a"


@pytest.mark.parametrize("bound", [0, -1, 1.5, True])
def test_bad_bound_is_refused(bound):
    with pytest.raises(ValueError, match="bound has value"):
        Memo(bound)
