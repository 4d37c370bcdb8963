"""NAS-Bench-201 as a tabular objective: every one of the 5^6 = 15,625 cells is a table lookup.

A cell has 6 edges (in arch-string order: 1<-0, 2<-0, 2<-1, 3<-0, 3<-1, 3<-2),
each one of 5 operations `OPS`. A cell is identified by its *code*, the base-5
number of its op indices with the first edge most significant:
`code = sum(op[e] * 5 ** (5 - e))`. The table is re-indexed by code once, so a
batch lookup is one gather (`values(metric)[codes]`), which also works on
device arrays inside `jit`/`vmap` (see `experiments/nasbench201_table.py`).

The search signal is `{dataset}_val_12ep` (validation accuracy after the
12-epoch schedule, as in the NAS-Bench-201 paper's search baselines); the
reported number is `{dataset}_test_200ep` (test accuracy after 200 epochs).

The data file is not part of the package. It is found, in order, at the `path`
argument, the `VHJAX_NB201` environment variable, or the first
`shared/data/nasbench201/nb201.csv` found walking up from the current directory
and from this package's directory.
"""

from __future__ import annotations

import csv
import functools
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

OPS = ("none", "skip_connect", "nor_conv_1x1", "nor_conv_3x3", "avg_pool_3x3")
EDGES = ((1, 0), (2, 0), (2, 1), (3, 0), (3, 1), (3, 2))  # (to node, from node), arch-string order
NUM_CELLS = len(OPS) ** len(EDGES)
DATASETS = ("cifar10", "cifar100", "imagenet16")
ENV_VAR = "VHJAX_NB201"
RELATIVE_PATH = os.path.join("shared", "data", "nasbench201", "nb201.csv")
_PLACE_VALUES = len(OPS) ** np.arange(len(EDGES) - 1, -1, -1)


# ----------------------------------------------------------------------------- codes


def arch_to_ops(arch: str) -> tuple[int, ...]:
    """Op indices of the 6 edges of an arch string `|op~0|+|op~0|op~1|+|op~0|op~1|op~2|`."""
    from vhjax.search.space import nasbench201_from_arch_string

    decoded = nasbench201_from_arch_string(arch)  # edge name -> op, in arch-string order
    return tuple(OPS.index(op) for op in decoded.values())


def ops_to_arch(ops: Sequence[int]) -> str:
    """Arch string of 6 op indices (inverse of `arch_to_ops`)."""
    names = [OPS[int(i)] for i in ops]
    nodes, edge = [], 0
    for to_node in (1, 2, 3):
        nodes.append("|" + "|".join(f"{names[edge + j]}~{j}" for j in range(to_node)) + "|")
        edge += to_node
    return "+".join(nodes)


def ops_to_code(ops) -> np.ndarray:
    """Base-5 code(s) of op indices `(..., 6)`."""
    ops = np.asarray(ops)
    return (ops * _PLACE_VALUES).sum(axis=-1)


