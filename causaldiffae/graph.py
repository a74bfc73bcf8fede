"""Causal graph declaration: nodes with latent block sizes and label normalisation, edges, files.

A :class:`CausalGraph` is an immutable DAG whose nodes carry a :class:`NodeSpec` (latent block size
``dim``, label normalisation ``loc``/``scale``, a description and the label column name). It is read
from and written to DOT, GML, YAML and JSON files, rendered with graphviz, and checked against a
label table with DoWhy. See ``docs/graphs.md`` for the file formats and ``docs/architecture.md``
for the conventions (node order, latent layout, labels) that every other module relies on.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np

from causaldiffae.errors import DataError, GraphError

__all__ = [
    "DEFAULT_DIM",
    "NodeSpec",
    "CausalGraph",
    "shipped_graph",
    "render",
    "check",
    "load_label_table",
    "GraphCheckReport",
    "MarkovViolation",
]

#: Latent block size of nodes whose ``dim`` is not declared and whose graph sets no ``default_dim``.
DEFAULT_DIM = 4
#: Attributes a node may declare (``range`` is turned into ``loc``/``scale`` on reading).
NODE_ATTRIBUTES = ("dim", "loc", "scale", "range", "description", "column", "type", "classes", "transform", "low", "high")
#: Node types: a real-valued factor, or one of a finite set of classes.
NODE_TYPES = ("continuous", "categorical")
#: Label transforms of a continuous node: the units its latent block (and so its additive-noise
#: mechanism) lives in. "log": ``log(y - low)``; "logit": ``logit((y - low) / (high - low))``.
TRANSFORMS = ("identity", "log", "logit")
#: How close to its bounds a transformed label is taken (as a fraction of ``high - low``, or of
#: ``scale`` for "log"): labels on or past a bound are clamped there before the transform.
TRANSFORM_EPS = 1e-6
#: Graph-level attributes.
GRAPH_ATTRIBUTES = ("name", "default_dim")
SUFFIXES = {".dot": "dot", ".gv": "dot", ".gml": "gml", ".yaml": "yaml", ".yml": "yaml", ".json": "json"}
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_DOT_KEYWORDS = {"node", "edge", "graph", "digraph", "subgraph", "strict"}
SHIPPED_DIR = Path(__file__).resolve().parent / "graphs"


# --------------------------------------------------------------------------------------- specs
@dataclass(frozen=True)
class NodeSpec:
    """Declaration of one node.

    ``dim=None`` takes the graph's ``default_dim``. ``loc``/``scale`` define the label normalisation
    ``y~ = (y - loc) / scale``; ``None`` means "estimate from data" (:meth:`CausalGraph.with_label_stats`).
    ``column`` is the label-table column (``None``: the node name).

    ``type="categorical"`` declares a factor with a finite set of ``classes`` (the label values it
    takes, numbers, at least two): its latent block holds one logit per class (``dim`` defaults to
    ``len(classes)`` and must equal it), its labels need no ``loc``/``scale`` and normalise to the
    class index ``0..K-1``.

    ``transform="log"`` (with ``low``) or ``"logit"`` (with ``low`` < ``high``) declares the units in
    which the node's noise is additive: its latent block holds ``(T(y) - T(loc)) / (scale T'(loc))``
    instead of ``(y - loc) / scale``, so that a mechanism ``z = f(z_pa) + u`` can be exact for a
    structural equation such as ``y = low + (high - low) sigmoid(g(pa) + noise)``. The scaling makes
    the latent units equal the normalised units at ``loc``. ``loc``/``scale`` stay the label
    normalisation every score is reported in (:meth:`CausalGraph.normalise` is linear for every
    node); only the model's latents see the transform (:meth:`CausalGraph.to_latent`).
    """

    name: str
    dim: int | None = None
    loc: float | None = None
    scale: float | None = None
    description: str = ""
    column: str | None = None
    type: str = "continuous"
    classes: tuple[float, ...] | None = None
    transform: str = "identity"
    low: float | None = None
    high: float | None = None

    @property
    def label_column(self) -> str:
        return self.column if self.column is not None else self.name

    @property
    def is_categorical(self) -> bool:
        return self.type == "categorical"

    def attributes(self) -> dict[str, Any]:
        """The declared (non-default) attributes, JSON-safe, without the name."""
        out: dict[str, Any] = {}
        for key in ("dim", "loc", "scale", "description", "column"):
            value = getattr(self, key)
            if value is not None and value != "":
                out[key] = value
        if self.is_categorical:
            out["type"] = self.type
            out["classes"] = [int(c) if float(c).is_integer() else float(c) for c in self.classes or ()]
        if self.transform != "identity":
            out["transform"] = self.transform
            out.update({k: getattr(self, k) for k in ("low", "high") if getattr(self, k) is not None})
        return out


def _where(node: str, source: str | None) -> str:
    return f"node '{node}'" + (f" in {source}" if source else "")


def _to_int(value: Any, attr: str, node: str, source: str | None) -> int:
    if isinstance(value, bool):
        raise GraphError(f"{_where(node, source)}: attribute {attr}={value!r} is not an integer")
    if isinstance(value, str):
        value = value.strip().strip('"')
    try:
        as_float = float(value)
    except (TypeError, ValueError):
        raise GraphError(f"{_where(node, source)}: attribute {attr}={value!r} is not an integer") from None
    if not math.isfinite(as_float) or as_float != int(as_float):
        raise GraphError(f"{_where(node, source)}: attribute {attr}={value!r} is not an integer")
    return int(as_float)


def _to_float(value: Any, attr: str, node: str, source: str | None) -> float:
    if isinstance(value, bool):
        raise GraphError(f"{_where(node, source)}: attribute {attr}={value!r} is not a number")
    if isinstance(value, str):
        value = value.strip().strip('"')
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise GraphError(f"{_where(node, source)}: attribute {attr}={value!r} is not a number") from None
    if not math.isfinite(out):
        raise GraphError(f"{_where(node, source)}: attribute {attr}={value!r} is not a finite number")
    return out


def _to_range(value: Any, node: str, source: str | None) -> tuple[float, float]:
    items = value
    if isinstance(value, str):
        items = [s for s in re.split(r"[,\s]+", value.strip().strip('"').strip("[]()")) if s]
    if not isinstance(items, (list, tuple)) or len(items) != 2:
        raise GraphError(f"{_where(node, source)}: attribute range={value!r} is not a pair 'lo, hi'")
    lo, hi = (_to_float(v, "range", node, source) for v in items)
    if not hi > lo:
        raise GraphError(f"{_where(node, source)}: attribute range={value!r} needs lo < hi")
    return lo, hi


def _to_choice(value: Any, attr: str, allowed: Sequence[str], node: str, source: str | None) -> str:
    kind = _unquote(value.strip()) if isinstance(value, str) else value
    if kind not in allowed:
        raise GraphError(f"{_where(node, source)}: {attr}={value!r} is not one of {', '.join(allowed)}")
    return kind


def _to_classes(value: Any, node: str, source: str | None) -> tuple[float, ...]:
    items = value
    if isinstance(value, str):
        items = [v for v in re.split(r"[,\s]+", value.strip().strip('"').strip("[]()")) if v]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        items = [value]
    if not isinstance(items, (list, tuple)):
        raise GraphError(f"{_where(node, source)}: attribute classes={value!r} is not a list of numbers")
    out = tuple(_to_float(v, "classes", node, source) for v in items)
    if len(out) < 2:
        raise GraphError(f"{_where(node, source)}: a categorical node needs at least 2 classes, got classes={value!r}")
    if len(set(out)) != len(out):
        raise GraphError(f"{_where(node, source)}: classes={value!r} repeats a class")
    return out


def validate_node_type(spec: NodeSpec, source: str | None = None) -> None:
    """Raise GraphError unless a node's ``type``, ``classes``, ``dim`` and normalisation agree."""
    where = _where(spec.name, source)
    if spec.type not in NODE_TYPES:
        raise GraphError(f"{where}: type={spec.type!r} is not one of {', '.join(NODE_TYPES)}")
    validate_transform(spec, source)
    if not spec.is_categorical:
        if spec.classes is not None:
            raise GraphError(f"{where}: classes are only allowed with type=categorical")
        return
    if not spec.classes or len(spec.classes) < 2:
        raise GraphError(f"{where}: type=categorical needs classes (at least 2 label values), e.g. classes=\"0, 1, 2\"")
    if spec.loc is not None or spec.scale is not None:
        raise GraphError(f"{where}: a categorical node takes no loc/scale/range (its labels map to class indices)")
    if spec.dim is not None and spec.dim != len(spec.classes):
        raise GraphError(f"{where}: dim={spec.dim} must equal the number of classes ({len(spec.classes)}) "
                         "for a categorical node (one logit per class)")


