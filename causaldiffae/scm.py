"""Compile a :class:`~causaldiffae.graph.CausalGraph` into a Pyro structural causal model over latents.

For every node ``i`` (in the graph's topological order) with latent block size ``d_i``::

    u_i ~ N(0, I_{d_i})                         sample site  "u_<name>"
    z_i = f_i(z_pa(i)) + u_i                    deterministic site "z_<name>"
    y~_i * 1 ~ N(z_i, I_{d_i})                  observed site "y_<name>", masked where the label is missing
    k_i ~ Categorical(logits=z_i)               (a categorical node: its class index k_i instead)

``f_i`` reads the concatenated parent *z* blocks (never their ``u``); for a root it is a learned bias
(initialised to zero). Because the noise is additive, abduction is exact: ``u_i = z_i - f_i(z_pa(i))``.
See ``docs/scm.md``.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Union

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro import poutine
from pyro.nn import PyroModule
from pyro.nn.module import to_pyro_module_
from pyro.poutine.do_messenger import DoMessenger
from torch import nn

from causaldiffae.errors import InterventionError
from causaldiffae.graph import CausalGraph

__all__ = ["LatentSCM", "LatentDo", "DoValue"]

#: An intervention value in label units: a number, a per-example ``(B,)`` tensor/array, or a callable
#: ``f(factual_label_value (B,)) -> new label value``.
DoValue = Union[float, int, torch.Tensor, np.ndarray, Callable[[torch.Tensor], Any]]


class _RootBias(nn.Module):
    """Mechanism of a root node: a learned constant block (zero at initialisation)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, parents: torch.Tensor) -> torch.Tensor:  # parents: (B, 0)
        return self.bias.expand(parents.shape[0], -1)


def _mechanism(kind: str, n_in: int, n_out: int, hidden: int) -> nn.Module:
    if n_in == 0:
        return _RootBias(n_out)
    if kind == "linear":
        return nn.Linear(n_in, n_out)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                             nn.Linear(hidden, n_out))
    raise ValueError(f"unknown mechanism {kind!r}; use 'mlp' or 'linear'")


