"""maxp_core: the framework-free core of maxp."""