def validate_transform(spec: NodeSpec, source: str | None = None) -> None:
    """Raise GraphError unless a node's ``transform``, ``low``, ``high`` and ``loc`` agree."""
    where = _where(spec.name, source)
    t, lo, hi = spec.transform, spec.low, spec.high
    if t not in TRANSFORMS:
        raise GraphError(f"{where}: transform={t!r} is not one of {', '.join(TRANSFORMS)}")
    if t == "identity":
        if lo is not None or hi is not None:
            raise GraphError(f"{where}: low/high bound a transform; declare transform=log or transform=logit with them")
        return
    if spec.is_categorical:
        raise GraphError(f"{where}: a categorical node takes no transform (its latent block holds class logits)")
    if lo is None:
        raise GraphError(f"{where}: transform={t} needs low (the label's lower bound), e.g. low=0")
    if t == "logit":
        if hi is None:
            raise GraphError(f"{where}: transform=logit needs high (the label's upper bound) as well as low")
        if not hi > lo:
            raise GraphError(f"{where}: transform=logit needs low < high, got low={lo}, high={hi}")
    elif hi is not None:
        raise GraphError(f"{where}: transform=log takes only low (log(y - low)), not high")
    if spec.loc is not None and not (spec.loc > lo and (hi is None or spec.loc < hi)):
        raise GraphError(f"{where}: loc={spec.loc} must lie inside the transform's bounds "
                         f"({lo}, {hi if hi is not None else 'inf'})")


def make_spec(name: Any, attrs: Mapping[str, Any], source: str | None = None) -> NodeSpec:
    """Validate raw attributes (strings from DOT, numbers from YAML...) into a :class:`NodeSpec`."""
    if not isinstance(name, str) or not _NAME_RE.match(name) or name.lower() in _DOT_KEYWORDS:
        raise GraphError(
            f"invalid node name {name!r}" + (f" in {source}" if source else "")
            + ": use letters, digits and '_' (not starting with a digit, not a DOT keyword)"
        )
    unknown = [k for k in attrs if k not in NODE_ATTRIBUTES]
    if unknown:
        raise GraphError(
            f"{_where(name, source)}: unknown attribute(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(NODE_ATTRIBUTES)}"
        )
    kw: dict[str, Any] = {}
    if attrs.get("dim") is not None:
        kw["dim"] = _to_int(attrs["dim"], "dim", name, source)
        if kw["dim"] <= 0:
            raise GraphError(f"{_where(name, source)}: dim={kw['dim']} must be a positive integer")
    if attrs.get("range") is not None:
        if attrs.get("loc") is not None or attrs.get("scale") is not None:
            raise GraphError(f"{_where(name, source)}: give either range or loc/scale, not both")
        lo, hi = _to_range(attrs["range"], name, source)
        kw["loc"], kw["scale"] = (lo + hi) / 2, (hi - lo) / 2
    for key in ("loc", "scale"):
        if attrs.get(key) is not None:
            kw[key] = _to_float(attrs[key], key, name, source)
    if kw.get("scale") is not None and kw["scale"] <= 0:
        raise GraphError(f"{_where(name, source)}: scale={kw['scale']} must be positive")
    for key in ("description", "column"):
        value = attrs.get(key)
        if value is not None:
            if not isinstance(value, str):
                raise GraphError(f"{_where(name, source)}: attribute {key}={value!r} is not a string")
            value = _unquote(value)
            if key == "column" and not value:
                raise GraphError(f"{_where(name, source)}: column must not be empty")
            kw[key] = value
    for key, allowed in (("type", NODE_TYPES), ("transform", TRANSFORMS)):
        if attrs.get(key) is not None:
            kw[key] = _to_choice(attrs[key], key, allowed, name, source)
    if attrs.get("classes") is not None:
        kw["classes"] = _to_classes(attrs["classes"], name, source)
    for key in ("low", "high"):
        if attrs.get(key) is not None:
            kw[key] = _to_float(attrs[key], key, name, source)
    spec = NodeSpec(name=name, **kw)
    validate_node_type(spec, source)
    return spec


def _unquote(value: str) -> str:
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


