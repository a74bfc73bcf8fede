"""The generic interface of a simulator: a data set whose structural equations we own.

A :class:`Simulator` renders scenes from label tables, draws them from its SCM, draws them with
*every factor independent* (what the anti-causal predictors train on, so that each one reads its
own factor and not its causes), and computes exact counterfactuals. Metrics and predictors only
talk to this interface; the data-set knowledge stays in :mod:`causaldiffae.data.pendulum` and
:mod:`causaldiffae.data.morphomnist`::

    sim = get_simulator("pendulum")                       # or simulator_from_params(generator.json)
    images, table = sim.sample_independent(1000, np.random.default_rng(0))   # (N, H, W, C) uint8
    cf_images, cf_table = sim(table, {"angle": 10.0})     # the true counterfactual (same as .true_counterfactual)
    sim.no_true_counterfactual                            # {node: why} for do()s it cannot answer exactly

A simulator is callable as ``sim(table, do, size=None)``: the true-counterfactual function the
metrics took before this interface existed.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd

from causaldiffae.errors import DataError


class Simulator(ABC):
    """Base class of the shipped simulators (subclasses fill in the data-set knowledge).

    Attributes:
        name: the generator's name (``pendulum``, ``morphomnist``).
        nodes: the label columns, one per causal node.
        exogenous: extra columns of a table that the true counterfactual needs (noise, source digit).
        size: the size images are rendered at unless a call says otherwise.
        categorical: node -> its classes, for nodes whose values are categories.
        no_true_counterfactual: node -> the reason ``do(node)`` has no exact counterfactual here
            (its ground-truth figures must be skipped, and said so).
    """

    name: str = ""
    nodes: tuple[str, ...] = ()
    exogenous: tuple[str, ...] = ()
    categorical: Mapping[str, tuple] = {}
    no_true_counterfactual: Mapping[str, str] = {}

    def __init__(self, size: int = 32) -> None:
        self.size = int(size)

    # -- what subclasses implement ------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Generator parameters beyond the name and size (recorded in ``generator.json``)."""
        return {}

    @abstractmethod
    def render(self, table: pd.DataFrame, size: int | None = None) -> np.ndarray:
        """Render each row of ``table``: ``(N, size, size, C)`` uint8."""

    @abstractmethod
    def sample_table(self, n: int, seed: int = 0) -> pd.DataFrame:
        """``n`` rows drawn from the SCM (label and exogenous columns)."""

    @abstractmethod
    def dataset_table(self, n: int | None = None, seed: int = 0) -> pd.DataFrame:
        """The rows of the generated data set (what ``generate_dataset`` writes), with a ``split`` column."""

    @abstractmethod
    def independent_table(self, n: int, rng: np.random.Generator, split: str | None = "train") -> pd.DataFrame:
        """``n`` rows where every node is drawn from its marginal independently of the others."""

    @abstractmethod
    def true_counterfactual(self, table: pd.DataFrame, do: Mapping[str, Any | Callable], size: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
        """The exact counterfactual of each row under ``do``: ``(images (N, H, W, C) uint8, table)``."""

    def field_metrics(self, images, intended: Mapping[str, Any], predictors=None, do: Mapping[str, Any] | None = None) -> dict[str, Any] | None:
        """Scores in the units the field publishes for this data set, or None where there are none.

        ``images (B, C, H, W)`` in [-1, 1] scored against ``intended`` (node -> ``(B,)`` label
        values); call it on the model's counterfactuals, the factual images (do-nothing) and the
        true counterfactuals (floor). :attr:`field_reference` holds the published figures to compare with.
        """
        return None

    field_reference: Mapping[str, Any] | None = None
    #: The units of :meth:`field_metrics`' scores: score key -> ``{"node": the node it reads, "label":
    #: its name with units, "higher_is_better": bool, "best": the perfect value}``; empty where there are none.
    field_units: Mapping[str, Mapping[str, Any]] = {}

    # -- shared --------------------------------------------------------------------------------
    def __call__(self, table: pd.DataFrame, do: Mapping[str, Any | Callable], size: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
        return self.true_counterfactual(table, do, size)

    def sample(self, n: int, seed: int = 0, size: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
        """``n`` scenes from the SCM: ``(images (n, H, W, C) uint8, table)``."""
        table = self.sample_table(n, seed)
        return self.render(table, size), table

    def sample_independent(self, n: int, rng: np.random.Generator | int = 0, split: str | None = "train",
                           size: int | None = None) -> tuple[np.ndarray, pd.DataFrame]:
        """``n`` scenes with every factor drawn independently from its marginal (the do() of all of them).

        Args:
            n: scenes.
            rng: a numpy Generator or a seed.
            split: where the simulator has a finite pool of sources (the real digits of
                Morpho-MNIST), draw them only from this split of :meth:`dataset_table` (None: all).
            size: render size (default :attr:`size`).

        Returns:
            ``(images (n, H, W, C) uint8, table)``; the table has the label and exogenous columns.
        """
        rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        table = self.independent_table(int(n), rng, split)
        return self.render(table, size), table

    def split_rows(self, split: str, n: int | None = None, seed: int = 0) -> pd.DataFrame:
        """The rows of :meth:`dataset_table` in ``split`` (index reset; ``row`` = the data set's row number)."""
        table = self.dataset_table()
        rows = table.index[table["split"] == split]
        if rows.size == 0:
            raise DataError(f"the {self.name} data set has no {split!r} rows")
        if n is not None:
            rows = np.sort(np.random.default_rng(seed).choice(rows, size=min(int(n), rows.size), replace=False))
        out = table.loc[rows].copy()
        out.insert(0, "row", rows)
        return out.reset_index(drop=True)

    def has_true_counterfactual(self, do: Mapping[str, Any]) -> bool:
        """Whether the simulator can answer ``do`` exactly (no intervened node is in :attr:`no_true_counterfactual`)."""
        return not any(k in self.no_true_counterfactual for k in do)

    def generator_params(self) -> dict[str, Any]:
        """``{"generator": name, "size": size, **params()}``."""
        return {"generator": self.name, "size": self.size, **self.params()}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}(size={self.size}{extra})"


SIMULATORS = ("pendulum", "morphomnist")


def get_simulator(name: str, size: int = 32, **params: Any) -> Simulator:
    """The simulator of a generated data set by name; ``params`` are its generator parameters."""
    if name == "pendulum":
        from causaldiffae.data.pendulum import PendulumSimulator

        return PendulumSimulator(size=size, **params)
    if name == "morphomnist":
        from causaldiffae.data.morphomnist import MorphoMNISTSimulator

        return MorphoMNISTSimulator(size=size, **params)
    raise DataError(f"no simulator for {name!r}; known: {', '.join(SIMULATORS)}")


def simulator_from_params(params: Mapping[str, Any]) -> Simulator:
    """The simulator that generated a folder, from its ``generator.json`` (missing parameters take the
    values of the folders written before they existed, so old folders keep their meaning)."""
    if not isinstance(params, Mapping) or "generator" not in params:
        raise DataError(f"generator parameters must name the generator; got {params!r:.120}")
    name = params["generator"]
    if name == "pendulum":
        from causaldiffae.data.pendulum import LEGACY_SHADOW_WIDTH

        return get_simulator(name, size=int(params.get("size") or 32), shadow_width=float(params.get("shadow_width", LEGACY_SHADOW_WIDTH)))
    return get_simulator(name, size=int(params.get("size") or 32))
