"""The published maxP's framework-free entry points, on this project's solver.

Named parametrization tables, the chain and graph solvers with their published signatures
and return values, the published graph classes and the alignment of one layer from its
tensors. Each is a thin layer over :mod:`maxp_core`; where the published behaviour and
this project's differ on purpose, the docstring says so.
"""