# --------------------------------------------------------------------------------------- graph
class CausalGraph:
    """A validated causal DAG over named nodes, each owning a latent block of ``dim`` coordinates.

    Nodes are kept in a deterministic topological order (:attr:`nodes`): ties are broken by the order
    of declaration. Latent blocks, label vectors and adjacency rows all follow this order.
    """

    def __init__(
        self,
        specs: Sequence[NodeSpec],
        edges: Iterable[tuple[str, str]],
        *,
        default_dim: int = DEFAULT_DIM,
        name: str = "",
        source: str | None = None,
    ) -> None:
        where = f" in {source}" if source else ""
        if not specs:
            raise GraphError(f"empty graph{where}: declare at least one node")
        if isinstance(default_dim, bool) or not isinstance(default_dim, int) or default_dim <= 0:
            raise GraphError(f"default_dim={default_dim!r}{where} must be a positive integer")
        declared: dict[str, NodeSpec] = {}
        for spec in specs:
            if spec.name in declared:
                raise GraphError(f"duplicated node '{spec.name}'{where}")
            validate_node_type(spec, source)
            declared[spec.name] = spec
        g = nx.DiGraph()
        g.add_nodes_from(declared)
        for a, b in edges:
            for end in (a, b):
                if end not in declared:
                    raise GraphError(
                        f"edge {a} -> {b}{where} names undeclared node '{end}'; "
                        f"declared nodes: {', '.join(declared)}"
                    )
            if a == b:
                raise GraphError(f"self-loop {a} -> {a}{where}: a node cannot cause itself")
            g.add_edge(a, b)
        try:
            cycle = nx.find_cycle(g)
        except nx.NetworkXNoCycle:
            cycle = None
        if cycle:
            path = " -> ".join([u for u, _ in cycle] + [cycle[0][0]])
            raise GraphError(f"cycle{where}: {path}")
        order = {n: i for i, n in enumerate(declared)}
        self._nodes: list[str] = list(nx.lexicographical_topological_sort(g, key=order.__getitem__))
        self._specs: dict[str, NodeSpec] = {n: declared[n] for n in self._nodes}
        self._declared = list(declared)
        self._g = g
        self.default_dim = default_dim
        self.name = name
        self._index = {n: i for i, n in enumerate(self._nodes)}
        dims = self.dims
        starts = np.concatenate([[0], np.cumsum(dims)]).tolist()
        self._blocks = {n: slice(int(starts[i]), int(starts[i + 1])) for i, n in enumerate(self._nodes)}

    # ---- construction
    @classmethod
    def from_networkx(
        cls, g: nx.DiGraph, default_dim: int | None = None, name: str | None = None,
        source: str | None = None,
    ) -> "CausalGraph":
        """Build from a directed networkx graph; node attributes are :data:`NODE_ATTRIBUTES`.

        ``default_dim``/``name`` default to ``g.graph['default_dim']``/``g.graph['name']``.
        """
        if not isinstance(g, nx.DiGraph) or g.is_multigraph():
            raise GraphError(f"expected a networkx.DiGraph, got {type(g).__name__}")
        if default_dim is None:
            raw = g.graph.get("default_dim", DEFAULT_DIM)
            default_dim = _to_int(raw, "default_dim", "<graph>", source)
        specs = [make_spec(n, attrs, source) for n, attrs in g.nodes(data=True)]
        return cls(specs, list(g.edges()), default_dim=default_dim,
                   name=str(name if name is not None else g.graph.get("name", "")), source=source)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | None = None) -> "CausalGraph":
        """Build from the YAML/JSON mapping (see ``docs/graphs.md``); inverse of :meth:`to_dict`."""
        where = f" in {source}" if source else ""
        if not isinstance(d, Mapping):
            raise GraphError(f"expected a mapping with 'nodes'{where}, got {type(d).__name__}")
        unknown = [k for k in d if k not in (*GRAPH_ATTRIBUTES, "nodes", "edges")]
        if unknown:
            raise GraphError(f"unknown top-level key(s) {unknown}{where}; allowed: name, default_dim, nodes, edges")
        raw_nodes = d.get("nodes")
        items: list[tuple[Any, Mapping[str, Any]]] = []
        if isinstance(raw_nodes, Mapping):
            items = [(k, v if v is not None else {}) for k, v in raw_nodes.items()]
        elif isinstance(raw_nodes, list):
            for entry in raw_nodes:
                if isinstance(entry, str):
                    items.append((entry, {}))
                elif isinstance(entry, Mapping) and "name" in entry:
                    items.append((entry["name"], {k: v for k, v in entry.items() if k != "name"}))
                else:
                    raise GraphError(f"node entry {entry!r}{where} needs a 'name'")
        elif raw_nodes is not None:
            raise GraphError(f"'nodes'{where} must be a list or a mapping")
        specs, edges, seen = [], [], set()
        for name, attrs in items:
            if not isinstance(attrs, Mapping):
                raise GraphError(f"{_where(str(name), source)}: attributes must be a mapping, got {attrs!r}")
            if name in seen:
                raise GraphError(f"duplicated node '{name}'{where}")
            seen.add(name)
            attrs = dict(attrs)
            parents = attrs.pop("parents", None) or []
            if isinstance(parents, str) or not isinstance(parents, list):
                raise GraphError(f"{_where(str(name), source)}: parents must be a list, got {parents!r}")
            edges += [(p, name) for p in parents]
            specs.append(make_spec(name, attrs, source))
        for e in d.get("edges") or []:
            if not isinstance(e, (list, tuple)) or len(e) != 2:
                raise GraphError(f"edge {e!r}{where} must be a pair [parent, child]")
            edges.append((e[0], e[1]))
        default_dim = _to_int(d.get("default_dim", DEFAULT_DIM), "default_dim", "<graph>", source)
        return cls(specs, edges, default_dim=default_dim, name=str(d.get("name") or ""), source=source)

    @classmethod
    def load(cls, path: str | Path) -> "CausalGraph":
        """Read a graph file (``.dot``/``.gv``, ``.gml``, ``.yaml``/``.yml``, ``.json``) or a shipped
        graph by bare name (``"pendulum"``, ``"morphomnist"``, ``"causal_circuit"``)."""
        p = Path(path)
        if (not p.is_file()) and p.suffix == "" and len(p.parts) == 1:  # a bare name (even if a folder shares it)
            p = shipped_graph(str(path))
        if not p.exists():
            raise GraphError(f"graph file {str(path)!r} not found; shipped graphs: {', '.join(shipped_names())}")
        fmt = SUFFIXES.get(p.suffix.lower())
        if fmt is None:
            raise GraphError(f"{p}: unknown graph file type {p.suffix!r}; use one of {', '.join(SUFFIXES)}")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as err:
            raise GraphError(f"{p} is not a text file ({err.reason} at byte {err.start}); a graph file is UTF-8 text") from None
        except IsADirectoryError:
            raise GraphError(f"{p} is a folder, not a graph file") from None
        return {"dot": _read_dot, "gml": _read_gml, "yaml": _read_yaml, "json": _read_json}[fmt](text, str(p))

    # ---- export
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe mapping (used by the YAML/JSON files and inside checkpoints)."""
        nodes = {}
        for n in self._declared:
            attrs = self._specs[n].attributes()
            pa = self.parents(n)
            if pa:
                attrs["parents"] = pa
            nodes[n] = attrs
        return {"name": self.name, "default_dim": self.default_dim, "nodes": nodes}

    def to_networkx(self) -> nx.DiGraph:
        """A fresh ``networkx.DiGraph`` with declared attributes on the nodes (declaration order)."""
        g = nx.DiGraph(name=self.name, default_dim=self.default_dim)
        for n in self._declared:
            g.add_node(n, **self._specs[n].attributes())
        g.add_edges_from(self.edges)
        return g

    def to_dot(self) -> str:
        """DOT text readable by :meth:`load` (every attribute value is quoted)."""
        def q(v: Any) -> str:
            s = repr(v) if isinstance(v, float) else str(v)
            if '"' in s:
                raise GraphError(f"cannot write {s!r} to DOT: double quotes are not supported in DOT values")
            return f'"{s}"'

        lines = [f"digraph {q(self.name or 'G')} {{", f"  default_dim={q(self.default_dim)};"]
        for n in self._declared:
            attrs = self._specs[n].attributes()
            body = ", ".join(f"{k}={q(v)}" for k, v in attrs.items())
            lines.append(f"  {n}" + (f" [{body}]" if body else "") + ";")
        lines += [f"  {a} -> {b};" for a, b in self.edges]
        return "\n".join(lines + ["}"]) + "\n"

    def save(self, path: str | Path) -> Path:
        """Write the graph in the format given by the suffix; :meth:`load` reads it back equal."""
        p = Path(path)
        fmt = SUFFIXES.get(p.suffix.lower())
        if fmt is None:
            raise GraphError(f"{p}: unknown graph file type {p.suffix!r}; use one of {', '.join(SUFFIXES)}")
        if fmt == "dot":
            text = self.to_dot()
        elif fmt == "gml":
            g = self.to_networkx()
            text = "\n".join(nx.generate_gml(g)) + "\n"
        elif fmt == "yaml":
            import yaml

            text = yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)
        else:
            text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
        return p

    # ---- structure
    def without_edges(self) -> "CausalGraph":
        """The same nodes, blocks and normalisation with every edge removed (independent factors).

        Node order (and so the latent layout) is kept; used by the Diff-AE baseline.
        """
        return CausalGraph([self._specs[n] for n in self._nodes], [], default_dim=self.default_dim, name=self.name)

    @property
    def nodes(self) -> list[str]:
        """Node names in topological order (ties: declaration order)."""
        return list(self._nodes)

    @property
    def specs(self) -> dict[str, NodeSpec]:
        return dict(self._specs)

    @property
    def edges(self) -> list[tuple[str, str]]:
        """Edges ``(parent, child)`` sorted by (child, parent) node order."""
        return sorted(self._g.edges(), key=lambda e: (self._index[e[1]], self._index[e[0]]))

    @property
    def n_nodes(self) -> int:
        return len(self._nodes)

    @property
    def dims(self) -> list[int]:
        """Block size of each node: its ``dim``, else ``len(classes)`` (categorical), else ``default_dim``."""
        return [s.dim or (len(s.classes) if s.is_categorical else self.default_dim)
                for s in (self._specs[n] for n in self._nodes)]

    @property
    def categorical_nodes(self) -> list[str]:
        """Nodes declared ``type=categorical``, in node order."""
        return [n for n in self._nodes if self._specs[n].is_categorical]

    def is_categorical(self, name: str) -> bool:
        return self._specs[self._check(name)].is_categorical

    def classes(self, name: str) -> tuple[float, ...]:
        """The label values of a categorical node (GraphError for a continuous one)."""
        s = self._specs[self._check(name)]
        if not s.is_categorical:
            raise GraphError(f"node '{name}' is continuous; it has no classes")
        return tuple(s.classes)

    def class_index(self, name: str, values: Any) -> Any:
        """Label value(s) of a categorical node -> class indices ``0..K-1`` (same type: numpy array or
        torch tensor, float; NaN stays NaN). A value that is not one of the classes raises DataError."""
        classes = self.classes(name)
        is_torch = not isinstance(values, (np.ndarray, float, int, np.floating, np.integer))
        arr = np.asarray(values.detach().cpu().numpy() if is_torch else values, dtype=np.float64)
        out = np.full(arr.shape, np.nan)
        known = np.zeros(arr.shape, dtype=bool)
        for k, c in enumerate(classes):
            hit = np.abs(arr - c) <= 1e-6 * max(1.0, abs(c))
            out[hit], known = k, known | hit
        bad = ~known & ~np.isnan(arr)
        if bad.any():
            raise DataError(f"node '{name}': value {float(arr[bad].flat[0])!r} is not one of its classes "
                            f"{', '.join(f'{c:g}' for c in classes)}")
        if is_torch:
            import torch

            return torch.as_tensor(out, dtype=values.dtype if values.is_floating_point() else torch.float32,
                                   device=values.device)
        return out if out.ndim else float(out)

    def class_value(self, name: str, index: Any) -> Any:
        """Class indices (rounded, clamped to ``0..K-1``; NaN stays NaN) -> label values, same type."""
        classes = self.classes(name)
        is_torch = not isinstance(index, (np.ndarray, float, int, np.floating, np.integer))
        arr = np.asarray(index.detach().cpu().numpy() if is_torch else index, dtype=np.float64)
        idx = np.clip(np.nan_to_num(np.round(arr), nan=0.0), 0, len(classes) - 1).astype(np.int64)
        out = np.where(np.isnan(arr), np.nan, np.asarray(classes, dtype=np.float64)[idx])
        if is_torch:
            import torch

            return torch.as_tensor(out, dtype=index.dtype if index.is_floating_point() else torch.float32,
                                   device=index.device)
        return out if out.ndim else float(out)

    @property
    def latent_dim(self) -> int:
        return int(sum(self.dims))

    def _check(self, name: str) -> str:
        if name not in self._index:
            raise GraphError(f"unknown node '{name}'; nodes: {', '.join(self._nodes)}")
        return name

    def block(self, name: str) -> slice:
        """Columns of node ``name`` in a flat latent ``(B, D)``."""
        return self._blocks[self._check(name)]

    def index(self, name: str) -> int:
        return self._index[self._check(name)]

    def _sorted(self, names: Iterable[str]) -> list[str]:
        return sorted(names, key=self._index.__getitem__)

    def parents(self, name: str) -> list[str]:
        return self._sorted(self._g.predecessors(self._check(name)))

    def children(self, name: str) -> list[str]:
        return self._sorted(self._g.successors(self._check(name)))

    def descendants(self, name: str) -> list[str]:
        return self._sorted(nx.descendants(self._g, self._check(name)))

    def ancestors(self, name: str) -> list[str]:
        return self._sorted(nx.ancestors(self._g, self._check(name)))

    @property
    def roots(self) -> list[str]:
        return [n for n in self._nodes if self._g.in_degree(n) == 0]

    def adjacency(self) -> np.ndarray:
        """``(n, n)`` int array, ``A[i, j] = 1`` iff ``nodes[i] -> nodes[j]``."""
        a = np.zeros((self.n_nodes, self.n_nodes), dtype=np.int64)
        for u, v in self._g.edges():
            a[self._index[u], self._index[v]] = 1
        return a

    @property
    def label_columns(self) -> list[str]:
        """Label-table column of each node, in node order."""
        return [self._specs[n].label_column for n in self._nodes]

    # ---- labels
    def has_normalisation(self, name: str) -> bool:
        s = self._specs[self._check(name)]
        return s.is_categorical or (s.loc is not None and s.scale is not None)

    def _loc_scale(self) -> tuple[np.ndarray, np.ndarray]:
        missing = [n for n in self._nodes if not self.has_normalisation(n)]
        if missing:
            raise GraphError(
                f"node(s) {', '.join(missing)} have no label normalisation: declare loc/scale or range in "
                "the graph file, or estimate them with CausalGraph.with_label_stats(...)"
            )
        specs = [self._specs[n] for n in self._nodes]  # categorical nodes: identity here, classes below
        return (np.array([0.0 if s.is_categorical else s.loc for s in specs], dtype=np.float64),
                np.array([1.0 if s.is_categorical else s.scale for s in specs], dtype=np.float64))

    def _affine(self, x: Any, inverse: bool) -> Any:
        loc, scale = self._loc_scale()
        if x.shape[-1] != self.n_nodes:
            raise DataError(f"labels have {x.shape[-1]} columns, the graph has {self.n_nodes} nodes ({', '.join(self._nodes)})")
        if isinstance(x, np.ndarray):
            out = x * scale + loc if inverse else (x - loc) / scale
        else:
            import torch

            loc_t = torch.as_tensor(loc, dtype=x.dtype, device=x.device)
            scale_t = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
            out = x * scale_t + loc_t if inverse else (x - loc_t) / scale_t
        for n in self.categorical_nodes:  # label value <-> class index
            j = self._index[n]
            col = x[..., j]
            out[..., j] = self.class_value(n, col) if inverse else self.class_index(n, col)
        return out

    def normalise(self, labels: Any) -> Any:
        """``(B, n_nodes)`` label units -> normalised ``(y - loc) / scale`` (same type; NaN stays NaN)."""
        return self._affine(labels, inverse=False)

    def denormalise(self, values: Any) -> Any:
        """Inverse of :meth:`normalise`, ``(B, n_nodes)``."""
        return self._affine(values, inverse=True)

    def normalise_value(self, name: str, v: Any) -> Any:
        """Normalise label-unit value(s) ``v`` (number, array or tensor) of one node (a categorical
        node: the class index)."""
        if not self.has_normalisation(name):
            self._loc_scale()
        s = self._specs[name]
        if s.is_categorical:
            return self.class_index(name, v)
        return (v - s.loc) / s.scale

    def denormalise_value(self, name: str, v: Any) -> Any:
        if not self.has_normalisation(name):
            self._loc_scale()
        s = self._specs[name]
        if s.is_categorical:
            return self.class_value(name, v)
        return v * s.scale + s.loc

    # ---- latent units (the label transforms)
    @property
    def transformed_nodes(self) -> list[str]:
        """Nodes with a label ``transform`` other than identity, in node order."""
        return [n for n in self._nodes if self._specs[n].transform != "identity"]

    def _transform_params(self, name: str) -> tuple[str, float, float, float, float]:
        """``(kind, low, high, T(loc), scale * T'(loc))`` of a transformed node."""
        if not self.has_normalisation(name):
            self._loc_scale()
        s = self._specs[name]
        lo, hi = float(s.low), (float(s.high) if s.high is not None else math.inf)
        if not (s.loc > lo and s.loc < hi):
            raise GraphError(f"node '{name}': loc={s.loc} lies outside its transform's bounds ({lo}, {hi})")
        if s.transform == "log":
            return "log", lo, hi, math.log(s.loc - lo), s.scale / (s.loc - lo)
        p = (s.loc - lo) / (hi - lo)
        return "logit", lo, hi, math.log(p / (1 - p)), s.scale * (hi - lo) / ((s.loc - lo) * (hi - s.loc))

    def _transform(self, name: str, y: Any, inverse: bool) -> Any:
        kind, lo, hi, t_loc, t_scale = self._transform_params(name)
        if isinstance(y, np.ndarray) or not hasattr(y, "clamp"):
            y = np.asarray(y, dtype=np.float64)
            clip, log, exp, sig = np.clip, np.log, np.exp, (lambda v: 1 / (1 + np.exp(-v)))
        else:
            import torch

            clip, log, exp, sig = torch.clamp, torch.log, torch.exp, torch.sigmoid
        if inverse:
            v = y * t_scale + t_loc
            return lo + exp(v) if kind == "log" else lo + (hi - lo) * sig(v)
        if kind == "log":
            eps = TRANSFORM_EPS * self._specs[name].scale
            return (log(clip(y - lo, eps, None)) - t_loc) / t_scale
        p = clip((y - lo) / (hi - lo), TRANSFORM_EPS, 1 - TRANSFORM_EPS)
        return (log(p) - log(1 - p) - t_loc) / t_scale

    def _latent_units(self, x: Any, inverse: bool) -> Any:
        out = self._affine(x, inverse=inverse)
        for n in self.transformed_nodes:
            j = self._index[n]
            out[..., j] = self._transform(n, x[..., j], inverse=inverse)
        return out

    def to_latent(self, labels: Any) -> Any:
        """``(B, n_nodes)`` label units -> the units of the latent blocks: :meth:`normalise`, with each
        transformed node's column ``(T(y) - T(loc)) / (scale T'(loc))`` (same type; NaN stays NaN)."""
        return self._latent_units(labels, inverse=False)

    def from_latent(self, values: Any) -> Any:
        """Inverse of :meth:`to_latent`, ``(B, n_nodes)``."""
        return self._latent_units(values, inverse=True)

    def to_latent_value(self, name: str, v: Any) -> Any:
        """One node's label-unit value(s) ``v`` -> latent units (:meth:`normalise_value` unless the
        node has a transform)."""
        if self._specs[self._check(name)].transform == "identity":
            return self.normalise_value(name, v)
        return self._transform(name, v, inverse=False)

    def from_latent_value(self, name: str, v: Any) -> Any:
        """Inverse of :meth:`to_latent_value`."""
        if self._specs[self._check(name)].transform == "identity":
            return self.denormalise_value(name, v)
        return self._transform(name, v, inverse=True)

    def with_label_stats(self, loc: Any, scale: Sequence[float] | None = None) -> "CausalGraph":
        """Copy in which nodes without declared ``loc``/``scale`` get data-estimated ones.

        Either ``with_label_stats(loc, scale)`` with per-node sequences in node order, or
        ``with_label_stats(table)`` with a label table (a DataFrame with the label columns, or a
        ``(N, n_nodes)`` array/tensor in node order; NaN ignored): loc = mean, scale = std.
        """
        if scale is None:
            loc, scale = self._estimate(loc)
        loc, scale = list(map(float, loc)), list(map(float, scale))
        if len(loc) != self.n_nodes or len(scale) != self.n_nodes:
            raise DataError(f"need {self.n_nodes} loc and scale values (nodes {', '.join(self._nodes)})")
        specs = []
        for n in self._declared:
            s, i = self._specs[n], self._index[n]
            if not self.has_normalisation(n):
                ls, ss = (s.loc if s.loc is not None else loc[i]), (s.scale if s.scale is not None else scale[i])
                if not (math.isfinite(ls) and math.isfinite(ss) and ss > 0):
                    raise DataError(f"node '{n}': estimated loc={ls}, scale={ss} are unusable (need finite, scale > 0)")
                s = dataclasses.replace(s, loc=ls, scale=ss)
            specs.append(s)
        return CausalGraph(specs, self.edges, default_dim=self.default_dim, name=self.name)

    def _estimate(self, table: Any) -> tuple[np.ndarray, np.ndarray]:
        try:
            import pandas as pd
        except ImportError:  # pragma: no cover
            pd = None
        if pd is not None and isinstance(table, pd.DataFrame):
            arr = _numeric_labels(self, table, drop=False)[0].to_numpy(dtype=np.float64)
        else:
            arr = np.asarray(table.detach().cpu() if hasattr(table, "detach") else table, dtype=np.float64)
        with np.errstate(all="ignore"):
            return np.nanmean(arr, axis=0), np.nanstd(arr, axis=0)

    def to_dowhy_frame(self, frame: Any) -> Any:
        """A label DataFrame (columns named by node) as DoWhy wants it: categorical nodes' columns as
        strings (DoWhy's representation of categorical data, e.g. ``"3"``), the others float.
        A categorical value outside the node's classes raises DataError; NaN stays missing."""
        out = frame.copy()
        for n in self.categorical_nodes:
            if n in out.columns:
                idx = self.class_index(n, out[n].to_numpy(dtype=np.float64))
                vals = self.class_value(n, idx)
                out[n] = [None if np.isnan(v) else f"{v:g}" for v in vals]
                out[n] = out[n].astype(object)
        return out

    # ---- misc
    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CausalGraph):
            return NotImplemented
        return (self.name, self.default_dim, self._declared, self._specs, set(self._g.edges())) == (
            other.name, other.default_dim, other._declared, other._specs, set(other._g.edges()))

    def __hash__(self) -> int:
        return hash((self.name, tuple(self._nodes), tuple(self.edges)))

    def __repr__(self) -> str:
        edges = ", ".join(f"{a}->{b}" for a, b in self.edges)
        return f"CausalGraph({self.name!r}, nodes={self._nodes}, dims={self.dims}, edges=[{edges}])"


