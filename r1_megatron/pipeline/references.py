"""`${STAGE.OUTPUT}` references in a pipeline recipe: found anywhere in a section (strings inside mappings and
lists, whole values or parts of them), checked against the stages before the one that uses them, and replaced by
the paths the outputs have. Pure functions; the messages are one line naming the dotted key."""
from __future__ import annotations

import re
from typing import Any, Iterator, Mapping, Sequence

REFERENCE = re.compile(r"\$\{([^}]*)\}")
TARGET = re.compile(r"([A-Za-z_][A-Za-z0-9_-]*)\.([A-Za-z_][A-Za-z0-9_]*)")

Key = tuple  # dotted path into a recipe: mapping keys (str) and list indices (int)


def dotted(key: Key) -> str:
    text = ""
    for part in key:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def references_in(value: Any, key: Key = ()) -> Iterator[tuple[Key, str, str | None, str | None]]:
    """(key, "${...}", stage, output) for every reference in `value`, depth first in document order; stage and
    output are None when the text between the braces is not STAGE.OUTPUT."""
    if isinstance(value, str):
        for match in REFERENCE.finditer(value):
            target = TARGET.fullmatch(match.group(1).strip())
            yield key, match.group(0), *(target.groups() if target else (None, None))
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from references_in(v, key + (k,))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from references_in(v, key + (i,))


def check_references(value: Any, key: Key, earlier: Mapping[str, Sequence[str]], later: Sequence[str]) -> None:
    """ValueError (one line, naming the key) unless every reference in `value` names a stage of `earlier`
    (stage name -> the outputs its command produces, in pipeline order) and one of that stage's outputs.
    `later`: the names of this and the following stages (a reference to them is a different mistake)."""
    for where, text, stage, output in references_in(value, key):
        if stage is None:
            raise ValueError(f"{dotted(where)}: {text} is not a reference of the form ${{STAGE.OUTPUT}}")
        if stage not in earlier:
            why = "a stage that runs at or after this point" if stage in later else "no stage"
            raise ValueError(f"{dotted(where)}: {text} names {why} (earlier stages: "
                             f"{', '.join(earlier) or 'none'})")
        if output not in earlier[stage]:
            raise ValueError(f"{dotted(where)}: {text}: stage '{stage}' produces no output '{output}' (its outputs: "
                             f"{', '.join(earlier[stage])})")


def substitute(value: Any, paths: Mapping[tuple[str, str], str]) -> Any:
    """`value` with every ${STAGE.OUTPUT} replaced by paths[(STAGE, OUTPUT)] (a copy; run check_references
    first: an unknown reference is a KeyError here)."""
    if isinstance(value, str):
        return REFERENCE.sub(lambda m: paths[TARGET.fullmatch(m.group(1).strip()).groups()], value)
    if isinstance(value, Mapping):
        return {k: substitute(v, paths) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [substitute(v, paths) for v in value]
    return value


def first_difference(a: Any, b: Any, key: Key = ()) -> tuple[Key, Any, Any] | None:
    """(key, a's value, b's value) of the first place where the plain data `a` and `b` differ (mappings in a's
    key order, then b's extra keys), None when they are equal."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        for k in [*a, *(k for k in b if k not in a)]:
            found = first_difference(a.get(k), b.get(k), key + (k,))
            if found:
                return found
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            found = first_difference(x, y, key + (i,))
            if found:
                return found
        return None
    return None if a == b else (key, a, b)


def deep_merge(base: Mapping, top: Mapping) -> dict:
    """`base` with `top` written over it: mappings merge key by key, anything else in `top` replaces (the
    semantics of key=value overrides)."""
    out = dict(base)
    for k, v in top.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else v
    return out
