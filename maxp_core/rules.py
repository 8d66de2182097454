"""Rules that give layers their roles by name: the checks and the matching both adapters share.

A rule names its layers with a regular expression matched in full against each
candidate's name (a parameter path in JAX, a module or parameter name in PyTorch). Every
rule must match something, and no candidate may be matched by two rules: a rule that
silently matches nothing, or a layer whose exponents depend on rule order, would give a
learning rate nobody asked for.

Examples:
  >>> assign_rules([r"blocks\\.\\d+\\.fc", "head"], ["blocks.0.fc", "blocks.1.fc", "head"])
  {'blocks.0.fc': 0, 'blocks.1.fc': 0, 'head': 1}
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from maxp_core import validate
from maxp_core.errors import MaxPError
from maxp_core.resolve import warn_user


def rule_numbers(
    where: str,
    width: Any = None,
    a: Any = None,
    b: Any = None,
    c: Any = None,
    alignment: Any = None,
) -> dict[str, Any]:
    """A rule's optional numbers, each checked (``None`` stays ``None``).

    ``b`` may be ``math.inf`` (a zero initial weight); the others must be finite.
    """
    checked: dict[str, Any] = {
        "width": None if width is None else validate.integer(width, f"{where}: width", 1)
    }
    for name, value in (("a", a), ("b", b), ("c", c)):
        check = validate.init_exponent if name == "b" else validate.exponent
        checked[name] = None if value is None else check(value, f"{where}: {name}")
    checked["alignment"] = (
        None if alignment is None else validate.alignment_triple(alignment, f"{where}: alignment")
    )
    return checked


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """``pattern`` compiled, or a :class:`MaxPError` naming it."""
    try:
        return re.compile(validate.text(pattern, "rule pattern"))
    except re.error as err:
        raise MaxPError(f"rule pattern {pattern!r} is not a regular expression: {err}") from None


def assign_rules(
    patterns: Sequence[str],
    names: Sequence[str],
    matches: Callable[[re.Pattern[str], str], bool] | None = None,
) -> dict[str, int]:
    """The index of the rule that matches each matched name.

    Args:
      patterns: one regular expression per rule.
      names: the candidates, in the order they should be listed in messages.
      matches: whether a compiled pattern matches a name (default: a full match).

    Raises:
      MaxPError: a pattern is not a regular expression, matches no name, or shares a
        name with another pattern.
    """
    compiled = [compile_pattern(p) for p in patterns]
    test = matches or (lambda pattern, name: pattern.fullmatch(name) is not None)
    owner: dict[str, int] = {}
    for k, pattern in enumerate(compiled):
        hits = [name for name in names if test(pattern, name)]
        if not hits:
            sample = ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")
            raise MaxPError(f"rule {patterns[k]!r} matches nothing; candidates look like: {sample}")
        for name in hits:
            if name in owner:
                raise MaxPError(
                    f"{name} is matched by two rules: {patterns[owner[name]]!r} and {patterns[k]!r}"
                )
            owner[name] = k
    return owner


def tied_disagreement(
    names: Sequence[str], stds: Sequence[float], rates: Sequence[float], own_init: bool = False
) -> str | None:
    """What to tell the user when the uses of one tied weight ask for different numbers.

    A tied weight (an embedding table that is also the readout) is one parameter with one
    initial standard deviation and one learning rate; both adapters give it the smallest
    of what its uses ask for, which keeps every use stable. ``None`` when the uses agree.
    ``own_init``: ``stds`` are the scales of the model's own init (with a base width).

    Examples:
      >>> print(tied_disagreement(["wte", "lm_head"], [1.0, 0.0625], [0.01, 0.01]))  # doctest: +ELLIPSIS
      wte and lm_head share one weight (tied); they ask for init std 1 and 0.0625, ...
    """
    if np.allclose(stds, stds[0]) and np.allclose(rates, rates[0]):
        return None
    listed = " and ".join(names)
    init = "a scale of their own init of" if own_init else "init std"
    return (
        f"{listed} share one weight (tied); they ask for {init} {' and '.join(f'{s:.3g}' for s in stds)}, "
        f"learning rate {' and '.join(f'{r:.3g}' for r in rates)}, and the weight takes the smallest of "
        "each. That keeps every use stable but shrinks the larger use as the width grows; multiplying "
        "each use by its own n^-a (as the parametrization's multipliers do) makes muP's uses agree"
    )


def report_uncovered(problems: Sequence[str], strict: bool, fix: str) -> None:
    """Weights no rule covers train at the base rate: an error with ``strict``, else a warning.

    Args:
      problems: one line per uncovered weight (its name, shape and what happens to it).
      strict: raise instead of warning.
      fix: how to cover them (``"Give them a Rule"``).

    Examples:
      >>> report_uncovered([], strict=True, fix="Give them a Rule")  # nothing uncovered: silent
      >>> report_uncovered(["up (64, 256) trains at the base rate"], True, "Give it a Rule")
      Traceback (most recent call last):
      ...
      maxp_core.errors.MaxPError: no maxP layer covers: up (64, 256) trains at the base rate. Give it a Rule
    """
    if not problems:
        return
    message = f"no maxP layer covers: {'; '.join(problems)}. {fix}"
    if strict:
        raise MaxPError(message)
    warn_user(message + " (strict=True makes this an error)")