# --------------------------------------------------------------------------------------- readers
def _read_dot(text: str, source: str) -> CausalGraph:
    import pydot
    from pydot import dot_parser
    from pyparsing import ParseException

    try:
        graphs = list(dot_parser.GraphParser.parser.parse_string(text))
    except ParseException as err:
        raise GraphError(f"{source}, line {err.lineno}, column {err.col}: DOT parse error: {err.msg} "
                         f"near {err.line.strip()!r}") from None
    if len(graphs) != 1:
        raise GraphError(f"{source}: expected one graph, found {len(graphs)}")
    dot: pydot.Dot = graphs[0]
    if dot.get_type() != "digraph":
        raise GraphError(f"{source}: the graph must be a 'digraph' (directed), got '{dot.get_type()}'")
    if dot.get_subgraphs():
        raise GraphError(f"{source}: subgraphs are not supported; declare nodes and edges at top level")
    gattrs = {k: _unquote(v) if isinstance(v, str) else v for k, v in dot.get_attributes().items()}
    bad = [k for k in gattrs if k != "default_dim"]
    if bad:
        raise GraphError(f"{source}: unknown graph attribute(s) {bad}; allowed: default_dim")
    attrs: dict[str, dict[str, Any]] = {}
    for node in dot.get_nodes():
        name = _unquote(node.get_name())
        if name in ("node", "edge", "graph"):
            raise GraphError(f"{source}: default-attribute statements ('{name} [...]') are not supported")
        new = {k: v for k, v in node.get_attributes().items()}
        old = attrs.setdefault(name, {})
        for k, v in new.items():
            if k in old and old[k] != v:
                raise GraphError(f"{source}: node '{name}' is declared twice with conflicting {k}: {old[k]} vs {v}")
            old[k] = v
    edges = []
    for e in dot.get_edges():
        if e.get_attributes():
            raise GraphError(f"{source}: edge attributes are not supported (edge {e.get_source()} -> {e.get_destination()})")
        a, b = (_unquote(str(x)) for x in (e.get_source(), e.get_destination()))
        for end in (a, b):
            attrs.setdefault(end, {})
        edges.append((a, b))
    specs = [make_spec(n, a, source) for n, a in attrs.items()]
    default_dim = _to_int(gattrs.get("default_dim", DEFAULT_DIM), "default_dim", "<graph>", source)
    name = _unquote(dot.get_name()) if dot.get_name() not in ("", "G") else ""
    return CausalGraph(specs, edges, default_dim=default_dim, name=name, source=source)


