"""VN-ratio bounds kappa(n, f): the largest ratio sqrt(E||G - g||^2) / ||g|| of the honest
gradients' standard deviation to the true gradient's norm under which a rule is
(alpha, f)-Byzantine resilient.

Guerraoui, Gupta, Pinot, Rouault & Stephan (2021), "Differential privacy and Byzantine
resilience in SGD: do they add up?" (PODC), collect these conditions for each rule; the
origins are cited on each function. Functions assume the rule's validity condition holds
(``Aggregator.bound`` checks it first).
"""

from __future__ import annotations

import math


def krum_eta(n: int, f: int) -> float:
    """eta(n, f) of Blanchard et al. (2017), Proposition 1 (needs n > 2f + 2).

    eta(n, f) = sqrt(2 (n - f + (f (n - f - 2) + f^2 (n - f - 1)) / (n - 2f - 2))).

    >>> round(krum_eta(7, 1), 6)  # sqrt(2 (6 + (4 + 5) / 3)) = sqrt(18)
    4.242641
    """
    return math.sqrt(2 * (n - f + (f * (n - f - 2) + f**2 * (n - f - 1)) / (n - 2 * f - 2)))


def krum_kappa(n: int, f: int) -> float:
    """Krum (Blanchard et al. 2017, Prop. 1): resilient when eta(n, f) sqrt(d) sigma < ||g||,
    i.e. VN ratio below kappa = 1 / eta(n, f). Guerraoui et al. 2021 give Bulyan over Krum
    (El Mhamdi et al. 2018) the same kappa, the condition on its inner Krum."""
    return 1.0 / krum_eta(n, f)


def median_kappa(n: int, f: int) -> float:
    """Coordinate-wise median: kappa = 1 / sqrt(n - f), as tabulated by Guerraoui et al. 2021.

    >>> round(median_kappa(7, 1), 6)
    0.408248
    """
    return 1.0 / math.sqrt(n - f)


def mda_kappa(n: int, f: int) -> float:
    """Minimum-diameter averaging (El Mhamdi et al. 2018): kappa = (n - f) / (sqrt(8) f), as
    tabulated by Guerraoui et al. 2021. With f = 0 MDA is the mean: no constraint, inf.

    >>> round(mda_kappa(7, 1), 6)
    2.12132
    """
    return math.inf if f == 0 else (n - f) / (math.sqrt(8) * f)
