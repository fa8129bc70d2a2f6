"""The backend conformance suite: the rules of the ops contract (core/ops.py) that a test can
check, run against any registered backend, built-in or plugin.

    python -m pytest --pyargs core.conformance --dpmlp-backend NAME      # dpmlp installed
    python -m pytest -p core.conformance.plugin --pyargs core.conformance --dpmlp-backend NAME

(the first form needs dpmlp installed, whose ``pytest11`` entry point loads
``core.conformance.plugin``; the second works from a checkout with ``PYTHONPATH=.``).
``--dpmlp-dtype float32`` (or float64) limits it to one dtype; ``--dpmlp-quick`` leaves out the
subprocess runs (``--verify`` in one process and under ``mpirun -n 2``).

What it checks, module by module:

* ``test_arrays``: class attributes, availability and device count, memory and transfers,
  ``flat_views``/``cols`` as views (writes show through, zero widths), ``.shape`` logical,
  labels, ``device_pointer`` of views, ``device_memory``, ``max_elements``;
* ``test_ops``: every contract op and fused op against the NumPy reference in float64 on the same
  (rounded) inputs, both dtypes, odd shapes, zero columns, every transpose and alpha/beta of
  ``gemm``, every aliasing the contract allows; ``--gemm simt`` is IEEE (operands TF32 cannot
  hold); a finite loss from extreme logits;
* ``test_device``: the stream rules (a constant handle, nonzero where graphs are offered),
  ``synchronize``, and capture: an op sequence warmed up, captured and replayed gives the eager
  bits (backends with ``graph_support()``; skipped with the reason otherwise);
* ``test_training``: a CUDA-graph epoch equals the eager one bit for bit, resuming (at an epoch
  boundary and inside an epoch) is bit-identical to an uninterrupted run, and lockstep
  ``--verify`` passes in one process and under ``mpirun -n 2`` (host-staged MPI).

A backend that is not available here skips every test with its ``availability()`` reason.
"""