def _read_gml(text: str, source: str) -> CausalGraph:
    try:
        g = nx.parse_gml(text)
    except nx.NetworkXError as err:
        raise GraphError(f"{source}: GML parse error: {err}") from None
    if not g.is_directed():
        raise GraphError(f"{source}: the GML graph must be directed ('directed 1')")
    if g.is_multigraph():
        raise GraphError(f"{source}: multigraphs (repeated edges) are not supported")
    return CausalGraph.from_networkx(g, source=source)


class _UniqueKeyLoader:
    """A yaml SafeLoader that refuses duplicated mapping keys (created lazily to import yaml late)."""

    cls = None

    @classmethod
    def get(cls):
        if cls.cls is None:
            import yaml

            class Loader(yaml.SafeLoader):
                def construct_mapping(self, node, deep=False):
                    keys = set()
                    for key_node, _ in node.value:
                        key = self.construct_object(key_node, deep=deep)
                        if key in keys:
                            raise yaml.constructor.ConstructorError(
                                None, None, f"duplicated key {key!r}", key_node.start_mark)
                        keys.add(key)
                    return super().construct_mapping(node, deep=deep)

            cls.cls = Loader
        return cls.cls


def _read_yaml(text: str, source: str) -> CausalGraph:
    import yaml

    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader.get())
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise GraphError(f"{source}{line}: YAML error: {err.problem or err.context}") from None
    except yaml.YAMLError as err:
        raise GraphError(f"{source}: YAML error: {err}") from None
    return CausalGraph.from_dict(data, source=source)


