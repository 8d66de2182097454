"""maxp for JAX: optax transformations on the shared maxp_core solver."""
