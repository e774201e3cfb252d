"""SDQ: Stochastic Differentiable Quantization with mixed precision (Huang et al., ICML 2022, arXiv 2206.04459).

No public code exists; this is a reconstruction from the paper's abstract, its framework figure and
summaries. What is certain: per layer, differentiable bitwidth parameters (DBPs) are the probabilities of a
stochastic switch between adjacent candidate bitwidths; bitwidths decay as DBPs fall; after the search the
fixed mixed-precision network is trained with knowledge distillation from the FP32 model and entropy-aware bin
regularisation (EBR, lambda_E = 0.1 in the paper); activation bits are fixed per experiment.

* :mod:`.quantizer`: the DBP gate (one per searched unit), the stochastic quantizer with per-bitwidth LSQ steps,
  its gradient estimator, the interpolation ablation and bit decay.
* :mod:`.losses`: the expected-cost budget regulariser and EBR, both plain loss terms other methods can use.
* :mod:`.repair`: the stage-1 policy meeting the budget exactly.
* :mod:`.method`: the two stages as the harness's ``sdq`` method.
* :mod:`.bench` (``mpqbench bench sdq-step``), :mod:`.ablation` (``mpqbench bench sdq-ablation``).

Parameters (``--methods sdq:key=value``); every one the paper leaves open, with the default chosen here:

* ``candidates`` (2/3/4/5/6/7/8): weight bitwidths; every searched unit starts at the largest.
* ``a`` (8): activation bits of the searched layers, fixed (the paper's main tables fix them per experiment).
* ``search_epochs`` / ``finetune_epochs`` (none: the recipe's ``qat_epochs`` each); ``search_lr`` (none: the
  recipe's ``qat_lr``) for the weights during stage 1.
* ``mode`` (``stochastic``; ``interpolate``: beta-weighted mix of the pair, the FracBits-style ablation),
  ``estimator`` (``gumbel``: straight-through binary Concrete with temperature ``tau`` 1.0 and beta clipped to
  [``clip``, 1 - ``clip``] (0.01) inside its logit, which bounds its gradient; ``straight``: the expectation's
  gradient), ``init`` (1.0: a new pair starts at its upper bitwidth), ``threshold`` (0.5: decay
  when the expected bits round down); see :mod:`.quantizer`.
* ``dbp_optimizer`` (``adam``) and ``dbp_lr`` (0.02: a pair decays in about 25 consistent Adam steps, so 8 -> 3
  bits fits in the quick recipe's 128 steps).
* ``lambda_b`` (1.0) and ``penalty`` (``hinge`` on expected/budget - 1; ``abs``, ``square``, ``linear``): the
  budget regulariser, in the run's budget unit (see :mod:`.losses`).
* ``ce`` (1.0), ``kd`` (1.0) with temperature ``kd_t`` (4.0), ``ebr`` (0.1, lambda_E) with ``ebr_weighting``
  (``entropy``; ``surprisal``, ``none`` = plain bin regularisation): stage 2's loss weights; 0 switches a
  term off.

Each module's docstring states the paper-open details it decides and the parameter that changes each.
"""

from mpqbench import hookimpl
from mpqbench.api import Benchmark
from mpqbench.plugins.sdq.method import SDQ

__all__ = ["SDQ"]


@hookimpl
def mpqbench_register_methods(register):
    register(SDQ())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.sdq import ablation, bench

    for name, module in (("sdq-step", bench), ("sdq-ablation", ablation)):
        register(Benchmark(name, module.main, (module.main.__doc__ or "").strip().splitlines()[0]))
