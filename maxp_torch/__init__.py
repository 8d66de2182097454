"""maxp for PyTorch: ParametrizedModule and Parametrization on the shared maxp_core solver."""