def _read_json(text: str, source: str) -> CausalGraph:
    def pairs(items):
        keys = [k for k, _ in items]
        dup = sorted({k for k in keys if keys.count(k) > 1})
        if dup:
            raise GraphError(f"{source}: duplicated key(s) {dup} (a duplicated node?)")
        return dict(items)

    try:
        data = json.loads(text, object_pairs_hook=pairs)
    except json.JSONDecodeError as err:
        raise GraphError(f"{source}, line {err.lineno}, column {err.colno}: JSON error: {err.msg}") from None
    return CausalGraph.from_dict(data, source=source)


# --------------------------------------------------------------------------------------- shipped
def shipped_names() -> list[str]:
    return sorted(p.stem for p in SHIPPED_DIR.glob("*.dot"))


def shipped_graph(name: str) -> Path:
    """Path of a graph shipped with the package (``pendulum``, ``morphomnist``, ``causal_circuit``)."""
    p = SHIPPED_DIR / f"{name}.dot"
    if not p.exists():
        raise GraphError(f"no shipped graph named {name!r}; shipped graphs: {', '.join(shipped_names())}")
    return p


# --------------------------------------------------------------------------------------- render
INTERVENED_COLOUR = "#e4572e"
DESCENDANT_COLOUR = "#f3a712"
HIGHLIGHT_COLOUR = "#7fb7e6"


