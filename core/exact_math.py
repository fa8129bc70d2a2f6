"""The element-wise functions of ``--exact`` mode, defined once from operations that every IEEE-754
machine rounds the same way: +, -, *, / (correctly rounded), ``rint`` (round half to even) and
``ldexp`` / ``frexp`` (exact scaling by powers of two, and its inverse).

``np.exp``, CUDA's ``exp`` and glibc's ``exp`` are each accurate to an ulp or so, but not to the
SAME ulp: a GPU run and a NumPy run of one model differ in the last bit of a sigmoid, and training
grows that bit. Written as below, a function is a fixed sequence of correctly rounded operations,
so NumPy (here, vectorised) and CUDA (backends/exact.cuh, the same sequence per element, never
contracted into fused multiply-adds) return the same bits for every input. Accuracy: a few ulp
(tests/test_exact.py measures it against np.exp / np.log).

The constants are doubles written in hex, as exact.cuh writes them; tests/test_exact.py checks
that the two lists are the same numbers. Pure NumPy: no GPU library is imported.
"""

from __future__ import annotations

from fractions import Fraction
from math import factorial

import numpy as np

# ---------------------------------------------------------------------------------- constants
#: 1 / ln 2, rounded
INV_LN2 = float.fromhex("0x1.71547652b82fep+0")
#: ln 2 = LN2_HI + LN2_LO, LN2_HI with 32 significant bits so that k * LN2_HI is exact for |k| < 2^21
LN2_HI = float.fromhex("0x1.62e42fee00000p-1")
LN2_LO = float.fromhex("0x1.a39ef35793c76p-33")
#: above this exp overflows (exp(709.79) > DBL_MAX), below EXP_MIN it is below the least subnormal
EXP_MAX = 710.0
EXP_MIN = -746.0
#: e^r = sum r^n / n! for |r| <= ln2 / 2: degree 13 leaves a truncation below 2^-57 relative
EXP_COEFFS = tuple(float(Fraction(1, factorial(n))) for n in range(14))
#: log m = 2 atanh f = 2 (f + f^3/3 + f^5/5 + ...), f = (m - 1) / (m + 1), |f| <= 0.1716
#: for m in [sqrt(1/2), sqrt(2)): terms to f^25 leave a truncation below 2^-60 relative
LOG_COEFFS = tuple(float(Fraction(1, 2 * j + 1)) for j in range(1, 13))
SQRT_HALF = float.fromhex("0x1.6a09e667f3bcdp-1")


def _horner(coeffs, x):
    """coeffs[0] + x (coeffs[1] + x (coeffs[2] + ...)), innermost first."""
    acc = np.full_like(x, coeffs[-1])
    for c in coeffs[-2::-1]:
        acc = acc * x + c  # two roundings: never fused (NumPy does not contract)
    return acc


def exp(x: np.ndarray) -> np.ndarray:
    """e^x: x = k ln2 + r (k = rint(x / ln2), |r| <= ln2/2), e^r by its Taylor polynomial,
    times 2^k by ldexp. NaN stays NaN, x > EXP_MAX gives inf, x < EXP_MIN gives 0."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        k = np.rint(x * INV_LN2)
        inside = (x <= EXP_MAX) & (x >= EXP_MIN)  # false for NaN
        k = np.where(inside, k, 0.0)
        r = (x - k * LN2_HI) - k * LN2_LO
        y = np.ldexp(_horner(EXP_COEFFS, r), k.astype(np.int32))
    y = np.where(x > EXP_MAX, np.inf, y)
    return np.where(x < EXP_MIN, 0.0, y)


def log(x: np.ndarray) -> np.ndarray:
    """ln x for x > 0: x = m 2^e with m in [sqrt(1/2), sqrt(2)) (frexp), then
    (e LN2_LO + 2 atanh((m - 1) / (m + 1))) + e LN2_HI. 0 gives -inf, inf gives inf, x < 0 and NaN
    give NaN."""
    x = np.asarray(x, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        m, e = np.frexp(np.where(np.isfinite(x) & (x > 0), x, 1.0))
        low = m < SQRT_HALF
        m = np.where(low, m + m, m)
        e = np.where(low, e - 1, e).astype(np.float64)
        f = (m - 1.0) / (m + 1.0)
        s = f * f
        lm = f + f * (s * _horner(LOG_COEFFS, s))
        y = (e * LN2_LO + (lm + lm)) + e * LN2_HI
    y = np.where(x == np.inf, np.inf, y)
    y = np.where(x == 0, -np.inf, y)
    return np.where((x < 0) | np.isnan(x), np.nan, y)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x)."""
    return 1.0 / (1.0 + exp(-np.asarray(x, dtype=np.float64)))
