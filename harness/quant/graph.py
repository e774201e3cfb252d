"""Reading a model's dataflow graph with torch.fx: its quantizable layers and its quantization points.

A *quantization point* is a tensor that is quantized once, for all of its consumers: the network input,
and every tensor read by a conv/linear layer or by a pooling op. Because a residual shortcut reads the
same (quantized) tensor as the block's first conv, the fake-quant model sees exactly what the integer
model computes. Everything between two points (conv, batch norm, ReLU/ReLU6, residual add, pooling,
flatten) is what the integer export fuses into one requantising op.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
from torch import fx, nn
from torch.nn import functional as F

from mpqbench.errors import UserError
from mpqbench.quant.layers import ActQuant, QuantConv2d, QuantLinear

INPUT, OUTPUT, LAYER, BN, RELU, RELU6, POOL, ADD, PASS, QUANT = (
    "input", "output", "layer", "bn", "relu", "relu6", "pool", "add", "pass", "quant")

_MODULE_KINDS = (
    ((nn.Conv2d, nn.Linear), LAYER),
    ((nn.BatchNorm2d, nn.BatchNorm1d), BN),
    ((nn.ReLU6,), RELU6),
    ((nn.ReLU,), RELU),
    ((nn.AdaptiveAvgPool2d, nn.AvgPool2d, nn.MaxPool2d), POOL),
    ((nn.Dropout, nn.Flatten, nn.Identity), PASS),
    ((ActQuant,), QUANT),
)
_FUNCTION_KINDS = {
    operator.add: ADD, torch.add: ADD, F.relu: RELU, torch.relu: RELU, F.relu6: RELU6,
    torch.flatten: PASS, F.dropout: PASS,
    F.adaptive_avg_pool2d: POOL, F.avg_pool2d: POOL, F.max_pool2d: POOL,
}
_METHOD_KINDS = {"flatten": PASS, "relu": RELU}


def node_kind(gm: fx.GraphModule, node: fx.Node) -> str:
    """Classify a node; an operation mpqbench cannot quantize and export is a clear error."""
    if node.op == "placeholder":
        return INPUT
    if node.op == "output":
        return OUTPUT
    if node.op == "call_module":
        module = gm.get_submodule(node.target)
        for types, kind in _MODULE_KINDS:
            if isinstance(module, types):
                return kind
        what = type(module).__name__
    elif node.op == "call_function" and node.target in _FUNCTION_KINDS:
        return _FUNCTION_KINDS[node.target]
    elif node.op == "call_method" and node.target in _METHOD_KINDS:
        return _METHOD_KINDS[node.target]
    else:
        what = getattr(node.target, "__name__", str(node.target))
    raise UserError(f"model uses an operation mpqbench cannot quantize: {what} (at {node.name})")


def tensor_args(node: fx.Node) -> list[fx.Node]:
    """The graph nodes a node reads (constants and shapes left out)."""
    return [a for a in node.all_input_nodes]


@dataclass(frozen=True)
class Point:
    """A quantization point: ``layers`` read it directly; a point no layer reads (the input of a pool)
    takes its bitwidth from ``feeds``, the layers its pooled value reaches."""

    name: str
    signed: bool
    relu6: bool
    layers: tuple[str, ...]
    feeds: tuple[str, ...]


@dataclass(frozen=True)
class GraphInfo:
    layers: tuple[str, ...]
    points: dict[str, Point]
    input_point: str

    def point_of(self, layer: str) -> str:
        for p in self.points.values():
            if layer in p.layers:
                return p.name
        raise KeyError(layer)


def trace(model: nn.Module) -> fx.GraphModule:
    try:
        return fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types; the message is what matters to the user
        raise UserError(f"model {type(model).__name__} cannot be traced by torch.fx: {exc}") from exc


def _sign(gm: fx.GraphModule, node: fx.Node) -> tuple[bool, bool]:
    """(signed, relu6) of a tensor: unsigned after ReLU/ReLU6 and after ops that keep the sign (pooling,
    flatten, dropout); the network input is unsigned because data sets yield images in [0, 1]."""
    kind = node_kind(gm, node)
    if kind == INPUT:
        return False, False
    if kind in (RELU, RELU6):
        return False, kind == RELU6
    if kind in (POOL, PASS, QUANT):
        return _sign(gm, tensor_args(node)[0])
    return True, False


def analyze(gm: fx.GraphModule) -> GraphInfo:
    """Find the quantizable layers (in execution order) and the quantization points of a traced model."""
    kinds = {n: node_kind(gm, n) for n in gm.graph.nodes}
    layers = tuple(str(n.target) for n in gm.graph.nodes if kinds[n] == LAYER)
    if len(set(layers)) != len(layers):
        raise UserError("a quantizable layer is called more than once; mpqbench needs one call per layer")
    point_nodes = [n for n in gm.graph.nodes
                   if kinds[n] == INPUT or any(kinds[u] in (LAYER, POOL) for u in n.users)]

    def direct_layers(n: fx.Node) -> tuple[str, ...]:
        return tuple(str(u.target) for u in n.users if kinds[u] == LAYER)

    def feeds(n: fx.Node, seen: set) -> tuple[str, ...]:
        out: list[str] = []
        for u in n.users:
            if u in seen:
                continue
            seen.add(u)
            if kinds[u] == LAYER:
                out.append(str(u.target))
            elif u in point_nodes and direct_layers(u):
                out.extend(direct_layers(u))
            elif kinds[u] in (POOL, PASS):
                out.extend(feeds(u, seen))
        return tuple(dict.fromkeys(out))

    points = {}
    for n in point_nodes:
        signed, relu6 = _sign(gm, n)
        direct = direct_layers(n)
        points[n.name] = Point(n.name, signed, relu6, direct, () if direct else feeds(n, set()))
    inputs = [n.name for n in gm.graph.nodes if kinds[n] == INPUT]
    if len(inputs) != 1:
        raise UserError("mpqbench models take exactly one input tensor")
    return GraphInfo(layers, points, inputs[0])


def quant_graph(model: nn.Module) -> tuple[fx.GraphModule, GraphInfo]:
    """A traced copy of ``model`` with conv/linear layers swapped for quantized ones and an empty
    :class:`ActQuant` inserted at every quantization point (module path ``actq.<point>``)."""
    gm = trace(copy.deepcopy(model))
    info = analyze(gm)
    for name in info.layers:
        module = gm.get_submodule(name)
        quant = (QuantConv2d if isinstance(module, nn.Conv2d) else QuantLinear).from_float(module)
        parent, _, leaf = name.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, leaf, quant)
    nodes = {n.name: n for n in gm.graph.nodes}
    for point in info.points:
        node = nodes[point]
        path = f"actq.{point}"
        gm.add_submodule(path, ActQuant())
        with gm.graph.inserting_after(node):
            q = gm.graph.call_module(path, (node,))
        node.replace_all_uses_with(q, delete_user_cb=lambda user, q=q: user is not q)
    gm.graph.lint()
    gm.recompile()
    return gm, info