def render(
    graph: CausalGraph,
    path: str | Path,
    highlight: Iterable[str] = (),
    intervened: Iterable[str] = (),
) -> Path:
    """Draw ``graph`` to ``path`` (format from the suffix: .png, .svg, .pdf) with graphviz.

    Node labels show the description, name and dim. ``intervened`` nodes are filled in one colour and
    their descendants (what a ``do()`` recomputes) in another; ``highlight`` nodes get a third. A
    legend lists the colours used. Returns the written path.
    """
    import graphviz

    p = Path(path)
    fmt = p.suffix.lower().lstrip(".")
    if fmt not in ("png", "svg", "pdf"):
        raise GraphError(f"{p}: cannot render to {p.suffix!r}; use .png, .svg or .pdf")
    intervened = [graph._check(n) for n in intervened]
    highlight = [graph._check(n) for n in highlight]
    touched = {d for n in intervened for d in graph.descendants(n)} - set(intervened)
    dot = graphviz.Digraph(graph.name or "G", format=fmt)
    dot.attr(rankdir="TB", fontname="Helvetica")
    dot.attr("node", shape="box", style="rounded,filled", fillcolor="white", fontname="Helvetica")
    for n in graph.nodes:
        s = graph.specs[n]
        label = (f"{s.description}\n" if s.description else "") + f"{n}  (dim {graph.dims[graph.index(n)]})"
        colour = (INTERVENED_COLOUR if n in intervened else DESCENDANT_COLOUR if n in touched
                  else HIGHLIGHT_COLOUR if n in highlight else "white")
        dot.node(n, label=label, fillcolor=colour)
    for a, b in graph.edges:
        dot.edge(a, b)
    legend = [(c, t) for c, t, used in ((INTERVENED_COLOUR, "intervened (do)", intervened),
                                        (DESCENDANT_COLOUR, "recomputed descendant", touched),
                                        (HIGHLIGHT_COLOUR, "highlighted", highlight)) if used]
    if legend:
        with dot.subgraph(name="cluster_legend") as lg:
            lg.attr(label="legend", style="dashed", fontname="Helvetica")
            for i, (c, t) in enumerate(legend):
                lg.node(f"__legend{i}", label=t, fillcolor=c, shape="box")
    p.parent.mkdir(parents=True, exist_ok=True)
    try:
        p.write_bytes(dot.pipe(format=fmt))
    except graphviz.ExecutableNotFound as err:
        raise GraphError(f"cannot render {p}: the graphviz 'dot' program is not installed ({err})") from None
    return p


# --------------------------------------------------------------------------------------- check
@dataclass
class MarkovViolation:
    """A local Markov condition ``node _||_ other | parents(node)`` rejected by the data."""

    node: str
    other: str
    given: list[str]
    p_value: float

    def __str__(self) -> str:
        given = f" given {{{', '.join(self.given)}}}" if self.given else ""
        return f"{self.node} is not independent of {self.other}{given} (p = {self.p_value:.3g})"


