"""The DDQ quantizer (Zhang et al., "Differentiable Dynamic Quantization with Mixed Precision and Adaptive
Resolution", ICML 2021, arXiv 2106.02295): learned precision, dynamic range and levels in one module.

The paper writes the quantized value as a matrix-vector product ``x_q = q^T Z U x_o``:

* ``x_o`` is the one-hot code of the input's bin on the finest grid, ``2^K`` bins at the maximum bitwidth K;
* ``q`` is a learnable vector of ``2^K`` levels, initialised to the uniform grid;
* ``U = U_1 (x) U_2 (x) ... (x) U_K`` is a Kronecker product of 2x2 binary factors, ``U_i = I`` while gate
  ``g_i`` is open and the all-ones matrix when it is closed: a closed gate merges the two halves of every
  block along one binary digit of the bin index, so K gates replace a ``2^K x 2^K`` matrix;
* ``Z`` normalises each merged block, so a merged bin's level is the mean of its block of ``q``.

Choices made here (each a constructor argument unless stated; the paper leaves them open or unconfirmed):

1. **Grid.** ``u = clip(x / a, lo, hi)`` with ``[lo, hi] = [-1, 1]`` (``signed``, weights) or ``[0, 1]``
   (activations), bin ``k = round((u - lo) / (hi - lo) * (2^K - 1))``, ``x_q = a * level(k)``. The range
   ``a`` is learned, one per output channel (``channels``: the project's per-channel convention for weights)
   or one per tensor (``channels=None``: activations). The level vector ``q`` is one per quantizer, shared by
   the channels (the paper's per-layer ``q``), in units of the range. ``a`` is initialised on the first
   batch to the ``range_init`` quantile of ``|x|`` (per channel; 1.0 = the maximum). Its gradient is
   LSQ-style (STE through the rounding: ``level(k) - x / a`` inside the range, ``level(k)`` outside) and,
   with ``range_grad="lsq"``, scaled by ``1 / sqrt(N)``, N the elements per range value (per sample for
   activations), as LSQ scales its step; ``"exact"`` leaves it unscaled.
2. **Gates.** Position ``i = 0..K-1`` is the i-th binary digit of the bin index, most significant first, so
   closing the last gate merges neighbouring bins. Each gate has a real logit ``theta_i``: open iff
   ``theta_i > 0`` (deterministic), open probability ``p_i = sigmoid(theta_i / temperature)``. The first
   ``min_bits`` positions are always open (the benchmark's lowest bitwidth is 2). With ``monotone=True``
   (default) a position is effectively open only if every more significant one is (running minimum of the
   gates), so gates close from the least significant position, merged blocks are contiguous and ``bits``
   (the number of effective open gates) is a plain b-bit quantizer's resolution; ``monotone=False`` leaves
   the gates independent, so the blocks can interleave (the paper's pitfall: kept only as an ablation).
   Probabilities follow the same rule: monotone gates are ordinal, ``P(bits > i) = m_i = min_{j <= i} p_j``
   (one threshold on all gates); independent gates give a Poisson-binomial bit count. The ordinal form is
   chosen over a product of independent gates because the product's expected bits are most sensitive to
   the *most* significant learnable gate (closing it removes every later bit), so a cost penalty would
   close gates from the wrong end; with the running minimum each position costs its own bit.
3. **Merged levels without U.** ``q`` is viewed as a ``2 x 2 x ... x 2`` tensor (axis i = digit i); for each
   gate ``T <- g_i * T + (1 - g_i) * mean_i(T)``. With binary gates this is exactly ``Z U`` applied to
   ``q`` (a closed axis is averaged, an open one kept); for real ``g`` it is ``q^T kron(g_i I + (1 - g_i)
   11^T / 2)``, multilinear in the gates. ``x_q = a * T[k]``: O(K 2^K) for the table, one gather per element.
4. **Gradients.** Rounding to the bin: straight-through (1 inside the range, 0 outside). Levels: exact (the
   gather is linear in ``q``). Gates (``gate_estimator``): the forward uses the hard gate ``h_i``; the
   backward differentiates the multilinear form above, whose derivative at binary gates is exactly the
   output with gate i open minus the output with it closed (the others as they are), times
   ``d g / d theta``: ``sigmoid`` (default, ``sigmoid'(theta / T) / T``: the same factor the penalty's
   expected cost carries, so task loss and penalty push a gate on one scale) or ``identity`` (1, the plain
   sign-function STE). With monotone gates both pass through the running minimum, so a position behind a
   closed gate sends its gradient to the gate that closes it. This is a first-order signal: at an open gate
   whose merged levels sit near the centroids of their inputs the loss is flat to first order, so gates are
   held open mainly by the strong signal they get while closed, and under a penalty they hover near 0 until
   training ends (what the repair in :mod:`.losses` is for).
5. **Gradient correction** (``grad_correction``; the paper has such a term, its form is not confirmed):
   ``none`` (default): the gradients above. ``slope``: the input's STE slope is the merged levels' local
   slope (central difference of the neighbouring merged levels over their uniform spacing, clipped at 0)
   instead of 1, so the backward of a non-uniform learned grid follows its forward; it is exactly 1 for
   uniform levels. ``block``: the level gradient is multiplied by the block size ``2^(K - bits)``, so a
   merged level (the mean of its block) moves as fast as one free level whatever the bitwidth.
6. **Deployment.** Learned levels are not a uniform grid, so the quantizer is not ``single_grid``.
   :meth:`collapse` returns the core's ``LSQQuantizer`` at ``bits`` with the step the learned range implies:
   the merged grid's own step ``(hi - lo) * a * 2^(K - bits) / (2^K - 1)``. For uniform levels the merged
   grid is a uniform mid-rise grid of ``2^bits`` levels with that step; LSQ's grid has the same count and
   step, shifted to put 0 on it (by half a step for weights, ``(step - a/(2^K-1)) / 2`` for activations), which
   the final fine-tune absorbs. :meth:`level_table` gives the learned merged levels as integers at a
   fixed-point scale, for an export that runs them through a lookup table. :meth:`freeze` pins the gates at a
   bitwidth (the paper's fixed-precision DDQ); :meth:`set_bits` sets them without pinning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from mpqbench.errors import UserError
from mpqbench.quant.quantizers import LSQQuantizer, Quantizer

GATE_ESTIMATORS = ("sigmoid", "identity")
GRAD_CORRECTIONS = ("none", "slope", "block")
RANGE_GRADS = ("lsq", "exact")
MAX_K = 12
"""Largest maximum bitwidth accepted: the level vector has 2^K entries."""
_QUANTILE_SAMPLES = 1 << 20


def _grad_scale(t: torch.Tensor, scale: float) -> torch.Tensor:
    """``t`` in the forward (exactly: ``t + 0``, so :meth:`DDQQuantizer.codes` sees the same bins), ``scale *
    grad`` in the backward."""
    scaled = t * scale
    return t.detach() + (scaled - scaled.detach())


@dataclass(frozen=True)
class LevelTable:
    """A quantizer's merged levels as integers: code ``j`` in channel ``c`` means ``levels[j] * scale[c]``.

    ``edges`` are the ``2^bits - 1`` decision boundaries in units of the range (``x / a``): code ``j`` covers
    ``edges[j-1] <= x / a < edges[j]`` up to ties on the finest grid (rounded half to even); None when the
    merged blocks are not contiguous (non-monotone gates).
    """

    bits: int
    signed: bool
    frac_bits: int
    levels: torch.Tensor
    scale: torch.Tensor
    edges: torch.Tensor | None

    def real(self, codes: torch.Tensor) -> torch.Tensor:
        """The real values of ``codes`` (per-channel scale along dim 0 when there are several channels)."""
        values = self.levels[codes].to(self.scale.dtype)
        if self.scale.numel() > 1:
            return values * self.scale.reshape((-1,) + (1,) * (codes.dim() - 1))
        return values * self.scale


class DDQQuantizer(Quantizer):
    """Gated, learned-level quantizer: ``bits`` = the number of open gates (see the module docstring)."""

    single_grid = False

    def __init__(self, signed: bool, channels: int | None = None, *, max_bits: int = 8, min_bits: int = 2,
                 bits: int | None = None, monotone: bool = True, gate_estimator: str = "sigmoid",
                 temperature: float = 1.0, gate_init: float = 3.0, learn_levels: bool = True,
                 grad_correction: str = "none", range_init: float = 1.0, range_grad: str = "lsq"):
        if not 1 <= min_bits <= max_bits <= MAX_K:
            raise UserError(f"DDQ needs 1 <= min_bits ({min_bits}) <= max_bits ({max_bits}) <= {MAX_K}")
        for name, value, known in (("gate_estimator", gate_estimator, GATE_ESTIMATORS),
                                   ("grad_correction", grad_correction, GRAD_CORRECTIONS),
                                   ("range_grad", range_grad, RANGE_GRADS)):
            if value not in known:
                raise UserError(f"DDQ: unknown {name} {value!r} (known: {', '.join(known)})")
        if not temperature > 0 or not gate_init > 0:
            raise UserError(f"DDQ: temperature ({temperature}) and gate_init ({gate_init}) must be positive")
        if not 0 < range_init <= 1:
            raise UserError(f"DDQ: range_init is a quantile in (0, 1], not {range_init}")
        self.max_bits, self.min_bits = int(max_bits), int(min_bits)
        self.channels = channels
        self.monotone = bool(monotone)
        self.gate_estimator = gate_estimator
        self.temperature = float(temperature)
        self.gate_init = float(gate_init)
        self.grad_correction = grad_correction
        self.range_init = float(range_init)
        self.range_grad = range_grad
        self.frac_bits = 8  # of the exported level table (snap_levels sets it)
        super().__init__(self.max_bits if bits is None else bits, signed)  # the bits setter waits for the gates
        self.lo, self.hi = (-1.0, 1.0) if self.signed else (0.0, 1.0)
        self.levels = nn.Parameter(self.uniform_levels(), requires_grad=learn_levels)
        self.range = nn.Parameter(torch.ones(channels or 1))
        self.gate_logit = nn.Parameter(torch.zeros(self.max_bits))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))
        self.register_buffer("frozen", torch.zeros((), dtype=torch.bool))
        self.set_bits(self.__dict__.pop("_pending_bits"))

    @classmethod
    def for_weight(cls, layer: nn.Module, **kwargs) -> "DDQQuantizer":
        """Signed, one range per output channel of ``layer`` (a conv or linear)."""
        return cls(True, layer.weight.shape[0], **kwargs)

    @classmethod
    def for_activation(cls, signed: bool = False, **kwargs) -> "DDQQuantizer":
        """One range per tensor; unsigned unless the point can be negative."""
        return cls(signed, None, **kwargs)

    # ----- gates and bitwidth --------------------------------------------------------------------------

    @property
    def bits(self) -> int:
        return int(self._effective(self._hard()).sum())

    @bits.setter
    def bits(self, value: int) -> None:
        if "gate_logit" not in self._parameters:
            self.__dict__["_pending_bits"] = int(value)  # called by Quantizer.__init__ before the gates exist
        else:
            self.set_bits(value)

    @property
    def learnable(self) -> torch.Tensor:
        """Mask of the gate positions that can change (not forced open by ``min_bits``)."""
        return torch.arange(self.max_bits, device=self.gate_logit.device) >= self.min_bits

    def check_bits(self, bits: int) -> int:
        if bits != int(bits) or not self.min_bits <= bits <= self.max_bits:
            raise UserError(f"DDQ quantizer: bitwidth {bits} is outside [{self.min_bits}, {self.max_bits}]")
        return int(bits)

    @torch.no_grad()
    def set_bits(self, bits: int) -> None:
        """Open the ``bits`` most significant gates and close the others (logits ``+-gate_init``)."""
        bits = self.check_bits(bits)
        positions = torch.arange(self.max_bits, device=self.gate_logit.device)
        self.gate_logit.copy_(torch.where(positions < bits, self.gate_init, -self.gate_init))

    @torch.no_grad()
    def open_graded(self) -> None:
        """Every gate open, the learnable logits falling linearly from ``gate_init`` (most significant) to
        ``gate_init / n`` (least significant, n learnable positions): under an optimizer that moves every logit
        at one rate (Adam), gates then close one at a time from the least significant end instead of all at
        once."""
        n = self.max_bits - self.min_bits
        positions = torch.arange(self.max_bits, device=self.gate_logit.device)
        graded = self.gate_init * (self.max_bits - positions).clamp_max(max(n, 1)) / max(n, 1)
        self.gate_logit.copy_(graded.to(self.gate_logit))

    def freeze(self, bits: int | None = None) -> None:
        """Pin the gates (at ``bits`` if given, else where they are): fixed-precision DDQ, or the end of search."""
        if bits is not None:
            self.set_bits(bits)
        else:
            self.set_bits(self.bits)  # canonical logits: a hidden open gate behind a closed one is closed
        self.frozen.fill_(True)
        self.gate_logit.requires_grad_(False)

    def unfreeze(self) -> None:
        self.frozen.fill_(False)
        self.gate_logit.requires_grad_(True)

    def _hard(self) -> torch.Tensor:
        """Raw hard gates (1 open, 0 closed), forced positions open."""
        return ((self.gate_logit.detach() > 0) | ~self.learnable).to(self.gate_logit.dtype)

    def _effective(self, raw: torch.Tensor) -> torch.Tensor:
        """Monotone: a position is open only if every more significant one is (the running minimum, which for
        hard gates is their running product); otherwise the gates as they are."""
        return torch.cummin(raw, 0).values if self.monotone else raw

    def _soft(self) -> torch.Tensor:
        """What ``d g / d theta`` differentiates: the open probability or the logit itself."""
        if self.gate_estimator == "sigmoid":
            return torch.sigmoid(self.gate_logit / self.temperature)
        return self.gate_logit

    def gates(self) -> torch.Tensor:
        """Effective gates: hard values in the forward, the chosen estimator's gradient in the backward."""
        hard = self._effective(self._hard())
        if bool(self.frozen) or not torch.is_grad_enabled():
            return hard
        soft = self._effective(torch.where(self.learnable, self._soft(), math.inf))
        return hard + torch.where(self.learnable, soft - soft.detach(), 0.0)

    def _probs(self) -> torch.Tensor:
        return torch.where(self.learnable, torch.sigmoid(self.gate_logit / self.temperature),
                           torch.ones_like(self.gate_logit))

    def open_probs(self) -> torch.Tensor:
        """``P(effective gate i open)``, differentiable in the logits: what the penalty uses. Monotone:
        ``m_i = min_{j <= i} sigmoid(theta_j / T)`` (ordinal: ``P(bits > i) = m_i``); else ``sigmoid``."""
        if bool(self.frozen):
            return self._effective(self._hard())
        return self._effective(self._probs())

    def bit_probs(self) -> torch.Tensor:
        """``P(bits = b)`` for ``b = 0..max_bits`` (zero below ``min_bits``). Monotone: ``m_{b-1} - m_b``;
        independent gates: the Poisson-binomial distribution of their sum."""
        if bool(self.frozen):
            return torch.nn.functional.one_hot(torch.tensor(self.bits), self.max_bits + 1).to(self.gate_logit)
        if self.monotone:
            m = self.open_probs()
            return torch.cat([m.new_ones(1), m]) - torch.cat([m, m.new_zeros(1)])
        p = self._probs()
        dist = torch.cat([p.new_ones(1), p.new_zeros(self.max_bits)])
        for i in range(self.max_bits):
            dist = dist * (1 - p[i]) + torch.roll(dist, 1) * p[i]
        return dist

    def expected_bits(self) -> torch.Tensor:
        return self.open_probs().sum()

    def bit_scores(self, kind: str = "map") -> torch.Tensor:
        """A score per bitwidth ``0..max_bits`` for a repair program that maximises their sum (-inf where
        impossible). ``map`` (default): minus the sum of ``|theta_i| / temperature`` over the gates that must
        flip to reach that bitwidth (monotone: the closed gates below it and the open gate at it; independent:
        the cheapest gates to open or close), the log-likelihood ratio of the flips if each gate is a
        Bernoulli belief: the current bits score 0, so the program keeps the trained setting when it fits and
        otherwise flips the least confident gates. ``marginal``: ``log P(bits = b)`` (:meth:`bit_probs`)."""
        with torch.no_grad():
            if kind == "marginal":
                return torch.log(self.bit_probs().clamp_min(1e-12)).where(self._possible(), -math.inf)
            if kind != "map":
                raise UserError(f"DDQ: unknown score kind {kind!r} (known: map, marginal)")
            cost = (self.gate_logit.abs() / self.temperature).where(self.learnable, math.inf)
            hard = self._hard().bool()
            scores = torch.full((self.max_bits + 1,), -math.inf)
            for b in range(self.min_bits, self.max_bits + 1):
                if self.monotone:  # positions < b open, position b closed, the rest free
                    flips = cost[:b][~hard[:b]].sum() + (cost[b] if b < self.max_bits and hard[b] else 0.0)
                else:  # exactly b open: flip the cheapest gates towards b
                    n = int(hard.sum())
                    pool = cost[~hard] if b > n else cost[hard & self.learnable]
                    flips = torch.sort(pool).values[:abs(b - n)].sum() if abs(b - n) <= pool.numel() else math.inf
                scores[b] = -float(flips)
            return scores

    def _possible(self) -> torch.Tensor:
        b = torch.arange(self.max_bits + 1, device=self.gate_logit.device)
        return (b >= self.min_bits) & (b <= self.max_bits)

    # ----- levels ---------------------------------------------------------------------------------------

    def uniform_levels(self) -> torch.Tensor:
        return torch.linspace(self.lo, self.hi, 1 << self.max_bits)

    @torch.no_grad()
    def reset_levels(self, learn: bool | None = None) -> None:
        """Back to the uniform grid (``levels=uniform`` before the final fine-tune); optionally (un)freeze them."""
        self.levels.copy_(self.uniform_levels().to(self.levels))
        if learn is not None:
            self.levels.requires_grad_(learn)

    @torch.no_grad()
    def snap_levels(self, frac_bits: int) -> None:
        """Make every merged level a multiple of ``2^-frac_bits`` (each block of ``q`` set to its rounded mean)
        and stop learning them, so the forward computes exactly what :meth:`level_table` exports."""
        t = self.levels.reshape((2,) * self.max_bits)
        closed = self._closed_axes()
        merged = t.mean(dim=closed, keepdim=True) if closed else t
        if not 0 <= frac_bits <= 30:
            raise UserError(f"DDQ level table: frac_bits {frac_bits} is outside [0, 30]")
        self.frac_bits = int(frac_bits)
        snapped = torch.round(merged * (1 << frac_bits)) / (1 << frac_bits)
        self.levels.copy_(snapped.expand_as(t).reshape(-1))
        self.levels.requires_grad_(False)

    def table(self, gates: torch.Tensor | None = None) -> torch.Tensor:
        """The level of every finest-grid bin under ``gates`` (default: the current effective gates):
        ``q^T Z U`` computed axis by axis, never as a matrix."""
        g = self.gates() if gates is None else gates
        q = self.levels
        if self.grad_correction == "block" and q.requires_grad and torch.is_grad_enabled():
            c = float(1 << int((g.detach() == 0).sum()))
            q = q * c - (q * (c - 1)).detach()
        t = q.reshape((2,) * self.max_bits)
        for i in range(self.max_bits):
            t = g[i] * t + (1 - g[i]) * t.mean(dim=i, keepdim=True)
        return t.reshape(-1)

    def _closed_axes(self) -> tuple[int, ...]:
        return tuple(i for i, open_ in enumerate(self._effective(self._hard()).tolist()) if not open_)

    def contiguous(self) -> bool:
        """Whether the merged blocks are runs of neighbouring bins (closed gates are all trailing)."""
        closed = self._closed_axes()
        return closed == tuple(range(self.max_bits - len(closed), self.max_bits))

    @torch.no_grad()
    def merged_levels(self) -> torch.Tensor:
        """The ``2^bits`` merged levels in units of the range, in code order (open digits, most significant first)."""
        t = self.levels.reshape((2,) * self.max_bits)
        closed = self._closed_axes()
        return (t.mean(dim=closed) if closed else t).reshape(-1).clone()

    @torch.no_grad()
    def nonuniformity(self) -> float:
        """Largest distance of a merged level from the merged uniform grid, in merged steps (0: uniform)."""
        closed = self._closed_axes()
        uniform = self.uniform_levels().to(self.levels).reshape((2,) * self.max_bits)
        base = (uniform.mean(dim=closed) if closed else uniform).reshape(-1)
        step = (self.hi - self.lo) * (1 << (self.max_bits - self.bits)) / ((1 << self.max_bits) - 1)
        return float((self.merged_levels() - base).abs().max() / step)

    def _slope(self, table: torch.Tensor) -> torch.Tensor:
        """Per finest bin, the local slope of the merged levels over their uniform spacing (``slope`` correction)."""
        if not self.contiguous():
            return torch.ones_like(table)
        m = 1 << (self.max_bits - self.bits)
        levels = table.reshape(-1, m)[:, 0]
        if levels.numel() < 2:
            return torch.ones_like(table)
        spacing = m * (self.hi - self.lo) / ((1 << self.max_bits) - 1)
        padded = torch.cat([levels[:1], levels, levels[-1:]])
        span = torch.full_like(levels, 2 * spacing)
        span[0] = span[-1] = spacing
        slope = ((padded[2:] - padded[:-2]) / span).clamp_min(0)
        return slope.repeat_interleave(m)

    # ----- range ----------------------------------------------------------------------------------------

    @torch.no_grad()
    def init_range(self, x: torch.Tensor) -> None:
        """The range from a tensor: the ``range_init`` quantile of |x| (clipped at 0 if unsigned), per channel."""
        v = x.detach().to(torch.float32)
        v = v.abs() if self.signed else v.clamp_min(0)
        v = v.reshape(v.shape[0], -1) if self.channels else v.reshape(1, -1)
        if self.range_init >= 1:
            r = v.amax(dim=1)
        else:
            if v.shape[1] > _QUANTILE_SAMPLES:
                v = v[:, :: math.ceil(v.shape[1] / _QUANTILE_SAMPLES)]
            r = torch.quantile(v, self.range_init, dim=1)
        self.range.copy_(torch.where(r > 0, r, torch.ones_like(r)).to(self.range))
        self.initialized.fill_(True)

    def _range_for(self, x: torch.Tensor) -> torch.Tensor:
        a = self.range.abs().clamp_min(1e-8)
        if self.range_grad == "lsq":
            per = x.numel() / a.numel() if self.channels else (x[0].numel() if x.dim() > 1 else x.numel())
            a = _grad_scale(a, 1.0 / math.sqrt(per))
        if self.channels:
            return a.reshape((-1,) + (1,) * (x.dim() - 1))
        return a

    # ----- forward, codes, export ----------------------------------------------------------------------

    def _bins(self, u: torch.Tensor) -> torch.Tensor:
        n = (1 << self.max_bits) - 1
        return torch.round((u - self.lo) * (n / (self.hi - self.lo))).long().clamp_(0, n)

    def _fake(self, x: torch.Tensor) -> torch.Tensor:
        if not bool(self.initialized):
            self.init_range(x)
        a = self._range_for(x)
        u = torch.clamp(x / a, self.lo, self.hi)
        k = self._bins(u.detach())
        table = self.table()
        ste = u - u.detach()
        if self.grad_correction == "slope":
            ste = self._slope(table.detach())[k] * ste
        return a * (table[k] + ste)

    @torch.no_grad()
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The ``bits``-bit code (index into :meth:`merged_levels`) of every element of ``x`` (int64)."""
        a = self.range.abs().clamp_min(1e-8)
        a = a.reshape((-1,) + (1,) * (x.dim() - 1)) if self.channels else a
        k = self._bins(torch.clamp(x.to(a.dtype) / a, self.lo, self.hi))
        code = torch.zeros_like(k)
        closed = set(self._closed_axes())
        for i in range(self.max_bits):
            if i not in closed:
                code = code * 2 + ((k >> (self.max_bits - 1 - i)) & 1)
        return code

    def scale(self) -> torch.Tensor:
        """The merged grid's step per range value: what :meth:`collapse` hands to LSQ."""
        a = self.range.detach().abs().clamp_min(1e-8)
        return (self.hi - self.lo) * a * (1 << (self.max_bits - self.bits)) / ((1 << self.max_bits) - 1)

    def collapse(self) -> Quantizer:
        """The core's LSQ quantizer at ``bits`` with the merged grid's step (module docstring, item 6)."""
        lsq = LSQQuantizer(self.bits, self.signed, self.channels).to(self.range.device)
        if bool(self.initialized):  # else (never saw data) LSQ initialises its step on its first batch
            lsq.set_step(self.scale())
        return lsq

    @torch.no_grad()
    def level_table(self, frac_bits: int | None = None) -> LevelTable:
        """The learned merged levels as integers ``round(level * 2^frac_bits)`` (levels in units of the range),
        with the per-channel scale ``a / 2^frac_bits`` that turns them back into real values. ``frac_bits``
        defaults to the last :meth:`snap_levels` call's (8 before any)."""
        frac_bits = self.frac_bits if frac_bits is None else frac_bits
        if not 0 <= frac_bits <= 30:
            raise UserError(f"DDQ level table: frac_bits {frac_bits} is outside [0, 30]")
        levels = torch.round(self.merged_levels() * (1 << frac_bits)).long()
        scale = self.range.detach().abs().clamp_min(1e-8) / (1 << frac_bits)
        edges = None
        if self.contiguous():
            m, n = 1 << (self.max_bits - self.bits), (1 << self.max_bits) - 1
            j = torch.arange(1, 1 << self.bits, dtype=torch.float32, device=self.levels.device)
            edges = self.lo + (j * m - 0.5) * (self.hi - self.lo) / n
        return LevelTable(self.bits, self.signed, frac_bits, levels, scale.clone(), edges)

    def extra_repr(self) -> str:
        return (super().extra_repr() + f", max_bits={self.max_bits}, min_bits={self.min_bits}"
                + (f", channels={self.channels}" if self.channels else "") + (", frozen" if bool(self.frozen) else ""))
