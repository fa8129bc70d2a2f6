"""CUDA graphs for the GPU backends: capture the work queued on the backend's stream once, replay it.

A captured graph replays the very kernels with the very arguments (pointers, sizes, scalars) that
were queued during capture, in the same order, so a replay computes the same bits as the eager
launches it stands for; what it saves is the cost of launching each kernel from Python.

* CuPy: its own ``Stream.begin_capture`` / ``end_capture`` and ``Graph.launch``.
* PyCUDA has no graph API: its stream is captured through NVIDIA's cuda-python driver bindings
  (``cuda.bindings.driver``, part of the ``pycuda`` extra). Both backends run in the device's
  primary context, so the raw stream handle is all the driver needs.

Capture is "relaxed": other threads (an MPI watchdog, CuPy's memory pool) may call CUDA meanwhile.
Nothing may synchronise or allocate during capture; the trainer allocates everything and compiles
every kernel before it captures.
"""

from __future__ import annotations


class GraphUnsupported(RuntimeError):
    """CUDA graphs cannot be used here; the message says why (one line)."""


class CupyGraph:
    """A graph captured from a ``cupy.cuda.Stream``."""

    def __init__(self, graph, stream):
        self._graph, self._stream = graph, stream

    def launch(self) -> None:
        self._graph.launch(stream=self._stream)


def begin_cupy_capture(stream) -> None:
    import cupy

    stream.begin_capture(mode=cupy.cuda.runtime.streamCaptureModeRelaxed)


def end_cupy_capture(stream) -> CupyGraph:
    return CupyGraph(stream.end_capture(), stream)


def _driver():
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python before 12.6 named the module so
        except ImportError:
            raise GraphUnsupported("CUDA graphs with pycuda need NVIDIA's cuda-python "
                                   "(pip install cuda-python, or the pycuda extra)") from None
    return driver


def driver_available() -> tuple[bool, str]:
    try:
        _driver()
    except GraphUnsupported as exc:
        return False, str(exc)
    return True, ""


def _check(result, what: str):
    """cuda-python returns (CUresult, value...): raise on an error, return the values."""
    driver = _driver()
    err, *values = result if isinstance(result, tuple) else (result,)
    if err != driver.CUresult.CUDA_SUCCESS:
        raise RuntimeError(f"{what} failed: {err.name if hasattr(err, 'name') else err}")
    return values[0] if len(values) == 1 else values


class DriverGraph:
    """An executable graph instantiated through the driver API; destroyed with its owner."""

    def __init__(self, graph, stream_handle: int):
        driver = _driver()
        self._driver = driver
        self._graph = graph
        self._exec = _check(driver.cuGraphInstantiate(graph, 0), "cuGraphInstantiate")
        self._stream = driver.CUstream(stream_handle)

    def launch(self) -> None:
        _check(self._driver.cuGraphLaunch(self._exec, self._stream), "cuGraphLaunch")

    def __del__(self):
        try:
            self._driver.cuGraphExecDestroy(self._exec)
            self._driver.cuGraphDestroy(self._graph)
        except Exception:  # noqa: BLE001 - at interpreter exit the driver may be gone first
            pass


def begin_driver_capture(stream_handle: int) -> None:
    driver = _driver()
    _check(driver.cuStreamBeginCapture(
        driver.CUstream(stream_handle), driver.CUstreamCaptureMode.CU_STREAM_CAPTURE_MODE_RELAXED),
        "cuStreamBeginCapture")


def end_driver_capture(stream_handle: int) -> DriverGraph:
    driver = _driver()
    graph = _check(driver.cuStreamEndCapture(driver.CUstream(stream_handle)), "cuStreamEndCapture")
    return DriverGraph(graph, stream_handle)
