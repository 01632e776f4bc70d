"""conftest.py for a package's own test file run by ``wheelfarm gpu-test`` (copied next to it; pytest only).

1. Progress log: each test report becomes one JSON line in ``$WHEELFARM_PROGRESS`` (flushed at once), so the
   counts survive a run that is stopped at its time budget before pytest writes its junit xml.
2. Fast ``-k``: flash-attn's tests/test_flash_attn.py parametrizes ~509,000 tests and pytest builds an item
   for each before ``-k`` deselects (minutes of collection). Here, (a) a test function none of whose items can
   match is not expanded at all: the expression is evaluated per function in three-valued logic (an identifier
   is True when it is part of a name every item of that function matches, False when it names another
   function's items, ``other_function[...``, as parameter ids here hold no ``[``; else unknown) and only a
   definite False skips it; (b) for the functions that remain, parameter sets whose item name cannot match are
   dropped before pytest makes items of them, using pytest's own expression and the names its ``-k`` matcher
   uses (chain, marks, function attributes, extra keywords). pytest's ``-k`` still decides what runs; this
   only avoids building the rest. Write a selection as ``test_name[...`` terms to benefit. Anything
   unexpected falls back to plain pytest.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import re
import signal

import pytest

# The time budget stops pytest with SIGINT, so that it writes its junit xml. A runner that started us with SIGINT
# ignored (a background job of a non-interactive shell, nohup) would turn that into a wait for the SIGKILL.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

_TOKEN = re.compile(r"\(|\)|(?:\w|:|\+|-|\.|\[|\]|\\|/)+")  # pytest's -k identifier characters
_PROGRESS = None
_PRUNED: list[str] = []


def _emit(record: dict) -> None:
    global _PROGRESS
    path = os.environ.get("WHEELFARM_PROGRESS")
    if not path:
        return
    if _PROGRESS is None:
        _PROGRESS = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the session
    _PROGRESS.write(json.dumps(record) + "\n")
    _PROGRESS.flush()


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    while pos < len(expr):
        if expr[pos].isspace():
            pos += 1
            continue
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"unexpected {expr[pos]!r} in -k expression")
        out.append(m.group(0))
        pos = m.end()
    return out


def _and(a, b):
    if a is False or b is False:
        return False
    return True if a is True and b is True else None


def _or(a, b):
    if a is True or b is True:
        return True
    return False if a is False and b is False else None


def _not(a):
    return None if a is None else not a


def kleene(expr: str, value) -> bool | None:
    """Evaluate a -k expression with ``value(ident) -> True | False | None``; None means "can't tell"."""
    tokens = _tokens(expr)
    pos = 0

    def peek():
        return tokens[pos] if pos < len(tokens) else None

    def take():
        nonlocal pos
        pos += 1
        return tokens[pos - 1]

    def or_expr():
        result = and_expr()
        while peek() == "or":
            take()
            result = _or(result, and_expr())
        return result

    def and_expr():
        result = not_expr()
        while peek() == "and":
            take()
            result = _and(result, not_expr())
        return result

    def not_expr():
        tok = peek()
        if tok == "not":
            take()
            return _not(not_expr())
        if tok == "(":
            take()
            result = or_expr()
            if take() != ")":
                raise ValueError("unbalanced parentheses")
            return result
        if tok is None or tok in ("and", "or", ")"):
            raise ValueError("malformed -k expression")
        return value(take())

    if not tokens:
        return True
    result = or_expr()
    if pos != len(tokens):
        raise ValueError("trailing tokens in -k expression")
    return result


def may_match(expr: str, function: str, names: list[str]) -> bool:
    """False only if no item of ``function`` can match ``expr`` (``names``: every item's other keywords)."""
    fn = function.lower()
    known = [fn, *(n.lower() for n in names)]
    brackets_elsewhere = any("[" in n for n in known)

    def value(ident: str):
        i = ident.lower()
        if any(i in n for n in known):
            return True
        if "[" in i and not brackets_elsewhere and not fn.endswith(i.split("[", 1)[0]):
            return False
        return None

    return kleene(expr, value) is not False


def pytest_pycollect_makeitem(collector, name, obj):
    try:
        expr = collector.config.getoption("keyword") or ""
        if not expr.strip() or not (inspect.isfunction(obj) and collector.funcnamefilter(name)):
            return None
        names = [n.name for n in collector.listchain()]
        names += [m.name for m in getattr(obj, "pytestmark", [])] + list(getattr(obj, "__dict__", {}))
        names += (
            [m.name for m in getattr(collector.obj, "pytestmark", [])] if hasattr(collector, "obj") else []
        )
        if may_match(expr, name, names):
            return None
    except Exception:  # never let the speed-up break the run
        return None
    _PRUNED.append(name)
    return []


@pytest.hookimpl(hookwrapper=True)
def pytest_generate_tests(metafunc):
    yield
    with contextlib.suppress(Exception):  # never let the speed-up break the run
        _drop_unselectable(metafunc)


def _item_names(definition) -> list[str]:
    """What pytest's -k matcher sees for every item of ``definition``, but the item's own name and marks."""
    directory = getattr(pytest, "Directory", ())
    names = [
        node.name
        for node in definition.listchain()[:-1]
        if not isinstance(node, pytest.Session)
        and not (isinstance(node, directory) and isinstance(node.parent, pytest.Session))
    ]
    names += list(getattr(definition.obj, "__dict__", {}))
    names += [m.name for m in definition.iter_markers()]
    names += list(definition.listextrakeywords())
    return [n.lower() for n in names]


def _drop_unselectable(metafunc) -> None:
    expr_text = metafunc.config.getoption("keyword") or ""
    calls = getattr(metafunc, "_calls", None)
    if not expr_text.strip() or not calls:
        return
    from _pytest.mark.expression import Expression

    expr = Expression.compile(expr_text)
    definition = metafunc.definition
    base, name = _item_names(definition), definition.name
    kept = []
    for callspec in calls:
        item = (f"{name}[{callspec.id}]" if callspec._idlist else name).lower()
        names = [item, *base, *(m.name.lower() for m in callspec.marks)]
        if expr.evaluate(lambda ident, /, **kw: any(ident.lower() in n for n in names)):  # noqa: B023
            kept.append(callspec)
    # an empty list would make pytest collect the bare function; keep one item, which -k deselects
    metafunc._calls = kept or calls[:1]


def pytest_collection_finish(session):
    _emit({"event": "collected", "count": len(session.items), "pruned": sorted(set(_PRUNED))})


def pytest_collectreport(report):
    if report.failed:
        _emit({"event": "collect-error", "nodeid": report.nodeid})


def pytest_runtest_logreport(report):
    _emit({"event": "report", "nodeid": report.nodeid, "when": report.when, "outcome": report.outcome})


def pytest_sessionfinish(session, exitstatus):
    _emit({"event": "finished", "exitstatus": int(exitstatus)})
