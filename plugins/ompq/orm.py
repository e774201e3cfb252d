"""OMPQ's signal: one batch of features per unit, their orthogonality (ORM = linear CKA), layer importance."""

from __future__ import annotations

from typing import Literal, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from mpqbench.errors import UserError
from mpqbench.quant.layout import QuantLayout

BN_MODES = ("eval", "train")


@torch.no_grad()
def extract_features(model: nn.Module, layout: QuantLayout, units: Sequence[str], images: torch.Tensor,
                     bn: str = "eval") -> dict[str, torch.Tensor]:
    """One no-grad forward pass; per unit, the tensor its layout feature point names (a module's input or
    output), flattened to N x D. ``bn="train"`` normalises with the batch's own statistics, as the official
    code does by never calling ``eval()``; ``"eval"`` uses the running statistics (deterministic per image)."""
    missing = [u for u in units if u not in layout.features]
    if missing:
        raise UserError(f"ompq: the model declares no feature point for unit(s) {', '.join(missing)}")
    modules = dict(model.named_modules())
    features: dict[str, torch.Tensor] = {}
    hooks = []
    for unit in units:
        module, where = layout.features[unit]

        def hook(mod, inputs, output, unit=unit, where=where):
            tensor = inputs[0] if where == "input" else output
            features[unit] = tensor.detach().flatten(1).clone()  # clone: later in-place ops must not reach it

        hooks.append(modules[module].register_forward_hook(hook))
    model.eval()
    if bn == "train":
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.train()
    try:
        model(images)
    finally:
        for h in hooks:
            h.remove()
    return {u: features[u] for u in units}


def orm_matrix(features: Sequence[torch.Tensor | np.ndarray],
               form: Literal["auto", "gram", "features"] = "auto") -> np.ndarray:
    """ORM_ij = <K~_i, K~_j>_F / (||K~_i||_F ||K~_j||_F), K~ = H X X^T H: linear CKA, in float64.

    Centring columns of X gives the centred Gram. Each unit is kept in the smaller of two forms: the N x N
    Gram (D >= N) or the centred N x D features (D < N), where <K~_i, K~_j> = ||X_j^T X_i||_F^2 and, mixed,
    tr(X_j^T K~_i X_j). ``form`` forces one (for tests). A unit with constant features (zero norm) is
    orthogonal to all others by convention (its off-diagonal entries are 0)."""
    reps = []
    for x in features:
        x = torch.as_tensor(x).to(torch.float64)
        x = x - x.mean(0, keepdim=True)
        gram = form == "gram" or (form == "auto" and x.shape[1] >= x.shape[0])
        reps.append((True, x @ x.T) if gram else (False, x))

    def inner(p, q) -> float:
        (p_gram, p), (q_gram, q) = p, q
        if p_gram and q_gram:
            return float((p * q).sum())
        if not p_gram and not q_gram:
            return float((q.T @ p).square().sum())
        k, f = (p, q) if p_gram else (q, p)
        return float(((k @ f) * f).sum())

    n = len(reps)
    norms = np.sqrt([inner(r, r) for r in reps])
    out = np.eye(n)
    for i in range(n):
        for j in range(i + 1, n):
            denom = norms[i] * norms[j]
            out[i, j] = out[j, i] = inner(reps[i], reps[j]) / denom if denom > 0 else 0.0
    return out


def importance(orm: np.ndarray, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(gamma, log theta, log c): redundancy gamma_i = sum_{j != i} ORM_ij, importance theta_i =
    exp(-beta gamma_i), and the objective coefficient c_i = mean(theta_j, j = i..L) in network order (changing
    unit i disturbs every later feature). Kept in log space: theta itself underflows to 0 once beta gamma
    passes ~745 (beta >= ~50 on ResNet-20, where gamma is 14-16), which would zero every coefficient."""
    gamma = orm.sum(axis=1) - np.diag(orm)
    log_theta = -beta * gamma
    return gamma, log_theta, suffix_log_mean(log_theta)


def suffix_log_mean(log_theta: np.ndarray) -> np.ndarray:
    """log mean(theta_j, j = i..L) for every i: a running logsumexp from the last unit, finite wherever
    ``log_theta`` is."""
    total = np.logaddexp.accumulate(np.asarray(log_theta, dtype=np.float64)[::-1])[::-1]
    return total - np.log(np.arange(len(total), 0, -1))


def feature_batch(n_images: int, batch: int, seed: int) -> torch.Tensor:
    """Indices of the feature batch: ``batch`` training images drawn by the run's seed."""
    if not 2 <= batch <= n_images:
        raise UserError(f"ompq: batch={batch} must be between 2 and the {n_images} training images")
    return torch.randperm(n_images, generator=torch.Generator().manual_seed(seed))[:batch]


def rounded(values: Mapping | Sequence | np.ndarray, digits: int = 6):
    """Floats with ``digits`` significant digits, for the run record (tiny thetas keep their magnitude)."""
    if isinstance(values, Mapping):
        return {k: rounded(v, digits) for k, v in values.items()}
    if isinstance(values, (list, tuple, np.ndarray)):
        return [rounded(v, digits) for v in values]
    return float(f"{float(values):.{digits}g}")
