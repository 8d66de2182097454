"""Which equally shaped layers an adapter measures together, as one stack.

Stacking equally shaped layers makes their measurement a few batched operations instead of a
few per layer: in an eager framework each operation is a dispatch or a kernel launch, and under
a compiler each is a fusion the runtime steps through. The stacks are copies of the weights,
so their size is bounded, and on a CPU, where an operation costs little to start but a copy
costs its memory traffic, large layers are measured one at a time, on the weights themselves.
"""

from __future__ import annotations

#: The most bytes of weights one stack copies at once; it keeps the copies (current and initial
#: weights, twice this at most) small next to the model. A 64-layer MLP of width 128 measured
#: in PyTorch 8 MiB at a time spent 8 MiB more peak memory than 1 MiB at a time, and no time.
STACK_BYTES = 2**20
#: On a CPU, layers of at least this many bytes of weights are measured one at a time.
CPU_SOLO_BYTES = 2**20


def stack_chunks(layers: list[int], weight_bytes: int, on_cpu: bool) -> list[list[int]]:
    """``layers`` (equally shaped, ``weight_bytes`` of weights each) in runs of as many as fit
    :data:`STACK_BYTES`, at least one; on a CPU, one by one from :data:`CPU_SOLO_BYTES` on.

    Examples:
      >>> stack_chunks([0, 1, 2, 3, 4], 128 * 1024 * 4, on_cpu=False)   # 512 KiB each
      [[0, 1], [2, 3], [4]]
      >>> stack_chunks([0, 1, 2], 1024 * 1024 * 4, on_cpu=True)
      [[0], [1], [2]]
    """
    size = max(1, weight_bytes)
    if on_cpu and size >= CPU_SOLO_BYTES:
        return [[k] for k in layers]
    per_chunk = max(1, STACK_BYTES // size)
    return [layers[i : i + per_chunk] for i in range(0, len(layers), per_chunk)]
