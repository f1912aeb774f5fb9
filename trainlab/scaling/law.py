"""The parametric scaling law L(N, D) = E + A / N^alpha + B / D^beta (Hoffmann et al. 2022, eq. 2), its
compute-optimal allocation, and the published fits.

N is parameters (Chinchilla counts all of them; a sweep of small models fits non-embedding ones, as Kaplan did),
D training tokens, C = 6 N D training FLOPs (forward 2, backward 4 per parameter and token)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from trainlab.errors import UserError

KEYS = ("E", "A", "B", "alpha", "beta")


@dataclass(frozen=True)
class Law:
    E: float  # irreducible loss (nats per token): the entropy of text the law extrapolates to
    A: float
    B: float
    alpha: float  # how fast loss falls with parameters
    beta: float  # ... and with tokens
    source: str = ""  # where the numbers come from
    se: dict = field(default_factory=dict, compare=False)  # standard errors of the five, when known
    # The range of the points a fit saw: {"params": [lo, hi], "tokens": [lo, hi], "flops": [lo, hi]} (empty for
    # the published laws): planning far beyond it is an extrapolation, and says so.
    fitted: dict = field(default_factory=dict, compare=False)

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n**self.alpha + self.B / d**self.beta

    def optimal(self, flops: float) -> tuple[float, float]:
        """The (N, D) with 6 N D = flops that minimizes loss (Hoffmann et al., eq. 4):
        N_opt = G (C/6)^a, D_opt = (C/6)^b / G, G = (alpha A / (beta B))^(1/(alpha+beta)),
        a = beta / (alpha + beta), b = alpha / (alpha + beta)."""
        if not (flops > 0 and math.isfinite(flops)):
            raise UserError(f"a compute budget must be a positive number of FLOPs; got {flops}", "e.g. --flops 1e21")
        s = self.alpha + self.beta
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / s)
        n = g * (flops / 6) ** (self.beta / s)
        return n, flops / (6 * n)

    @property
    def exponents(self) -> tuple[float, float]:
        """(a, b): N_opt grows as C^a and D_opt as C^b."""
        s = self.alpha + self.beta
        return self.beta / s, self.alpha / s

    def to_dict(self) -> dict:
        d = asdict(self)
        d["se"] = {k: self.se[k] for k in KEYS if k in self.se}
        return d

    @classmethod
    def from_dict(cls, d: dict, source: str = "") -> "Law":
        missing = [k for k in KEYS if not isinstance(d.get(k), (int, float)) or isinstance(d.get(k), bool)]
        if missing:
            raise UserError(f"a scaling law needs numbers {', '.join(KEYS)}; {', '.join(missing)} "
                            f"{'is' if len(missing) == 1 else 'are'} missing or not a number",
                            "give the JSON that `trainlab scaling fit FILE --json` writes")
        vals = {k: float(d[k]) for k in KEYS}
        if not all(math.isfinite(v) and v > 0 for v in vals.values()):
            raise UserError(f"a scaling law's E, A, B, alpha and beta must be positive and finite; got {vals}",
                            "refit with `trainlab scaling fit`")
        se = d.get("se") if isinstance(d.get("se"), dict) else {}
        fitted = d.get("fitted") if isinstance(d.get("fitted"), dict) else {}
        fitted = {k: v for k, v in fitted.items() if isinstance(v, list) and len(v) == 2
                  and all(isinstance(x, (int, float)) and math.isfinite(x) and x > 0 for x in v)}
        return cls(**vals, source=source or str(d.get("source", "")), se=se, fitted=fitted)


# Published fits of the same form, on Chinchilla's data (MassiveText; N counts all parameters).
HOFFMANN = Law(1.69, 406.4, 410.7, 0.34, 0.28, source="Hoffmann et al. 2022, Approach 3 (eq. 10)")
EPOCH = Law(1.8172, 482.01, 2085.43, 0.3478, 0.3658,
            source="Besiroglu et al. 2024 (Epoch AI), refit of Hoffmann et al.'s Figure 4 data",
            se={"E": 0.026, "A": 124.5, "B": 1293.3, "alpha": 0.015, "beta": 0.021})
PUBLISHED = {"hoffmann": HOFFMANN, "epoch": EPOCH}

# Published compute-optimal exponents (N_opt ~ C^a, D_opt ~ C^b), for plots beside a fit.
PUBLISHED_EXPONENTS = {
    "Kaplan et al. 2020": (0.73, 0.27),  # N_opt ~ C^0.73 (their Figure 14); D grows as the rest
    "Hoffmann et al. 2022 (approach 1)": (0.50, 0.50),
    "Hoffmann et al. 2022 (approach 2)": (0.49, 0.51),
    "Hoffmann et al. 2022 (approach 3)": (0.46, 0.54),
    "Besiroglu et al. 2024 (Epoch AI)": EPOCH.exponents,
}
