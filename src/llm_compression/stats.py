"""Intervals for the study's numbers: proportions (zero-shot accuracy), means over windows (perplexity) and
paired differences over the same windows (perplexity of two variants). Torch-free.

- :func:`wilson_interval`: the Wilson score interval of a proportion (Wilson 1927; Brown, Cai & DasGupta 2001,
  Statistical Science 16(2), Sec. 4.1.1), valid at 0 and n successes, where the normal (Wald) interval
  collapses to a width of 0.
- :func:`mean_interval`: Student's t interval of a mean of independent values.
- :func:`perplexity_interval`: perplexity is ``exp(mean token NLL)``; windows are the independent units (tokens
  inside a window are not), so the interval is the t interval of the per-window mean NLL, mapped through
  ``exp``.
- :func:`paired_perplexity_ratio`: two models scored on the same windows: the t interval of the per-window
  differences of mean NLL, mapped through ``exp``, is an interval of the ratio of their perplexities; it
  excludes 1 only when the difference is larger than the window-to-window noise.
"""

from __future__ import annotations

import math
from statistics import NormalDist
from typing import Sequence


def _z(confidence: float) -> float:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence {confidence!r} must be in (0, 1)")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def _t(confidence: float, dof: int) -> float:
    """Two-sided Student t quantile (scipy.stats)."""
    from scipy.stats import t

    _z(confidence)  # checks confidence
    return float(t.ppf(0.5 + confidence / 2, dof))


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval ``(low, high)`` of a proportion ``successes / n``.

    Raises:
        ValueError: ``n < 1``, ``successes`` outside ``[0, n]``, or a confidence outside (0, 1).
    """
    if int(n) < 1:
        raise ValueError(f"n {n!r} must be >= 1")
    if not 0 <= successes <= n:
        raise ValueError(f"successes {successes!r} must be in [0, {n}]")
    z = _z(confidence)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the boundary (not 1e-17)
    high = 1.0 if successes == n else min(1.0, centre + half)
    return low, high


def mean_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """``(mean, low, high)``: Student's t interval of the mean of ``values`` (independent draws).

    Raises:
        ValueError: fewer than 2 values (no spread to estimate).
    """
    n = len(values)
    if n < 2:
        raise ValueError(f"an interval needs at least 2 values, got {n}")
    mean = math.fsum(values) / n
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = _t(confidence, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


def perplexity_interval(window_nll: Sequence[float], window_tokens: Sequence[int],
                        confidence: float = 0.95) -> tuple[float, float]:
    """Interval ``(low, high)`` of a perplexity from its windows: ``window_nll[i]`` nats summed over the
    ``window_tokens[i]`` scored tokens of window ``i``; the t interval of the per-window mean NLL, through exp.

    Raises:
        ValueError: fewer than 2 windows, or lists of different lengths.
    """
    if len(window_nll) != len(window_tokens):
        raise ValueError(f"{len(window_nll)} window NLLs for {len(window_tokens)} token counts")
    _, lo, hi = mean_interval([s / t for s, t in zip(window_nll, window_tokens)], confidence)
    return math.exp(lo), math.exp(hi)


def paired_perplexity_ratio(nll_a: Sequence[float], nll_b: Sequence[float], window_tokens: Sequence[int],
                            confidence: float = 0.95) -> tuple[float, float, float]:
    """``(ratio, low, high)``: perplexity of A over perplexity of B on the same windows, with the t interval of
    the per-window differences of mean NLL through exp. ``ratio`` is ``exp`` of the mean difference (equal to
    ``ppl_A / ppl_B`` when the windows score equal token counts).

    Raises:
        ValueError: lists of different lengths, or fewer than 2 windows.
    """
    if not len(nll_a) == len(nll_b) == len(window_tokens):
        raise ValueError(f"paired windows differ in number: {len(nll_a)}, {len(nll_b)}, {len(window_tokens)}")
    d = [(a - b) / t for a, b, t in zip(nll_a, nll_b, window_tokens)]
    mean, lo, hi = mean_interval(d, confidence)
    return math.exp(mean), math.exp(lo), math.exp(hi)