class LatentSCM(PyroModule):
    """Additive-noise SCM over the latent blocks of ``graph``.

    ``mechanism="mlp"`` (default; two hidden layers of width ``hidden``) or ``"linear"``: one module
    per node in :attr:`f` (a ``ModuleDict`` keyed by node name) mapping the concatenated parent
    blocks ``(B, sum d_pa)`` to ``(B, d_i)``. All tensors are flat latents ``(B, D)`` with
    ``D = graph.latent_dim`` laid out as ``graph.block(name)``.
    """

    def __init__(self, graph: CausalGraph, mechanism: str = "mlp", hidden: int = 64) -> None:
        super().__init__()
        self.graph = graph
        self.mechanism_kind = mechanism
        self.hidden = hidden
        dims = dict(zip(graph.nodes, graph.dims))
        f = PyroModule[nn.ModuleDict]()
        for n in graph.nodes:
            m = _mechanism(mechanism, sum(dims[p] for p in graph.parents(n)), dims[n], hidden)
            to_pyro_module_(m)
            # Direct insertion so that node names such as "type" or "train" are valid keys.
            f._modules[n] = m
        self.f = f  # parameters become Pyro params named "f.<node>.<param>"

    # ------------------------------------------------------------------ pure tensor methods
    def _parent_input(self, name: str, blocks: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        parents = self.graph.parents(name)
        if parents:
            return torch.cat([blocks[p] for p in parents], dim=-1)
        return like.new_zeros(like.shape[0], 0)

    def mechanism(self, name: str, blocks: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """``f_name(z_pa)`` ``(B, d_name)`` from a mapping of parent blocks ``{parent: (B, d_parent)}``;
        ``like`` is any ``(B, ...)`` tensor giving batch size, dtype and device."""
        return self.f[name](self._parent_input(name, blocks, like))

    def _blocks(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if x.ndim != 2 or x.shape[1] != self.graph.latent_dim:
            raise ValueError(f"expected a latent of shape (B, {self.graph.latent_dim}), got {tuple(x.shape)}")
        return {n: x[:, self.graph.block(n)] for n in self.graph.nodes}

    def mechanisms(self, u: torch.Tensor) -> torch.Tensor:
        """Push exogenous noise ``u`` ``(B, D)`` through the SCM: ``z`` ``(B, D)``."""
        ub, z = self._blocks(u), {}
        for n in self.graph.nodes:
            z[n] = self.mechanism(n, z, u) + ub[n]
        return torch.cat([z[n] for n in self.graph.nodes], dim=-1)

    def abduct(self, z: torch.Tensor) -> torch.Tensor:
        """Exact abduction ``u_i = z_i - f_i(z_pa(i))``: ``(B, D) -> (B, D)``."""
        zb = self._blocks(z)
        return torch.cat([zb[n] - self.mechanism(n, zb, z) for n in self.graph.nodes], dim=-1)

    def _check_do(self, do: Mapping[str, DoValue]) -> None:
        if not isinstance(do, Mapping):
            raise InterventionError(f"do must be a mapping node -> value, got {type(do).__name__}")
        unknown = [k for k in do if k not in self.graph.nodes]
        if unknown:
            raise InterventionError(
                f"cannot intervene on unknown node(s) {', '.join(map(repr, unknown))}; "
                f"known nodes: {', '.join(self.graph.nodes)}")

    def affected(self, do: Mapping[str, DoValue]) -> list[str]:
        """Intervened nodes and their descendants (what ``do`` changes), in node order."""
        self._check_do(do)
        hit = set(do) | {d for n in do for d in self.graph.descendants(n)}
        return [n for n in self.graph.nodes if n in hit]

    def intervention_block(self, name: str, value: DoValue, factual: torch.Tensor) -> torch.Tensor:
        """Latent block ``(B, d_name)`` set by ``do(name = value)``.

        ``factual`` is the node's factual block ``(B, d_name)``; a callable value receives its label
        value (block mean, denormalised) ``(B,)`` and returns the new label value(s).
        """
        g, B = self.graph, factual.shape[0]
        if callable(value):
            read = factual.argmax(dim=-1).to(factual.dtype) if g.is_categorical(name) else factual.mean(dim=-1)
            value = value(g.from_latent_value(name, read))
        try:
            v = torch.as_tensor(value, dtype=factual.dtype, device=factual.device)
        except (TypeError, ValueError, RuntimeError):
            raise InterventionError(f"do({name} = {value!r}): not a number or a (B,) array") from None
        if v.ndim == 2 and v.shape[1] == 1:
            v = v[:, 0]
        if v.ndim > 1 or (v.ndim == 1 and v.shape[0] not in (1, B)):
            raise InterventionError(
                f"do({name}): value of shape {tuple(v.shape)} is neither a scalar nor per-example ({B},)")
        if not torch.isfinite(v).all():
            raise InterventionError(f"do({name}): value {value!r} is not finite")
        if g.is_categorical(name):
            return self._class_block(name, v, factual)
        v = g.to_latent_value(name, v)
        return v.reshape(-1, 1).expand(B, factual.shape[1]).clone()

    def _class_block(self, name: str, value: torch.Tensor, factual: torch.Tensor) -> torch.Tensor:
        """``do(name = class)`` on a categorical block of logits ``(B, K)``: the factual block with the
        logits of its current class (argmax) and of the requested class swapped, so the set class is
        the argmax while the block keeps the factual's magnitudes (a class representation the
        decoder has seen). Unknown classes raise InterventionError."""
        from causaldiffae.errors import DataError

        g, B = self.graph, factual.shape[0]
        try:
            k = g.class_index(name, value)
        except DataError as err:
            raise InterventionError(f"do({name} = {value.tolist() if value.ndim else float(value)!r}): {err}") from None
        k = k.reshape(-1).long().expand(B) if k.numel() == 1 else k.long()
        cur = factual.argmax(dim=-1)
        out = factual.clone()
        rows = torch.arange(B, device=factual.device)
        top, wanted = factual[rows, cur], factual[rows, k]
        out[rows, cur] = wanted
        out[rows, k] = top
        return out

    def label_values(self, z: torch.Tensor) -> torch.Tensor:
        """Label values in latent units (:meth:`CausalGraph.to_latent`) read off latents
        ``(B, D) -> (B, n_nodes)``: a continuous node's
        block mean, a categorical node's class index (argmax of its logits) as a float."""
        g = self.graph
        cols = [z[:, g.block(n)].argmax(dim=-1).to(z.dtype) if g.is_categorical(n) else z[:, g.block(n)].mean(dim=-1)
                for n in g.nodes]
        return torch.stack(cols, dim=-1)

    def label_nll(self, name: str, block: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Negative log-likelihood ``(B,)`` of normalised labels ``target`` ``(B,)`` given a block
        ``(B, d)`` (without constants): ``0.5 ||block - target * 1||^2``, or for a categorical node
        the cross-entropy of its class index under ``Categorical(logits=block)``."""
        if self.graph.is_categorical(name):
            return torch.nn.functional.cross_entropy(block, target.long(), reduction="none")
        return 0.5 * (block - target[:, None]).pow(2).sum(dim=-1)

    def mechanism_loss(self, z: torch.Tensor, labels: torch.Tensor, label_mask: torch.Tensor | None = None,
                       detach_parents: bool = True, per_labelled_row: bool = False) -> torch.Tensor:
        """Mechanism fitting ``(B,)``: how well each non-root node's label is explained by its
        mechanism alone, ``sum_i nll(y~_i | f_i(z_pa(i)))`` over the labelled non-root nodes.

        ``z`` ``(B, D)`` latents (the encoder's), ``labels`` ``(B, n_nodes)`` in label units (NaN =
        missing), ``label_mask`` ``(B, n_nodes)`` bool. This asks ``f_i`` to carry the parents'
        effect on the child, in label units, instead of leaving it to the abducted ``u_i`` (which the
        label term alone allows); abduction stays exact (``u_i = z_i - f_i(z_pa)``). With
        ``detach_parents`` the parents' blocks are inputs only: the term trains the mechanisms and
        never pulls a parent's block towards its child's label. With ``per_labelled_row`` each node's
        term is scaled by ``B / (rows carrying its label)``, so that the batch mean of the result is
        the mean over the labelled rows (see ``ModelConfig.label_average``).
        """
        g = self.graph
        mask = ~torch.isnan(labels)
        if label_mask is not None:
            mask = mask & label_mask.to(device=labels.device, dtype=torch.bool)
        target = torch.nan_to_num(g.to_latent(labels), nan=0.0)
        zb = self._blocks(z.detach() if detach_parents else z)
        out = z.new_zeros(z.shape[0])
        for i, n in enumerate(g.nodes):
            if not g.parents(n):
                continue
            nll = self.label_nll(n, self.mechanism(n, zb, z), target[:, i])
            term = torch.where(mask[:, i], nll, torch.zeros_like(nll))
            if per_labelled_row:
                term = term * (z.shape[0] / mask[:, i].sum().clamp(min=1))
            out = out + term
        return out

    def intervene(self, z: torch.Tensor, do: Mapping[str, DoValue], u: torch.Tensor | None = None) -> torch.Tensor:
        """Latent counterfactual ``z'`` ``(B, D)`` of the factual ``z`` ``(B, D)`` under ``do``.

        Intervened blocks take the set value (label units -> ``((v - loc) / scale) * 1``), descendants
        are recomputed as ``f_i(z'_pa) + u_i`` with their abducted ``u`` (``u`` given or ``abduct(z)``),
        and every other block is copied unchanged (bit-identical).
        """
        self._check_do(do)
        affected = set(self.affected(do))
        zb = self._blocks(z)
        ub = self._blocks(u if u is not None else self.abduct(z))
        out: dict[str, torch.Tensor] = {}
        for n in self.graph.nodes:
            if n in do:
                out[n] = self.intervention_block(n, do[n], zb[n])
            elif n in affected:
                out[n] = self.mechanism(n, out, z) + ub[n]
            else:
                out[n] = zb[n]
        return torch.cat([out[n] for n in self.graph.nodes], dim=-1)

    # ------------------------------------------------------------------ Pyro model
    def sample_latents(
        self,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        label_weight: float = 1.0,
    ) -> torch.Tensor:
        """Run the SCM's sites inside the caller's ``pyro.plate`` (of size B); return ``z`` ``(B, D)``.

        ``labels`` ``(B, n_nodes)`` in label units (NaN = missing) adds the observed ``y_<name>`` sites,
        masked where the label is NaN or ``label_mask`` ``(B, n_nodes)`` (bool) is False, and scaled by
        ``label_weight`` (the lambda of the objective). Without labels there are no ``y`` sites.
        """
        g = self.graph
        if labels is not None:
            if labels.ndim != 2 or labels.shape[1] != g.n_nodes:
                raise ValueError(f"labels must be (B, {g.n_nodes}) in node order {g.nodes}, got {tuple(labels.shape)}")
            mask = ~torch.isnan(labels)
            if label_mask is not None:
                mask = mask & label_mask.to(device=labels.device, dtype=torch.bool)
            target = torch.nan_to_num(g.to_latent(labels), nan=0.0)
        param = next(self.parameters(), None)
        device = labels.device if labels is not None else (param.device if param is not None else None)
        dtype = labels.dtype if labels is not None else torch.get_default_dtype()
        z: dict[str, torch.Tensor] = {}
        for i, (n, d) in enumerate(zip(g.nodes, g.dims)):
            zero = torch.zeros(d, device=device, dtype=dtype)
            u = pyro.sample(f"u_{n}", dist.Normal(zero, 1.0).to_event(1))
            z[n] = pyro.deterministic(f"z_{n}", self.mechanism(n, z, u) + u, event_dim=1)
            if labels is not None:
                with poutine.scale(scale=label_weight):
                    if g.is_categorical(n):
                        pyro.sample(f"y_{n}", dist.Categorical(logits=z[n]).mask(mask[:, i]), obs=target[:, i].long())
                    else:
                        y = target[:, i : i + 1].expand(-1, d)
                        pyro.sample(f"y_{n}", dist.Normal(z[n], 1.0).to_event(1).mask(mask[:, i]), obs=y)
        return torch.cat([z[n] for n in g.nodes], dim=-1)

    def forward(
        self,
        batch_size: int | None = None,
        labels: torch.Tensor | None = None,
        label_mask: torch.Tensor | None = None,
        label_weight: float = 1.0,
    ) -> torch.Tensor:
        """The SCM as a Pyro model: :meth:`sample_latents` inside ``pyro.plate("data", B)``; ``z`` ``(B, D)``.

        ``B`` is ``labels.shape[0]`` when labels are given, else ``batch_size``.
        """
        if labels is None and batch_size is None:
            raise ValueError("give batch_size or labels")
        B = labels.shape[0] if labels is not None else int(batch_size)
        with pyro.plate("data", B):
            return self.sample_latents(labels, label_mask, label_weight)

    def do(self, do: Mapping[str, DoValue]) -> "LatentDo":
        """Pyro effect handler applying ``do`` (label units) to the ``z_<name>`` sites; see :class:`LatentDo`."""
        return LatentDo(self, do)


class LatentDo(DoMessenger):
    """``pyro.poutine.do`` on the SCM's deterministic ``z_<name>`` sites, with label-unit values.

    Use as a context manager or decorator around a model that calls :meth:`LatentSCM.sample_latents`::

        with scm.do({"angle": 30.0, "light": lambda v: v + 10}):
            z_cf = scm(labels=None, batch_size=8)

    At an intervened site the value used downstream is the set block (site renamed ``z_<name>__CF``,
    as ``poutine.do`` does) while a fresh ``z_<name>`` site keeps the un-intervened value. A callable
    receives the *factual* label value: the node's block in the world without any intervention,
    ``mechanisms(u)`` with the same ``u`` — so the handler agrees exactly with
    :meth:`LatentSCM.intervene` applied to ``mechanisms(u)``.
    """

    def __init__(self, scm: LatentSCM, do: Mapping[str, DoValue]) -> None:
        scm._check_do(do)
        super().__init__(data={})
        self.scm, self.do_values = scm, dict(do)
        self._u: dict[str, torch.Tensor] = {}
        self._factual: dict[str, torch.Tensor] = {}

    def __enter__(self):
        self._u, self._factual = {}, {}
        return super().__enter__()

    def _pyro_sample(self, msg: Any) -> None:
        name = msg["name"]
        if name.startswith("z_") and name[2:] in self.scm.graph.nodes and msg.get("_intervener_id") != self._intervener_id:
            node = name[2:]
            u = self._u.get(node)
            if u is None:
                raise InterventionError(f"site {name} reached before u_{node}: not a LatentSCM model")
            factual = self.scm.mechanism(node, self._factual, u) + u
            self._factual[node] = factual
            if node in self.do_values:
                self.data = {name: self.scm.intervention_block(node, self.do_values[node], factual)}
        super()._pyro_sample(msg)

    def _pyro_post_sample(self, msg: Any) -> None:
        name = msg["name"]
        if name.startswith("u_") and name[2:] in self.scm.graph.nodes:
            self._u[name[2:]] = msg["value"]
