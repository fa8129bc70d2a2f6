"""An example dpmlp backend plugin; the backend lives in dpmlp_example.ops_example."""
