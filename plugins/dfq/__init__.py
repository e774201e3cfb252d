"""DFQ-diff: Cheng et al.'s *Differentiable Fine-grained Quantization* for deep neural network compression
(NIPS 2018 CDNNRIA workshop, arXiv 1810.10351). Not Nagel et al.'s *Data-Free Quantization* (ICCV 2019), which
shares the acronym: hence the name ``dfq-diff``.

Certain from the paper's abstract and the authors' scripts: weights only; one bitwidth per layer ("layers/
structures"); the discrete bitwidth space relaxed to a continuous one and optimised by gradient descent; compared
with uniform quantization at the same compression rate. No algorithm code is public; the relaxation is a
DARTS-style reconstruction:

* :mod:`.quantizer`: per-unit logits over candidate bitwidths, the softmax(logits / T) mixture of the candidates'
  LSQ quantizations of the weights, and the temperature's annealing schedule;
* :mod:`.cost`: the differentiable expected cost (parameter-weighted expected bits, or the run's budget unit) and
  its penalty against the budget;
* :mod:`.discretise`: argmax per unit, repaired to the budget by the core's integer program over the final
  logits;
* :mod:`.method`: search, discretisation and the shared fine-tune as the harness's ``dfq-diff`` method;
* :mod:`.bench` (``mpqbench bench dfq-step``).

Parameters (``--methods dfq-diff:key=value``); every one the paper leaves open, with the default chosen here:

* ``candidates`` (2/3/4/5/6/7/8): weight bitwidths (the authors also swept 6..16-bit uniform baselines; the
  harness's bitwidths stop at 8); ``a`` (8): activation bits, fixed (the method is weights only).
* ``search_epochs`` / ``finetune_epochs`` (none: the recipe's ``qat_epochs`` each); ``search_lr`` (none: the
  recipe's ``qat_lr``) for the weights during the search.
* ``update`` (``bilevel``: logits on validation batches, weights on training batches, as DARTS; ``joint``: both
  on training batches), ``every`` (1: a logit step per ``every`` training steps), ``logit_lr`` (0.05, Adam;
  logits start at zero, every candidate equally likely).
* ``t_start`` (1.0), ``t_end`` (0.1), ``anneal`` (``exponential``; ``linear``, ``constant`` = ``t_start``
  throughout, plain DARTS): the softmax temperature over the search steps.
* ``lambda_c`` (1.0) and ``penalty`` (``abs`` on expected/budget - 1, two-sided; ``hinge``, ``square``,
  ``linear`` = the expected compression term): the expected-cost loss, in the run's budget unit.
"""

from mpqbench import hookimpl
from mpqbench.api import Benchmark
from mpqbench.plugins.dfq.method import DFQDiff

__all__ = ["DFQDiff"]


@hookimpl
def mpqbench_register_methods(register):
    register(DFQDiff())


@hookimpl
def mpqbench_register_benchmarks(register):
    from mpqbench.plugins.dfq import bench

    register(Benchmark("dfq-step", bench.main, (bench.main.__doc__ or "").strip().splitlines()[0]))
