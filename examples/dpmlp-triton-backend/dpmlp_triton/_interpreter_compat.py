"""A shim for Triton's interpreter (TRITON_INTERPRET=1, development on a CPU) under NumPy >= 2.4.

The interpreter turns a scalar into a one-element array and gives it ``__index__`` as
``int(array)``, which NumPy 2.4 refuses for arrays of one dimension ("only 0-dimensional arrays
can be converted to Python scalars"), so a loop ``range(0, K, BK)`` over a runtime bound fails.
This replaces that one method with ``int(array.reshape(-1)[0])``. Applied only under the
interpreter; compiled kernels (the GPU) never see it.
"""

import numpy as np


def apply() -> None:
    from triton.runtime import interpreter

    original = interpreter._patch_lang_tensor
    if getattr(original, "_dpmlp_compat", False):
        return

    def patched(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__",
                       lambda self: int(np.asarray(self.handle.data).reshape(-1)[0]))

    patched._dpmlp_compat = True
    interpreter._patch_lang_tensor = patched