@dataclass
class GraphCheckReport:
    """Outcome of :func:`check`.

    ``falsified`` is DoWhy's permutation verdict (None when DoWhy cannot evaluate the graph);
    ``violations`` are the local Markov conditions the data rejects at ``significance_level``.
    :attr:`rejected` joins both: the data contradicts the graph when either says so, and the
    headline (first line of ``summary``) and the CLI's exit status follow it.
    """

    falsified: bool | None
    falsifiable: bool | None
    summary: str
    violations: list[MarkovViolation]
    n_tests: int
    n_rows: int
    n_dropped: int
    lmc_p_value: float | None = None
    dowhy_text: str = ""
    significance_level: float = 0.05

    @property
    def rejected(self) -> bool:
        """True when the data contradicts the graph at the significance level: a local Markov
        condition is violated, or DoWhy's permutation test falsifies the graph."""
        return bool(self.violations) or bool(self.falsified)

    def __str__(self) -> str:
        lines = [self.summary, f"rows used: {self.n_rows}, rows dropped for missing labels: {self.n_dropped}"]
        if self.violations:
            lines.append(f"local Markov violations ({len(self.violations)} of {self.n_tests} tests):")
            lines += [f"  - {v}" for v in self.violations]
        else:
            lines.append(f"no local Markov violations in {self.n_tests} tests")
        return "\n".join(lines)


def load_label_table(path: str | Path) -> "Any":
    """Read a CSV label table into a ``pandas.DataFrame`` (DataError when missing or unreadable);
    spaces around headers and cells are ignored (:func:`causaldiffae.data.folder.read_label_csv`)."""
    from causaldiffae.data.folder import read_label_csv

    return read_label_csv(path)


def _numeric_labels(graph: CausalGraph, table: Any, drop: bool = True) -> tuple[Any, int]:
    """Columns of ``table`` for the graph's labels, renamed to node names, numeric; with ``drop``
    only the rows with every label present and finite. Returns ``(frame, n_dropped)``.
    """
    import pandas as pd

    cols = graph.label_columns
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise DataError(f"label table lacks column(s) {', '.join(missing)}; "
                        f"present: {', '.join(map(str, table.columns))}")
    frame = table[cols].copy()
    for c in cols:
        numeric = pd.to_numeric(frame[c], errors="coerce")
        bad = frame[c][numeric.isna() & frame[c].notna()]
        if len(bad):
            raise DataError(f"label column '{c}' has non-numeric value {bad.iloc[0]!r} (row {bad.index[0]})")
        frame[c] = numeric.astype(np.float64)
    frame.columns = graph.nodes
    if not drop:
        return frame, 0
    complete = frame.notna().all(axis=1) & np.isfinite(frame.to_numpy()).all(axis=1)
    return frame[complete].reset_index(drop=True), int((~complete).sum())


def check(
    graph: CausalGraph,
    table: Any,
    n_permutations: int = 20,
    significance_level: float = 0.05,
    significance_ci: float = 0.05,
    max_rows: int | None = 1000,
    independence_test: Callable[..., float] | None = None,
    conditional_independence_test: Callable[..., float] | None = None,
    seed: int = 0,
) -> GraphCheckReport:
    """Test the DAG against a label table with DoWhy's permutation-based falsification.

    ``table`` is a ``pandas.DataFrame`` with the graph's label columns (rows with a missing label are
    dropped and counted; at most ``max_rows`` rows are used, chosen at random with ``seed``). Runs
    ``dowhy.gcm.falsify.falsify_graph`` with ``n_permutations`` random node permutations and kernel
    (conditional) independence tests unless others are given. Raises DataError for missing columns,
    non-numeric values or too few complete rows.
    """
    from dowhy.gcm import falsify

    frame, dropped = _numeric_labels(graph, table)
    if len(frame) < 10:
        raise DataError(f"only {len(frame)} complete label rows ({dropped} dropped for missing labels); need at least 10")
    if max_rows is not None and len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    # DoWhy's kernel test otherwise runs in a joblib pool whose start-up dominates small tables.
    from functools import partial

    from dowhy.gcm.independence_test import kernel_based

    kernel = partial(kernel_based, bootstrap_n_jobs=1)
    frame = graph.to_dowhy_frame(frame)  # categorical nodes as strings: DoWhy one-hot encodes them
    kw = {"independence_test": independence_test or kernel,
          "conditional_independence_test": conditional_independence_test or kernel}
    nxg = nx.DiGraph()
    nxg.add_nodes_from(graph.nodes)
    nxg.add_edges_from(graph.edges)
    state = np.random.get_state()
    np.random.seed(seed)
    try:
        res = falsify.falsify_graph(
            nxg, frame, n_permutations=n_permutations, significance_level=significance_level,
            significance_ci=significance_ci, show_progress_bar=False, n_jobs=1, **kw)
    finally:
        np.random.set_state(state)
    C = falsify.FalsifyConst
    lmc = res.summary.get(C.VALIDATE_LMC, {})
    violations = [
        MarkovViolation(node=str(a), other=str(b), given=graph.parents(str(a)), p_value=float(p))
        for (a, b), (p, violated) in lmc.get(C.LOCAL_VIOLATION_INSIGHT, {}).items() if violated
    ]
    n_tests = int(lmc.get(C.N_TESTS, 0))
    k = len(violations)
    if k:
        headline = (f"REJECTED: violations found: the data contradicts {k} of the {n_tests} local Markov conditions "
                    f"the graph implies, at significance {significance_level}.")
    elif res.can_evaluate and res.falsified:
        headline = (f"REJECTED: DoWhy's permutation test falsifies the graph at significance {significance_level}.")
    elif n_tests:
        headline = (f"Not rejected: the data contradicts none of the {n_tests} local Markov conditions the graph "
                    f"implies, at significance {significance_level}.")
    else:
        headline = "Not tested: the graph implies no conditional independences the data could contradict."
    if not res.can_evaluate:
        details = ("DoWhy cannot evaluate this graph: it implies no conditional independences to test "
                   "(for example, every pair of nodes is connected).")
        p_lmc = None
    else:
        p_lmc = float(lmc[C.P_VALUE])
        p_tpa = float(res.summary[C.VALIDATE_TPA][C.P_VALUE])
        n_perm = len(res.summary[C.VALIDATE_TPA][C.PERM_VIOLATIONS])
        verdict = "falsifies" if res.falsified else "does not falsify"
        informative = (
            f"the graph is informative: only {p_tpa:.0%} of {n_perm} random node permutations imply the same "
            "independences" if res.falsifiable else
            f"the graph is not informative: {p_tpa:.0%} of {n_perm} random node permutations imply the same "
            "independences, so the data cannot tell it apart from them")
        details = (
            f"DoWhy's permutation test {verdict} it: a fraction {p_lmc:.2f} of random node permutations violate "
            f"as few conditions or fewer; {informative}.")
    summary = f"{headline}\n{details}"
    return GraphCheckReport(
        falsified=res.falsified, falsifiable=res.falsifiable, summary=summary, violations=violations,
        n_tests=n_tests, n_rows=len(frame), n_dropped=dropped, lmc_p_value=p_lmc, dowhy_text=repr(res),
        significance_level=significance_level)
