"""The ops contract: what every compute backend implements, and nothing more.

The model (core/model.py) is written once in terms of these operations; no backend knows the model.

Conventions shared by every backend
-----------------------------------
* Matrices are **column-major** (Fortran order), as in the course code and cuBLAS: a matrix of
  shape (rows, cols) stores column j contiguously. A minibatch X is 784 x N with one sample per
  column, so a rank's slice of a minibatch (a range of columns) is one contiguous block.
* Vectors are 1-D. Labels are integer vectors (see "Labels" below).
* Every op writes into an ``out`` array the caller allocated; no op allocates inside the training
  step (see "Allocation" below for what that means precisely). ``out`` may alias an input only
  where the docstring says so.
* Every op accepts zero columns (a rank that received no samples of this minibatch) and then does the
  mathematically right thing (a sum over nothing is 0; ``gemm`` with K = 0 gives beta C).
* Floating point arrays have the backend's dtype (float32 or float64), fixed at construction.

The array contract (what core assumes of a backend's arrays)
------------------------------------------------------------
* **Opaque handles.** Core reads exactly one attribute of a backend array: ``.shape``, a tuple of
  Python-int-convertible sizes giving the *logical* shape, (rows, cols) of a matrix or (n,) of a
  vector, whatever the library stores. Core never reads ``.size``, ``.dtype``, ``.T``, strides or
  flags, never indexes, slices or does arithmetic on an array: it hands arrays back to the
  backend's methods. (tests/test_device_contract.py trains with the ``shape-only`` backend of
  tests/shape_only_backends.py, whose arrays have ``.shape`` and nothing else, so core cannot
  start relying on more.)
* **Contiguous** in this contract means *column-major contiguous* (Fortran order): the elements,
  taken column by column, occupy one dense block of memory with no gaps. Every array core holds is
  contiguous in this sense: those of ``empty``/``zeros``/``from_host``, ``flat_views`` of them, and
  ``cols`` of them (a range of whole columns of a column-major matrix is one dense block). Libraries
  whose notion of contiguity is row-major (PyTorch, CuPy's ``c_contiguous``) call such a column
  view "not contiguous"; that is expected: store a (rows, cols) matrix as the row-major (cols, rows)
  array it is in memory and expose its transpose (strides (1, rows)), as the Triton example does.
* **No op produces a view with a leading dimension larger than its rows** (a row slice): ``cols``
  takes whole columns and ``flat_views`` packs back to back. So the only strides an op meets are
  those of column-major contiguous arrays; a backend may reject anything else (the built-in GPU
  GEMM happens to honour a larger leading dimension, which nothing in core uses).
* ``cols`` and ``flat_views`` return **views**: writing through them changes the parent, and they
  stay valid as long as the parent is referenced (core keeps the parents alive).

The device contract (backends with ``host_resident = False``)
-------------------------------------------------------------
* **Devices.** ``device_count()`` is the number of devices this backend can use here; a device
  backend whose ``device_count()`` is 0 must report ``availability()`` False (the trainer never
  constructs it). The trainer constructs one backend per rank with ``device_index`` = node-local
  rank mod ``device_count()`` (several ranks may share one device); host backends (count 0) get
  None.
* **Pointers.** ``device_pointer(arr)`` is the device address of the view's *first element*
  (element (0, 0), or element 0 of a vector), not of the allocation it views: ``cols(flat, lo, hi)``
  has the address of ``flat`` plus ``lo`` elements. The address is stable: the same array (or view)
  has the same address for as long as it, or its parent, is referenced (no moving or compacting
  allocator), because NCCL and captured graphs keep raw addresses.
* **Streams.** All work of one backend instance is queued, in call order, on one CUDA stream,
  ``stream_handle()`` (the raw ``cudaStream_t`` as an int), which must not change during the
  instance's life: NCCL queues its reductions on it (through events), CUDA graphs are captured and
  replayed on it, the bench records events on it. 0 means the legacy default stream; it is allowed
  only for a backend without CUDA graphs (``graph_support()`` False), since the legacy stream
  cannot be captured, and it serialises with every other stream. The trainer calls every method of
  a backend from the thread that constructed it; a library whose "current stream" is per thread
  (PyTorch, CuPy) must make the backend's stream current for the work each op queues (the Triton
  example does so on entry to each op, so several instances may coexist in one thread).
  ``synchronize()`` blocks until the work queued on the backend's stream so far has finished (the
  stream, not the whole device); after it, memory reached through ``device_pointer`` holds the
  results (CUDA-aware MPI relies on this). Transfers (``to_host``, ``copy_to_host``,
  ``copy_from_host``, ``from_host``) are ordered with the stream's work and return once the host
  side may be read or reused.
* **Allocation.** Core allocates every array it uses before training (``empty``, ``zeros``,
  ``from_host``, ``host_buffer``). An op may allocate a temporary or workspace of its own (an index
  dtype, a softmax when ``out`` is ``x``, an argmax, the base class's ones vector of
  ``gemm_with_bias_grad``) **on its first call for given shapes**, and keep it; it must not allocate
  again when called again with shapes (and views) it has seen, because that call may be captured.
  Anything a captured op uses must stay allocated while the backend lives.
* **CUDA graphs** (optional; any backend may take part). A backend that returns (True, "") from
  ``graph_support()`` implements ``begin_capture()`` (start recording the work queued on its stream),
  ``end_capture()`` (stop; return an object whose ``launch()`` queues the recorded work again on the
  backend's stream) and keeps the rules above. The trainer's protocol, for ``--cuda-graphs
  auto|on``: it allocates everything; then **warms up eagerly** every op it will capture, with the
  same shapes and views (one training step of each batch size of an epoch, the parameters restored
  bit for bit afterwards, and one evaluation pass), so that lazy allocations and JIT compilation
  happen outside capture; then ``begin_capture()``, the epoch's steps (and, under NCCL, its
  collectives), ``end_capture()``; each epoch is then one ``launch()``. Between begin and end the
  trainer calls no transfer, no ``synchronize``, no ``sum_squares`` and no allocation. A backend
  without graphs (the default) trains eagerly; ``--cuda-graphs auto`` says why in one line (the
  reason ``graph_support()`` returns), ``--cuda-graphs on`` makes it an error.
* **Memory pre-flight.** ``device_memory()`` returns (free, total) bytes of this instance's device
  (None where unknown; host backends: None). Before anything large is allocated the trainer
  estimates what a rank puts on its device (data set, parameters, gradients, activations) and,
  with all ranks sharing the device counted, ends with one line and exit 2 when it exceeds the
  free memory; ``max_elements`` (None: no limit) is the largest array an op of the backend can
  index (the built-in kernels and Triton's default offsets are 32-bit), checked the same way.
* **Labels.** Labels reach a backend only through ``from_host`` of an integer NumPy array (the
  trainer passes int32; values in [0, classes)), once per data set, and through ``cols`` of the
  result. ``from_host`` may store them in whatever integer dtype the backend's ops want (int64 for
  a library whose gather/scatter needs it): the trainer never writes labels and never reads them
  back. ``to_host`` of a label array returns its values (any integer dtype).
* **Precision.** ``--gemm simt`` promises IEEE arithmetic of the backend dtype in every GEMM and
  fused GEMM: float32 products and sums in FP32 (fused multiply-adds allowed, subnormals may be
  flushed to zero), never TF32, bf16 or another reduced-precision mode; a library's TF32 switch
  must be off for it (the conformance suite checks with operands that TF32 cannot represent).
  Other ``gemm_modes`` (``tf32x3``) promise a relative max-norm error at most twice simt's.
  Element-wise ops are accurate to a few ulp of the dtype.
* **NCCL.** ``--comm nccl`` (comm/nccl.py) needs CuPy installed (it drives ``cupy.cuda.nccl``),
  whatever library the backend uses, one device per rank, and of the backend: ``device_index``,
  ``device_pointer``, ``stream_handle`` and ``synchronize``, with its memory on that device in the
  process's primary CUDA context (CuPy, PyCUDA's primary context and PyTorch all share it). Without
  CuPy, ``--comm mpi`` stages the gradients through ``host_buffer()`` (``copy_to_host`` /
  ``copy_from_host``), which works for every backend.

The conformance suite (core/conformance) checks the rules above that a test can check:
``python -m pytest --pyargs core.conformance --dpmlp-backend NAME``.

A backend is registered through the ``register_backends`` hook (core/hookspecs.py). Heavy imports
(cupy, pycuda) happen inside the backend's methods, never at module import time, so that the core and
``--list-backends`` work on machines without them.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, Sequence

import numpy as np

Array = Any  # the backend's own array type: numpy.ndarray, cupy.ndarray, a device-matrix view ...

SUPPORTED_DTYPES = ("float32", "float64")

#: Every GEMM algorithm a backend may offer (``--gemm``'s choices; ``Backend.gemm_modes`` says
#: which one backend has): "simt", the plain floating-point GEMM every backend has, and "tf32x3",
#: the GPU backends' float32 GEMM on the TF32 tensor cores. The one list: core's flags and the GPU
#: backends' planner (backends/gemm_plan.py) both name these.
GEMM_MODES = ("simt", "tf32x3")

#: Fused ops: each does the work of several contract ops in one pass. They are not abstract: the
#: base class computes them from the contract's ops, so every backend has them, and a backend
#: overrides one to do it in fewer launches. Each still has a NumPy reference and parity tests.
FUSED_OPS = ("sgd_step", "gemm_bias_sigmoid", "gemm_sigmoid_backward", "gemm_with_bias_grad",
             "output_layer", "output_backward")

#: The ops of ``--exact`` mode (core/exact.py): float64 only, and every one of them must give the
#: NumPy reference's bits exactly (no tolerance), so that training is bit-identical on every
#: backend. Optional: the base class raises NotImplementedError, and ``--exact`` names the backend
#: that lacks them. Their element-wise math is core/exact_math.py's, operation for operation.
EXACT_OPS = ("exact_row_exponents", "exact_split", "exact_combine", "exact_sigmoid",
             "exact_sigmoid_backward", "exact_output_layer", "exact_sgd_step")


class Backend(abc.ABC):
    """Abstract compute backend. Subclasses implement every abstract method below."""

    #: registry name, used by ``--backend``
    name: ClassVar[str]
    #: one line for ``--list-backends``
    description: ClassVar[str] = ""
    #: True when arrays live in host memory that MPI can read directly (no staging needed)
    host_resident: ClassVar[bool] = False
    #: ranking for the default ``--backend``: the available backend with the highest priority wins.
    #: None (the default) never becomes the default backend, only ``--backend NAME`` selects it;
    #: the built-ins state numpy 0, pycuda 10, cupy 20.
    priority: ClassVar[int | None] = None
    #: the largest element count of one array that the backend's ops can index (None: no limit);
    #: the trainer's pre-flight turns a model or data set beyond it into one line and exit 2
    max_elements: ClassVar[int | None] = None

    @classmethod
    def availability(cls) -> tuple[bool, str]:
        """Return (available, reason). Must not raise; the reason says why not, or what was found."""
        return True, ""

    @classmethod
    def device_count(cls) -> int:
        """Number of devices this backend can use here (0 for host backends). A device backend
        that finds 0 must also return False from ``availability()``."""
        return 0

    def __init__(self, dtype: str = "float64", device_index: int | None = None):
        if str(dtype) not in SUPPORTED_DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; choose one of {SUPPORTED_DTYPES}")
        self.dtype = np.dtype(dtype)
        self.device_index = device_index

    def describe_device(self) -> str:
        """Human-readable name of the device this instance computes on."""
        return "cpu"

    #: the GEMM algorithms ``--gemm`` may choose for this backend (see set_gemm_mode)
    gemm_modes: ClassVar[tuple[str, ...]] = ("simt",)
    #: the one in use; "simt", the plain floating-point GEMM, unless set_gemm_mode chose another
    gemm_mode: str = "simt"

    def set_gemm_mode(self, mode: str) -> None:
        """Choose the GEMM algorithm of every GEMM (and fused GEMM) from now on (``--gemm``):
        "simt" (every backend) or another of ``gemm_modes``. Raises ValueError, saying why, for a
        mode this backend, dtype or device cannot run; the trainer turns it into a one-line error
        naming --gemm. A backend with other modes overrides this."""
        if mode != "simt":
            raise ValueError(f"backend {self.name} has only the simt GEMM")
        self.gemm_mode = mode

    # ----------------------------------------------------------------- memory and transfers
    @abc.abstractmethod
    def empty(self, shape: Sequence[int], dtype: Any = None) -> Array:
        """Uninitialised array of ``shape`` (column-major) and the backend dtype (or ``dtype``)."""

    def zeros(self, shape: Sequence[int], dtype: Any = None) -> Array:
        """Array of zeros."""
        out = self.empty(shape, dtype)
        self.fill(out, 0.0)
        return out

    @abc.abstractmethod
    def from_host(self, host: np.ndarray) -> Array:
        """New backend array holding a copy of ``host``. Floating arrays are cast to the backend
        dtype; integer arrays (labels) become an integer array of the backend's choice (int32, or
        int64 where its ops want it; see "Labels" above). Layout becomes column-major."""

    @abc.abstractmethod
    def to_host(self, arr: Array) -> np.ndarray:
        """New NumPy array (column-major) holding a copy of ``arr``. Synchronises."""

    @abc.abstractmethod
    def copy_to_host(self, arr: Array, host: np.ndarray) -> None:
        """Copy the 1-D contiguous ``arr`` into the same-sized ``host`` buffer. Synchronises."""

    @abc.abstractmethod
    def copy_from_host(self, host: np.ndarray, arr: Array) -> None:
        """Copy the 1-D ``host`` buffer into the same-sized contiguous ``arr``. Returns once
        ``host`` may be reused (work queued afterwards sees the new ``arr``)."""

    def host_buffer(self, size: int) -> np.ndarray:
        """A reusable 1-D host staging buffer of ``size`` elements (pinned on GPU backends)."""
        return np.empty(size, dtype=self.dtype)

    @abc.abstractmethod
    def flat_views(self, flat: Array, shapes: Sequence[Sequence[int]]) -> list[Array]:
        """Column-major views, one per shape, packed back to back into the 1-D array ``flat``."""

    @abc.abstractmethod
    def cols(self, arr: Array, start: int, stop: int) -> Array:
        """View of columns [start, stop) of a matrix, or elements [start, stop) of a vector."""

    def synchronize(self) -> None:
        """Block until all work queued so far on this backend's stream has finished (the stream,
        not the whole device). Host backends: nothing to do."""

    def device_pointer(self, arr: Array) -> int:
        """Device address of ``arr``'s first element (of the view, not of the allocation it
        views), stable while ``arr`` or its parent is referenced; for NCCL and CUDA-aware MPI.
        Host backends raise NotImplementedError."""
        raise NotImplementedError(f"backend {self.name!r} has no device memory")

    def stream_handle(self) -> int:
        """Raw CUDA stream handle (``cudaStream_t`` as an int) that every op of this instance
        queues on; constant for the instance's life. 0 is the legacy default stream, allowed only
        without CUDA graphs. Host backends: 0."""
        return 0

    def device_memory(self) -> tuple[int, int] | None:
        """(free, total) bytes of this instance's device now, for the trainer's memory
        pre-flight; None where unknown (the default, and host backends, whose memory the host
        check counts)."""
        return None

    # ----------------------------------------------------------------- CUDA graphs (optional)
    def graph_support(self) -> tuple[bool, str]:
        """(True, "") when ``begin_capture``/``end_capture`` work here, else (False, why)."""
        return False, f"backend {self.name!r} has no CUDA graphs"

    def begin_capture(self) -> None:
        """Start recording the work queued from now on instead of running it. Between this and
        ``end_capture`` nothing may allocate, copy to or from the host, or synchronise."""
        raise NotImplementedError(self.graph_support()[1])

    def end_capture(self) -> Any:
        """Stop recording; return a graph whose ``launch()`` queues the recorded work again, with
        the same arguments, on this backend's stream (bit-identical to running it eagerly)."""
        raise NotImplementedError(self.graph_support()[1])

    # ----------------------------------------------------------------- math
    @abc.abstractmethod
    def fill(self, arr: Array, value: float) -> None:
        """arr[...] = value, for arrays of the backend dtype and int32 arrays."""

    @abc.abstractmethod
    def gemm(self, a: Array, b: Array, c: Array, alpha: float = 1.0, beta: float = 0.0,
             trans_a: bool = False, trans_b: bool = False) -> None:
        """C = alpha * op(A) @ op(B) + beta * C, op(X) = X or X^T.

        op(A) is M x K, op(B) is K x N, C is M x N. With beta = 0 the old C is never read (it may
        hold NaN). C must not alias A or B. Operands are column-major contiguous (arrays, ``cols``
        and ``flat_views`` of them); the transposes are flags, never transposed views. With
        ``gemm_mode`` "simt" the arithmetic is IEEE in the backend dtype (no TF32)."""

    @abc.abstractmethod
    def bias_sigmoid(self, z: Array, bias: Array, out: Array) -> None:
        """out = sigmoid(z + bias 1^T): bias (length rows) added to every column. out may alias z."""

    @abc.abstractmethod
    def add_bias(self, z: Array, bias: Array) -> None:
        """z += bias 1^T, in place."""

    @abc.abstractmethod
    def sigmoid(self, x: Array, out: Array) -> None:
        """out = 1 / (1 + exp(-x)), element-wise. out may alias x."""

    @abc.abstractmethod
    def softmax(self, x: Array, out: Array, axis: int = 0) -> None:
        """Numerically stable softmax: out = exp(x - max) / sum exp(x - max).

        axis=0 normalises each column (one sample per column, the model's case); axis=1 each row.
        out may alias x."""

    @abc.abstractmethod
    def sigmoid_backward(self, grad: Array, a: Array, out: Array) -> None:
        """out = grad * a * (1 - a), where a = sigmoid(z). out may alias grad."""

    @abc.abstractmethod
    def reduce_cols(self, x: Array, out: Array, alpha: float = 1.0) -> None:
        """out_i = alpha * sum_j x_ij: the columns of x summed into one vector (bias gradient)."""

    @abc.abstractmethod
    def softmax_xent_backward(self, yhat: Array, labels: Array, scale: float, out: Array) -> None:
        """out = scale * (yhat - Y), Y the one-hot matrix of labels (Y[labels[j], j] = 1).
        out may alias yhat."""

    @abc.abstractmethod
    def axpy(self, alpha: float, x: Array, y: Array) -> None:
        """y += alpha * x, element-wise over same-shaped arrays (the SGD step and the reg term)."""

    @abc.abstractmethod
    def nll_sum(self, yhat: Array, labels: Array, acc: Array) -> None:
        """acc[0] += sum_j -log(yhat[labels[j], j]); ``acc`` is a 1-element array of the dtype.
        Labels must lie in [0, rows); the data loader guarantees it."""

    @abc.abstractmethod
    def count_correct(self, scores: Array, labels: Array, acc: Array) -> None:
        """acc[0] += number of columns j whose argmax_i scores[i, j] equals labels[j]
        (first maximum on ties); ``acc`` is a 1-element array of the dtype."""

    # ----------------------------------------------------------------- fused ops (FUSED_OPS)
    def sgd_step(self, params: Array, grads: Array, lr: float, reg: float = 0.0,
                 reg_ranges: Sequence[tuple[int, int]] = ()) -> None:
        """The regularised SGD step over flat buffers: first grads[lo:hi] += reg * params[lo:hi]
        for each of at most two element ranges [lo, hi) (the weights; biases are not penalised),
        then params -= lr * grads over all elements. Both arrays are contiguous and same-shaped;
        element indices count in column-major order. Equal to ``axpy(reg, ...)`` per range, then
        ``axpy(-lr, grads, params)``, which is how this default computes it."""
        if reg:
            for lo, hi in reg_ranges:
                self.axpy(reg, self.cols(params, lo, hi), self.cols(grads, lo, hi))
        self.axpy(-lr, grads, params)

    def gemm_bias_sigmoid(self, a: Array, b: Array, bias: Array, out: Array) -> None:
        """out = sigmoid(a @ b + bias 1^T): a is M x K, b K x N, bias length M, out M x N (the
        hidden layer's forward pass, z1 = W1 x, in one op). out must not alias a or b; it is never
        read. Equal to ``gemm(a, b, out)`` then ``bias_sigmoid(out, bias, out)``, which is how this
        default computes it."""
        self.gemm(a, b, out)
        self.bias_sigmoid(out, bias, out)

    def gemm_sigmoid_backward(self, a: Array, b: Array, act: Array, out: Array) -> None:
        """out = (a^T @ b) * act * (1 - act): a is K x M, b K x N, act and out M x N (da1 =
        W2^T diff and dz1 in one op; act = a1 = sigmoid(z1)). out must not alias a, b or act; it is
        never read. Equal to ``gemm(a, b, out, trans_a=True)`` then ``sigmoid_backward(out, act, out)``,
        which is how this default computes it."""
        self.gemm(a, b, out, trans_a=True)
        self.sigmoid_backward(out, act, out)

    def gemm_with_bias_grad(self, a: Array, b: Array, out: Array) -> None:
        """A layer's weight and bias gradients in one op: a is M x K, b N x K, out M x (N + 1);
        out[:, :N] = a @ b^T and out[:, N] = a @ 1, the row sums of a (dW = dz x^T and db = sum_j dz
        of K samples, as the flat gradient buffer holds them: db right after dW is one M x (N + 1)
        column-major matrix). out must not alias a or b; it is never read. K = 0 gives zeros.

        This default computes out[:, :N] with ``gemm`` and the last column as a ``gemm`` against a
        ones vector, which it allocates once (and again only for a longer K)."""
        n, k = b.shape[0], a.shape[1]
        self.gemm(a, b, self.cols(out, 0, n), trans_b=True)
        ones = getattr(self, "_bias_grad_ones", None)
        if ones is None or ones.shape[0] < k:
            ones = self._bias_grad_ones = self.empty((max(k, 1),))
            self.fill(ones, 1.0)
        (ones_col,) = self.flat_views(self.cols(ones, 0, k), [(k, 1)])
        self.gemm(a, ones_col, self.cols(out, n, n + 1))

    def output_layer(self, w2: Array, b2: Array, a1: Array, labels: Array, scale: float,
                     diff: Array, nll_acc: Array) -> None:
        """The softmax output layer of a training step and its cross-entropy, from the hidden
        activations: for each column j of ``a1`` (hidden x n), with C = rows of ``w2`` (C x hidden)

            z = w2 a1[:, j] + b2,   m = max_i z_i,   s = sum_i exp(z_i - m),
            diff[:, j] = scale * (exp(z - m) / s - onehot(labels[j]))      (C x n, written)
            nll_acc[0] += sum_j (log(s) + m - z[labels[j]])                (1 element, added to)

        i.e. the gradient of ``scale * sum_j CE_j`` w.r.t. the logits and the cross-entropy summed
        over the columns, computed from the logits (log-sum-exp): finite whenever the logits are,
        where ``-log(softmax(z))`` is inf once a probability underflows. ``diff`` aliases nothing;
        labels lie in [0, C). Zero columns: nothing is written and ``nll_acc`` is unchanged.

        This default composes contract ops (gemm, add_bias, softmax, nll_sum,
        softmax_xent_backward) and is finite whenever the logits are: before ``nll_sum`` it adds
        t = the dtype's smallest normal number (``np.finfo(dtype).tiny``, 2^-126 in float32) to
        every probability, so a column's loss is ``-log(p + t)`` with p = softmax(z)[label]. That
        leaves p's bits unchanged, so the loss equals the log-sum-exp above to rounding, wherever
        p >= 2^25 t in float32, 2^54 t in float64 (a per-sample loss below 70, 670); beyond it the
        loss stays finite, within log 2 of the true one, and is capped at -log(t) (87.3 in float32,
        708 in float64) where p underflows. diff is scale (p + t - y): t's contribution is below
        the dtype's resolution of scale. The vector of t (one element per class) is allocated on
        the first call (the trainer's warm-up makes that call before any capture). Backends that
        override this op (the NumPy reference, the GPU kernels, the Triton example) compute the
        log-sum-exp exactly."""
        if a1.shape[1] == 0:
            return
        self.gemm(w2, a1, diff)                                # z = w2 a1
        self.add_bias(diff, b2)                                # z += b2
        self.softmax(diff, diff, axis=0)                       # yhat
        self.add_bias(diff, self._loss_floor(int(w2.shape[0])))  # yhat + t: -log finite
        self.nll_sum(diff, labels, nll_acc)                    # -log(yhat + t)
        self.softmax_xent_backward(diff, labels, scale, diff)  # scale (yhat + t - y)

    def output_backward(self, w2: Array, diff: Array, a1: Array, dw2b2: Array, dz1: Array) -> None:
        """The backward pass through the output layer, from its error ``diff`` (C x n, what
        ``output_layer`` wrote), the hidden activations ``a1`` (hidden x n) and the weights ``w2``
        (C x hidden): the output layer's gradients and the hidden layer's error,

            dw2b2 = diff [a1^T 1]               (C x (hidden + 1): [dW2 db2], written)
            dz1   = (w2^T diff) * a1 * (1 - a1)  (hidden x n, written)

        both written, never read; neither aliases an input. Zero columns: dw2b2 = 0. Equal to
        ``gemm_with_bias_grad(diff, a1, dw2b2)`` then ``gemm_sigmoid_backward(w2, diff, a1, dz1)``,
        which is how this default computes it (two passes over a1; a backend may make it one)."""
        self.gemm_with_bias_grad(diff, a1, dw2b2)
        self.gemm_sigmoid_backward(w2, diff, a1, dz1)

    def _loss_floor(self, classes: int) -> Array:
        """The default output_layer's vector of the dtype's smallest normal number, made once
        per class count (a lazy allocation, before capture by the trainer's warm-up)."""
        floors = self.__dict__.setdefault("_loss_floors", {})
        if classes not in floors:
            floors[classes] = self.empty((classes,))
            self.fill(floors[classes], float(np.finfo(self.dtype).tiny))
        return floors[classes]

    # ----------------------------------------------------------------- exact ops (EXACT_OPS)
    # Exponents are integer values held in arrays of the backend dtype (float64).
    def exact_row_exponents(self, x: Array, trans: bool, out: Array) -> None:
        """out_i = e with max_k |L_ik| < 2^e (frexp's exponent of the row's largest magnitude;
        0 for a row of zeros, of no elements or holding inf/nan), L = x^T if trans else x (p x q)."""
        raise NotImplementedError(f"backend {self.name!r} has no exact ops")

    def exact_split(self, x: Array, trans: bool, ones_row: bool, ones_col: bool, exps: Array,
                    exp_shift: int, beta: int, slices: int, reverse: bool, out: Array,
                    flag: Array) -> None:
        """Cut each row of L into ``slices`` integer digits on a power-of-two grid (Ozaki's split).

        L is x^T if trans else x, with a row of ones appended below it if ones_row and a column of
        ones appended to its right if ones_col: p x q. Row i has the grid exponent
        e_i = exps[i] + exp_shift, and every |L_ik| must be <= 2^e_i. Then, with r = L_ik 2^-e_i,
        for s = 0 .. slices-1:  t = r 2^beta,  d_s = rint(t),  r = t - d_s   (all exact), so
        L_ik = 2^e_i (d_0 2^-beta + d_1 2^-2beta + ...) + a remainder below 2^(e_i - slices beta)
        and |d_s| <= 2^beta. d_s is written to out[i, b q + k] (out: p x slices q) with
        b = slices - 1 - s if reverse else s. An element with |L_ik| 2^-e_i > 1, inf or nan sets
        flag[0] = 1 (the exactness of the products would be lost; the caller fails loudly)."""
        raise NotImplementedError(f"backend {self.name!r} has no exact ops")

    def exact_combine(self, groups: Array, row_exps: Array, row_shift: int, col_exps: Array,
                      col_shift: int, beta: int, out: Array) -> None:
        """out (m x n) from G = groups (m x S n, G_g = columns [g n, (g+1) n)): G_g holds the
        integer-valued sums of the digit products d_s d_t with s + t = g (digits of exact_split,
        whose product has the weight 2^-(g+2)beta):
            acc = G_(S-1);  acc = G_g + acc 2^-beta  for g = S-2 .. 0;
            out_ij = acc 2^(row_exps[i] + row_shift + col_exps[j] + col_shift - 2 beta)
        (each step rounds once, always in this order). out may not alias groups."""
        raise NotImplementedError(f"backend {self.name!r} has no exact ops")

    def exact_sigmoid(self, x: Array, out: Array) -> None:
        """out = 1 / (1 + exact_math.exp(-x)), element-wise. out may alias x."""
        raise NotImplementedError(f"backend {self.name!r} has no exact ops")

    def exact_sigmoid_backward(self, grad: Array, a: Array, out: Array) -> None:
        """out = (grad a)(1 - a), element-wise, each product and difference rounded on its own.
        out may alias grad."""
        raise NotImplementedError(f"backend {self.name!r} has no exact ops")

    def exact_output_layer(self, z: Array, labels: Array, scale: float, diff: Array,
                           nll_acc: Array) -> None:
        """The output layer of ``output_layer`` from the logits z (C x n, bias included), with
        exact_math's exp and log and fixed orders: for each column, m = the first maximum,
        e_c = exp(z_c - m), s = (((e_0 + e_1) + e_2) + ...), diff_c = scale (e_c / s - y_c),
        and nll_acc[0] += sum_j ((log(s) + m) - z_label) (only this sum's order is the backend's).
        diff may alias z. Zero columns: nothing happens."""
        raise NotImplementedError(f"backend {self.name!r} has no exact ops")

    def exact_sgd_step(self, params: Array, grads: Array, lr: float, reg: float = 0.0,
                       reg_ranges: Sequence[tuple[int, int]] = ()) -> None:
        """``sgd_step`` with every product and sum rounded on its own (never fused into one
        multiply-add), i.e. NumPy's bits: g = g + (reg p) on the ranges, then p = p + ((-lr) g)."""
        raise NotImplementedError(f"backend {self.name!r} has no exact ops")

    @abc.abstractmethod
    def sum_squares(self, x: Array) -> float:
        """Return sum of x_ij^2 as a Python float (synchronises; used once per epoch, for the loss)."""