def code_to_ops(code) -> np.ndarray:
    """Op indices `(..., 6)` of code(s)."""
    code = np.asarray(code)[..., None]
    return (code // _PLACE_VALUES) % len(OPS)


def u_to_code(u):
    """Codes of encoded cells `u (..., 6)` in [0, 1]^6 (`floor(u * 5)`, as the search spaces do).

    Works on NumPy and on JAX arrays (jittable).
    """
    import jax.numpy as jnp

    xp = np if isinstance(u, np.ndarray) else jnp
    ops = xp.clip(xp.floor(u * len(OPS)), 0, len(OPS) - 1).astype(xp.int32)
    return (ops * xp.asarray(_PLACE_VALUES, dtype=xp.int32)).sum(axis=-1)


def params_to_ops(params: Any) -> tuple[int, ...]:
    """Op indices of one candidate: an arch string, `{'arch': str}`, or a dict of 6 edge ops.

    A dict of edge ops is read in edge order: keys naming an edge `'i<-j'` (or
    containing `i<-j`, `{i}_{j}`...) are matched to `EDGES`; otherwise the
    dict's own order is used.
    """
    if isinstance(params, str):
        return arch_to_ops(params)
    if isinstance(params, Mapping):
        if "arch" in params:
            return arch_to_ops(params["arch"])
        items = [(key, value) for key, value in params.items() if value in OPS]
        if len(items) != len(EDGES):
            raise ValueError(
                f"a NAS-Bench-201 candidate needs 6 edge ops from {OPS} (or an 'arch' string); "
                f"got {dict(params)}"
            )
        ordered = _order_edges(items)
        return tuple(OPS.index(value) for _, value in ordered)
    ops = tuple(int(i) for i in params)
    if len(ops) != len(EDGES) or not all(0 <= i < len(OPS) for i in ops):
        raise ValueError(f"op indices must be 6 integers in [0, {len(OPS)}); got {params!r}")
    return ops


def _order_edges(items: list[tuple[str, str]]) -> list[tuple[str, str]]:
    def edge_of(key: str) -> int | None:
        for index, (to_node, from_node) in enumerate(EDGES):
            if f"{to_node}<-{from_node}" in key or key.endswith(f"{from_node}_{to_node}") \
                    or key.endswith(f"{from_node}->{to_node}"):
                return index
        return None

    positions = [edge_of(str(key)) for key, _ in items]
    if None in positions or sorted(positions) != list(range(len(EDGES))):
        return items
    return [item for _, item in sorted(zip(positions, items))]


# ----------------------------------------------------------------------------- file


def find_csv(path: str | os.PathLike | None = None) -> Path:
    """Locate nb201.csv (argument, $VHJAX_NB201, or shared/data/... walking up); clear error if absent."""
    looked = []
    if path is not None:
        candidate = Path(path)
        if candidate.is_file():
            return candidate
        raise FileNotFoundError(f"NAS-Bench-201 table not found at path={os.fspath(path)!r}")
    if os.environ.get(ENV_VAR):
        candidate = Path(os.environ[ENV_VAR])
        if candidate.is_file():
            return candidate
        looked.append(f"${ENV_VAR}={candidate}")
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for directory in (start, *start.parents):
            candidate = directory / RELATIVE_PATH
            looked.append(str(candidate))
            if candidate.is_file():
                return candidate
    raise FileNotFoundError(
        "NAS-Bench-201 table nb201.csv not found; pass path=..., set $VHJAX_NB201, or put it at "
        f"shared/data/nasbench201/nb201.csv above the working directory. Looked at: {looked}"
    )


@functools.lru_cache(maxsize=4)
def _load_table(path: str) -> tuple[tuple[str, ...], dict[str, np.ndarray], np.ndarray]:
    """(arch strings, numeric columns, codes) in file order."""
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = list(reader)
    if "arch" not in header:
        raise ValueError(f"{path} has no 'arch' column; columns: {header}")
    arch_column = header.index("arch")
    archs = tuple(row[arch_column] for row in rows)
    numeric = {}
    for index, name in enumerate(header):
        if index == arch_column:
            continue
        try:
            numeric[name] = np.asarray([float(row[index]) for row in rows], dtype=np.float64)
        except ValueError:
            continue  # a non-numeric extra column
    codes = ops_to_code(np.asarray([arch_to_ops(arch) for arch in archs]))
    return archs, numeric, codes


# ----------------------------------------------------------------------------- benchmark


class NASBench201:
    """The NAS-Bench-201 topology benchmark as a search objective (higher accuracy is better).

    `evaluate(candidates)` takes a list of decoded candidates (dicts of edge ops
    or arch strings), a `Candidates` batch of the search driver, or an array of
    encoded cells `(n, 6)`, and returns a dict of `(n,)` metric arrays holding
    `fitness_metric`, `reported_metric`, the 12-epoch test accuracy and the index.
    """

    direction = "maximize"

    def __init__(self, dataset: str = "cifar10", path: str | os.PathLike | None = None):
        if dataset not in DATASETS:
            raise ValueError(f"dataset must be one of {DATASETS}; got {dataset!r}")
        self.dataset = dataset
        self.path = find_csv(path)
        self.fitness_metric = f"{dataset}_val_12ep"
        self.reported_metric = f"{dataset}_test_200ep"
        self.metric_names = (self.fitness_metric, self.reported_metric, f"{dataset}_test_12ep")
        archs, numeric, codes = _load_table(os.fspath(self.path))
        missing = [name for name in self.metric_names if name not in numeric]
        if missing:
            raise ValueError(
                f"{self.path} lacks column(s) {missing} needed for dataset {dataset!r}; "
                f"its columns: {['arch', *numeric]}"
            )
        if len(codes) != NUM_CELLS or len(np.unique(codes)) != NUM_CELLS:
            raise ValueError(
                f"{self.path} must hold each of the {NUM_CELLS} cells exactly once; "
                f"got {len(codes)} rows, {len(np.unique(codes))} distinct cells"
            )
        order = np.argsort(codes)  # row of each code
        self._by_code = {name: numeric[name][order] for name in self.metric_names}
        self._index_by_code = numeric["index"][order].astype(np.int64) if "index" in numeric \
            else order.astype(np.int64)

    def values(self, metric: str) -> np.ndarray:
        """`(15625,)` values of a metric, indexed by cell code."""
        if metric not in self._by_code:
            raise ValueError(f"unknown metric {metric!r}; known: {self.metric_names}")
        return self._by_code[metric]

    def codes(self, candidates: Any) -> np.ndarray:
        """Cell codes `(n,)` of a batch of candidates (see `evaluate`)."""
        if hasattr(candidates, "params"):  # the driver's Candidates batch
            candidates = candidates.params
        if isinstance(candidates, np.ndarray) and candidates.dtype.kind == "f":
            return np.asarray(u_to_code(candidates.reshape(-1, len(EDGES))))
        return ops_to_code(np.asarray([params_to_ops(c) for c in candidates]).reshape(-1, len(EDGES)))

    def evaluate(self, candidates: Any) -> dict[str, np.ndarray]:
        """Metrics of a batch of candidates, each an `(n,)` float array."""
        codes = self.codes(candidates)
        metrics = {name: self._by_code[name][codes] for name in self.metric_names}
        metrics["index"] = self._index_by_code[codes].astype(np.float64)
        return metrics

    def lookup(self, arch: str) -> dict[str, float]:
        """Metrics of one arch string."""
        return {name: float(values[0]) for name, values in self.evaluate([arch]).items()}

    def optimum(self, metric: str | None = None) -> float:
        """Best value of a metric over the whole space (default: the reported metric)."""
        return float(self.values(metric or self.reported_metric).max())

    def best_by_fitness(self) -> dict[str, float]:
        """Metrics of the cell with the best fitness metric (what a perfect search would return)."""
        code = int(np.argmax(self.values(self.fitness_metric)))
        return {"arch": ops_to_arch(code_to_ops(code)),
                **{name: float(self._by_code[name][code]) for name in self.metric_names}}

    def __repr__(self) -> str:
        return f"NASBench201(dataset={self.dataset!r}, path={os.fspath(self.path)!r})"
