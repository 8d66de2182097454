"""Dynamic re-solves between jitted training steps, so the step holds no host callback."""

from __future__ import annotations

from typing import Any

import jax

from maxp_core import MaxPError, validate, warn_user
from maxp_jax.dynamic import AlignmentResolver, DynamicAlignment, mark_solved_between_steps, with_outcome
from maxp_jax.spec import MaxPSpec
from maxp_jax.transform import ScaleByMaxPState, check_state_of, find_maxp_state, replace_maxp_state


class SolveBetweenSteps:
    """Measure the alignments and re-solve the LP between training steps.

    The partner of ``DynamicAlignment(..., in_step=False)``: the optimizer update then only
    applies the factors, and this object, called after every step with the number of
    updates applied so far, re-solves when the schedule says so. It gives the numbers the
    in-step re-solve gives (same measurement, same rules for missing and non-finite
    numbers, same EMAs and counters). A step that is not due costs one integer
    comparison on the host and no device work; a due one runs the measurement (compiled
    once), copies the alignments to the host, solves and writes the new factors into the
    returned optimizer state.

    Why: a compiled step that holds a host callback, as the in-step re-solve's does, is
    dispatched by JAX's Python path on every call, due or not, where a step without one
    takes the fast C++ path. On a GPU, where a step takes milliseconds, that difference
    shows (see ``benchmarks.overhead``).

    Args:
      spec: the :class:`~maxp_jax.MaxPSpec` given to :func:`~maxp_jax.scale_by_maxp`.
      dynamic: the same :class:`~maxp_jax.DynamicAlignment`, with ``in_step=False``.

    Raises:
      MaxPError: ``dynamic`` re-solves in the step, or an argument has the wrong type.

    Examples:
      >>> import jax, jax.numpy as jnp, optax
      >>> from maxp_jax import DynamicAlignment, MaxPSpec, Rule, find_maxp_state, scale_by_maxp
      >>> params = {"w1": jnp.ones((4, 32)) / 8, "w2": jnp.ones((32, 32)) / 32, "w3": jnp.ones((32, 2)) / 32}
      >>> apply = lambda p, x: jax.nn.relu(jax.nn.relu(x @ p["w1"]) @ p["w2"]) @ p["w3"]
      >>> spec = MaxPSpec(params, [Rule("w1", "embedding"), Rule("w2", "hidden"), Rule("w3", "readout")])
      >>> x = jnp.linspace(-1, 1, 32).reshape(8, 4)
      >>> dyn = DynamicAlignment(apply, x, solve_interval=2, in_step=False)
      >>> tx = optax.chain(optax.scale_by_adam(), scale_by_maxp(spec, dyn), optax.scale_by_learning_rate(0.1))
      >>> solve = SolveBetweenSteps(spec, dyn)
      >>> @jax.jit
      ... def step(p, s):
      ...     grads = jax.grad(lambda q: (apply(q, x) ** 2).mean())(p)
      ...     updates, s = tx.update(grads, s, p)
      ...     return optax.apply_updates(p, updates), s
      >>> state = tx.init(params)
      >>> for k in range(4):
      ...     params, state = step(params, state)
      ...     state = solve(state, params, updates_done=k + 1)
      >>> int(find_maxp_state(state).solves)
      2
    """

    def __init__(self, spec: MaxPSpec, dynamic: DynamicAlignment) -> None:
        if not isinstance(spec, MaxPSpec):
            raise MaxPError(f"SolveBetweenSteps: spec must be a MaxPSpec, got {type(spec).__name__}")
        if not isinstance(dynamic, DynamicAlignment):
            raise MaxPError(
                f"SolveBetweenSteps: dynamic must be a DynamicAlignment, got {type(dynamic).__name__}"
            )
        if dynamic.in_step:
            raise MaxPError(
                "SolveBetweenSteps needs DynamicAlignment(..., in_step=False), given to scale_by_maxp as "
                "well; with in_step=True the optimizer update re-solves by itself"
            )
        self.spec = spec
        self.dynamic = dynamic
        mark_solved_between_steps(dynamic)
        self._resolver = AlignmentResolver(spec, dynamic)
        self._measure = jax.jit(self._resolver.measure)
        self._seen: int | None = None  # the last updates_done this object was called with
        self._solved_at: int | None = None  # the update it last re-solved after

    def due(self, updates_done: int) -> bool:
        """Whether a call after ``updates_done`` optimizer updates re-solves."""
        count = validate.integer(updates_done, "SolveBetweenSteps: updates_done", 0)
        return self._resolver.schedule.should_solve(count)

    def __call__(self, opt_state: Any, params: Any, updates_done: int, collections: Any = None) -> Any:
        """``opt_state``, re-solved if due after ``updates_done`` updates (1 after the first step).

        Returns ``opt_state`` itself when no re-solve is due, or when this update's re-solve
        is already in it (a second call with the same ``updates_done``, as after every
        micro-step of ``optax.MultiSteps``), else a copy whose maxP state holds the new
        factors, exponents, alignments and counters. A due re-solve of an earlier update that
        was never made is reported with a warning. Use one object per training run: it
        remembers the update it last re-solved after. ``collections``: the model's current
        collections (batch statistics), needed when the ``DynamicAlignment`` has some.

        Raises:
          MaxPError: ``opt_state`` holds no maxP state of this ``spec`` and ``dynamic``, or,
            on a due call, its update count is not ``updates_done`` or ``params`` is not a
            params pytree of the spec.
        """
        if collections is not None:
            self._resolver.current_collections({"maxp_collections": collections})  # refused if unexpected
        solving = self.due(updates_done) and updates_done != self._solved_at
        if solving:
            state = find_maxp_state(opt_state)
            self._check(state, params, updates_done)
        seen, self._seen = self._seen, updates_done
        self._warn_if_missed(opt_state, seen, updates_done)
        if not solving:
            return opt_state
        measured, nonfinite = self._measure(params, state, {"maxp_collections": collections})
        outcome = self._resolver.solve_on_host(
            *jax.device_get((measured, state.alignment, state.c, nonfinite, state.failures))
        )
        resolved = with_outcome(state, outcome)
        self._solved_at = updates_done
        return replace_maxp_state(opt_state, lambda _: resolved)

    def _warn_if_missed(self, opt_state: Any, seen: int | None, updates_done: int) -> None:
        """Say so when re-solves due before ``updates_done`` were never made.

        Since the last call, the schedule tells; on a first call, only a run that never
        re-solved can be judged (a resumed run may have changed its schedule).
        """
        schedule = self._resolver.schedule
        if seen is not None:
            missed = schedule.solves_through(updates_done - 1) - schedule.solves_through(seen)
        else:
            state = find_maxp_state(opt_state)
            made = int(state.solves) + int(state.failures)
            missed = schedule.solves_through(updates_done - 1) if made == 0 else 0
        if missed > 0:
            warn_user(
                f"SolveBetweenSteps: {missed} re-solve(s) due before update {updates_done} were never "
                "made; call it after every optimizer update (the rates stayed as they were)"
            )

    def _check(self, state: ScaleByMaxPState, params: Any, updates_done: int) -> None:
        check_state_of(state, self.spec, "SolveBetweenSteps")
        expected = jax.tree.structure(self.spec.params)
        if params is None or jax.tree.structure(params) != expected:  # type: ignore[operator]
            given = "None" if params is None else str(jax.tree.structure(params))[:300]
            raise MaxPError(
                "SolveBetweenSteps: params must be the current params pytree of the spec (after the "
                f"update), structured as {str(expected)[:300]}; got {given}"
            )
        measured = len(self._resolver.layer_inputs(params).measured)
        if len(state.z0) != measured:
            raise MaxPError(
                f"SolveBetweenSteps: the optimizer state keeps the initial inputs of {len(state.z0)} layers, "
                f"this spec measures {measured}; give scale_by_maxp the same DynamicAlignment"
            )
        taken = int(state.count)
        if taken != updates_done:
            raise MaxPError(
                f"SolveBetweenSteps: updates_done={updates_done} but the optimizer state has applied {taken} "
                "updates; pass the number of updates applied so far (1 after the first step)"
            )
