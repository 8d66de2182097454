"""Initial weights: one seeded generator per weight, so that they can be drawn again exactly.

Every weight group (a tied weight's uses together) is drawn from its own generator seeded
from the parametrization's seed, at ``std_prefactor * width^-b`` (times the depth rule's
factor); biases start at zero. ``resample_w0`` redraws the same matrix at measurement time
instead of storing a copy.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist

from maxp_core import MaxPError, validate
from maxp_core.initial import forward_gain, warn_on_growing_init
from maxp_torch import sharding
from maxp_torch.layer_set import LayerSet
from maxp_torch.layers import TRANSPOSED

#: Where :func:`~maxp_torch.initialize_abc_weights` leaves the :class:`InitialWeights` that drew a
#: model's layers (set with ``object.__setattr__``, not registered), so they can be redrawn exactly.
INITIAL_DRAWS = "_maxp_initial_draws"


#: With a base width: the attribute of a weight holding the factor it has been multiplied by
#: since it was the model's own, so that another Parametrization of the same model (or one
#: built again after a failed construction) brings it to its scale instead of scaling it twice.
RESCALED = "_maxp_rescaled"


class InitialWeights:
    """Draws (and redraws) the initial weights of a :class:`LayerSet`."""

    def __init__(self, layers: LayerSet, seed: int, std_prefactor: float) -> None:
        self.layers = layers
        self.seed = seed
        self.std_prefactor = std_prefactor

    def std(self, g: int) -> float:
        """Initial standard deviation of group ``g``'s weight: the smallest its layers ask for."""
        layers = self.layers
        if layers.base_width is not None:
            raise MaxPError(
                "with a base width the initial weights are the model's own, scaled by init_scale(); "
                "maxP draws none of its own"
            )
        return min(
            self.std_prefactor
            * layers.std_correction(j)
            * layers.width(layers.weighted[j]) ** -layers.applied_b(j)
            * layers.depth(layers.weighted[j])[0]
            for j in layers.groups[g]
        )

    def scale(self, g: int) -> float:
        """With a base width: what group ``g``'s own initial weight is multiplied by (the
        smallest factor its layers ask for)."""
        return min(self.std_prefactor * self.layers.init_scale(j) for j in self.layers.groups[g])

    def std_exponent(self, g: int) -> float:
        return min(self.layers.applied_b(j) for j in self.layers.groups[g])

    def generator(self, g: int, device: torch.device) -> torch.Generator:
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed * 1_000_003 + g)  # by weight, so parameter-free layers shift nothing
        return gen

    def draw(self, g: int, like: torch.Tensor) -> torch.Tensor:
        """Group ``g``'s initial weight, drawn again from its own seeded generator.

        A transposed layout (``(in, out)``) is drawn as ``(out, in)`` and transposed, so it
        starts from the same matrix as its ``nn.Linear`` twin.
        """
        layers = self.layers
        transposed = layers.modules[layers.weighted[layers.groups[g][0]]].kind is TRANSPOSED
        shape = like.shape[::-1] if transposed else like.shape
        noise = torch.randn(
            shape, generator=self.generator(g, like.device), device=like.device, dtype=like.dtype
        )
        return (noise.T if transposed else noise) * self.std(g)

    @torch.no_grad()
    def apply(self, reinit: bool) -> None:
        """Set every layer's output multiplier; draw the weights (``reinit``) or check they may stay."""
        layers = self.layers
        for k, module in enumerate(layers.modules):
            module.scale = 1.0 if module.folded else float(layers.multiplier(k))
        if reinit and layers.base_width is None:
            self.warn_on_growing_init()
        for g, members in enumerate(layers.groups):
            first = layers.weighted[members[0]]
            weight = layers.modules[first].weight
            assert weight is not None
            if not reinit:
                if math.isinf(self.std_exponent(g)) and bool(sharding.full(weight).any()):
                    raise MaxPError(
                        f"layer {layers.names[first]!r} is declared zero-initialised (b = inf) but keeps its "
                        "current weights (reinit=False), which are not zero; zero them or give a finite b"
                    )
                continue
            if layers.base_width is not None:  # the model's own draw, its width law corrected
                self.rescale(g, weight)
                continue
            sharding.assign(weight, self.draw(g, weight))
            if hasattr(weight, RESCALED):  # a fresh draw: nothing of an earlier base width's scale remains
                delattr(weight, RESCALED)
            for j in members:
                bias = getattr(layers.modules[layers.weighted[j]].inner, "bias", None)
                if isinstance(bias, torch.Tensor):
                    bias.zero_()

    def warn_on_growing_init(self) -> None:
        """Name the hidden layers whose drawn weights would make activations grow through depth."""
        layers = self.layers
        gains = []
        for g, members in enumerate(layers.groups):
            for j in members:
                k = layers.weighted[j]
                gain = forward_gain(layers.dims(k)[1], self.std(g), float(layers.modules[k].scale))
                gains.append((layers.names[k], layers.modules[k].layer_type, gain))
        warn_on_growing_init(gains)

    def rescale(self, g: int, weight: torch.Tensor) -> None:
        """Bring group ``g``'s own weight to :meth:`scale` times its initial value (idempotent:
        a second call, after the depth rule is known or by another Parametrization of the same
        model, corrects the first, :data:`RESCALED`)."""
        target, done = self.scale(g), float(getattr(weight, RESCALED, 1.0))
        if target == 0.0 or done == 0.0:
            weight.zero_()
        else:
            weight.mul_(target / done)
        setattr(weight, RESCALED, target)

    def check_redraw(self, k: int) -> None:
        """``resample_w0`` redraws the initial weights: they must be what layer ``k`` holds now."""
        weight = self.layers.modules[k].weight
        assert weight is not None
        if not torch.equal(self.draw(self.layers.group_of(k), weight.detach()), weight.detach()):
            raise MaxPError(
                f"resample_w0=True redraws layer {self.layers.names[k]!r}'s initial weight from "
                f"seed={self.seed} and std_prefactor={self.std_prefactor}, but that is not the weight it "
                "holds now: the weights were drawn with another seed, std_prefactor, device or dtype (or "
                "not by maxP); give those of the initialisation, or resample_w0=False to store the weights"
            )


def initial_seed(seed: int | None, reinit: bool) -> int:
    """``seed`` checked; without one, a reinitialising run draws it from torch's global
    generator (as torch's own init does) and a run that keeps its weights takes 0."""
    if seed is None:
        return draw_seed() if reinit else 0
    return validate.integer(seed, "seed", 0)


def draw_seed() -> int:
    """A seed for the per-layer generators, drawn from torch's global generator; under
    ``torch.distributed``, rank 0's draw, so that every replica starts from the same weights
    however each rank seeded its own generator.

    Examples:
      >>> _ = torch.manual_seed(0); first = draw_seed()
      >>> _ = torch.manual_seed(0); first == draw_seed()
      True
    """
    seed = torch.randint(0, 2**31 - 1, (1,))
    if dist.is_available() and dist.is_initialized():
        nccl = dist.get_backend() == "nccl"  # NCCL groups take no CPU tensors
        shared = seed.to(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
        dist.broadcast(shared, src=0)
        seed = shared.cpu()
    return int(seed.item())
