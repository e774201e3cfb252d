"""DDQ: differentiable dynamic quantization (Zhang et al., "Differentiable Dynamic Quantization with Mixed
Precision and Adaptive Resolution", ICML 2021, arXiv 2106.02295). No public code exists; this is a
reconstruction. Confirmed by the paper: ``x_q = q^T Z U x_o`` with learnable levels ``q``, a binary
block-diagonal merge ``U`` reparameterised as a Kronecker product of gated 2x2 factors and its block
normalisation ``Z``; precision, dynamic range and step learned together; more bits to early layers and
depthwise convolutions. Everything else below is a documented choice with a parameter.

Modules: :mod:`.quantizer` (the gated quantizer and its gradients), :mod:`.losses` (the expected-cost penalty
and the repairs), :mod:`.search_model` (which slots get DDQ quantizers), :mod:`.method` (the stages).

Stages of ``ddq`` (``search`` returns the starting policy; the rest is ``train``):

1. **Learn** (booked as search time): the run's QuantModel with a :class:`DDQQuantizer` on every searched
   layer's weights (one per layer; the layers of a unit share gate logits) and on every searched activation
   point; first/last layers pinned by the run keep LSQ at 8 bits. All gates start open (``max_bits``), levels
   uniform. Weights train with the shared recipe's SGD; levels and ranges in their own Adam optimizer
   (``lr``); gate logits in a third (``gate_optimizer``, ``gate_lr``; the gate STE is noisy, so it has its
   own rate). The loss is cross-entropy plus ``lam`` times the penalty on the cost in the budget's own unit
   (``run.budget.layer_cost``: size, average bits or BitOPs), ramped in over the first ``warmup`` fraction of
   the steps, for ``search_epochs`` epochs (none: the recipe's ``qat_epochs``, so the search costs one
   fine-tune). Two choices make the gates move as a bit policy should within such a short search:
   ``gate_start=graded`` opens the gates with logits falling from ``gate_init`` towards the least significant
   position, so that Adam (which moves every logit at one rate) closes them one at a time rather than all in
   the same step (``flat``: every logit at ``gate_init``; on the tiny model every layer then drops from 8 to
   2 bits in one step); ``penalty_cost=hard`` charges the cost of the hard gates the network computes with,
   with the expected cost's gradient (``expected``: the expected cost, which keeps closed gates' residual
   probability on the bill and drives the hard policy below the budget).
2. **Repair**: the gates of the trained model are frozen at the most probable setting that meets the budget
   exactly, by the core's integer program over the gate scores (``scores``; the trained bits whenever they
   already fit). ``run.extra["ddq"]`` keeps the bits per epoch, the trained and repaired bits, the open
   probabilities and the units the repair changed.
3. **Levels**: activation quantizers always collapse to LSQ at their bits (the integer model requantises
   activations onto uniform grids). ``levels=uniform`` (default): weight levels are frozen to the uniform
   grid too, each quantizer collapses to LSQ with the step its learned range implies, and the shared
   fine-tune (``run.finetune``) follows, so every integer target runs the result bit-exact.
   ``levels=learned``: weight quantizers stay DDQ with frozen gates and keep learning levels and range in
   the fine-tune (``trainer "finetune"``, levels and ranges in Adam at ``lr``); ``finalize`` snaps every
   merged level to a multiple of ``2^-frac_bits`` of the range and the export writes it as a per-layer level
   table (``mpqbench.integer.model``): the reference executor looks the codes up before the integer MAC;
   targets without level tables report themselves unavailable. ``run.extra["ddq"]["level_tables"]`` keeps
   the tables and how far each is from uniform (in merged steps).

Parameters (defaults first):

* ``variant=mixed|fixed``: ``fixed`` freezes every gate at the uniform bitwidth that meets the budget (the
  paper's fixed-precision DDQ, for the mixed-vs-fixed ablation): levels and ranges are still learned, there
  is no penalty and no repair.
* ``levels=uniform|learned``: see stage 3.
* ``act=fixed|learned``: whether activation precision is learned. Default ``fixed``: the paper's main rows
  name one activation bitwidth per row ("mixed 4/8", "4/4") and do not confirm that activation bits are
  learned; activation ranges and levels are learned either way. ``learned``: activation gates are trained
  too, under a second penalty pulling the average activation bitwidth of the searched layers to ``a`` and
  repaired to ``average <= a`` exactly (:func:`repair_acts`); only with budgets that count weight bits alone
  (size_mb, avg_bits), since the core's program cannot choose activation bits per layer.
* ``a=none``: activation bits (``act=fixed``) or their average bound (``act=learned``); none: the largest
  uniform bitwidth meeting the budget, which is the ``uniform`` baseline's activation bits at that budget.
* ``min_bits=2``, ``max_bits=8``: the bitwidth range (``max_bits`` = K, the finest grid has 2^K bins; the
  first ``min_bits`` gates are always open).
* ``search_epochs=none``, ``penalty=hinge|square``, ``penalty_cost=hard|expected`` (:mod:`.losses`),
  ``lam=1``, ``warmup=0.1``, ``lr=1e-3``, ``gate_lr=0.05``, ``gate_optimizer=adam|sgd`` (sgd keeps the
  gradients' relative sizes across layers, but its rate then depends on the model's scale).
* Quantizer (:mod:`.quantizer`): ``gate_init=3`` (initial logit magnitude), ``gate_start=graded|flat``,
  ``temperature=1``,
  ``gate_estimator=sigmoid|identity``, ``monotone=true`` (gates close from the least significant position),
  ``grad_correction=none|slope|block`` (the paper's correction term is unconfirmed), ``learn_levels=true``
  (false: levels stay uniform during the search; DDQ without adaptive resolution), ``w_range_init=1`` and
  ``a_range_init=0.999`` (range initialisation quantiles of |x| for weights, per channel, and activations,
  on the first batch), ``range_grad=lsq|exact``.
* ``scores=map|marginal``: the repair's objective (:meth:`DDQQuantizer.bit_scores`).
* ``frac_bits=8``: fixed-point fraction bits of exported levels (``levels=learned``): levels in [-1, 1] of the
  range become integers up to ``2^frac_bits`` in magnitude, so larger values cost accumulator headroom.
"""

from mpqbench import hookimpl
from mpqbench.plugins.ddq.losses import CostTerm, ResourcePenalty, gate_scores, repair, repair_acts
from mpqbench.plugins.ddq.method import DDQ
from mpqbench.plugins.ddq.quantizer import DDQQuantizer, LevelTable

__all__ = ["CostTerm", "DDQ", "DDQQuantizer", "LevelTable", "ResourcePenalty", "gate_scores", "repair",
           "repair_acts"]


@hookimpl
def mpqbench_register_methods(register):
    register(DDQ())
