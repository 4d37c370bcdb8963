"""NAS-Bench-201 tabular objective: lookups against the CSV, codes, errors, driver use."""

from __future__ import annotations

import csv

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vhjax.search import tabular
from vhjax.search.tabular import NASBench201

try:
    CSV_PATH = tabular.find_csv()
except FileNotFoundError:  # the shared data folder is not on this machine
    CSV_PATH = None
needs_data = pytest.mark.skipif(CSV_PATH is None, reason="shared/data/nasbench201/nb201.csv absent")


@pytest.fixture(scope="module")
def csv_rows():
    with open(CSV_PATH, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cifar10():
    return NASBench201("cifar10")


def test_arch_string_round_trip_and_codes():
    arch = "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|"
    ops = tabular.arch_to_ops(arch)
    assert ops == (3, 3, 4, 1, 3, 1)
    assert tabular.ops_to_arch(ops) == arch
    assert tabular.ops_to_code(ops) == ((((3 * 5 + 3) * 5 + 4) * 5 + 1) * 5 + 3) * 5 + 1
    assert tuple(tabular.code_to_ops(tabular.ops_to_code(ops))) == ops
    u = (np.asarray(ops) + 0.5) / 5
    assert int(tabular.u_to_code(u)) == tabular.ops_to_code(ops)
    assert int(tabular.u_to_code(np.ones(6))) == 5 ** 6 - 1  # u == 1 maps to the last op
    with pytest.raises(ValueError, match="op~1"):
        tabular.arch_to_ops("|none~0|+|none~0|none~0|+|none~0|none~1|none~2|")


@needs_data
def test_lookup_matches_csv_rows(cifar10, csv_rows):
    for row in (csv_rows[0], csv_rows[1], csv_rows[777], csv_rows[-1]):
        metrics = cifar10.lookup(row["arch"])
        assert metrics["cifar10_val_12ep"] == float(row["cifar10_val_12ep"])
        assert metrics["cifar10_test_200ep"] == float(row["cifar10_test_200ep"])
        assert metrics["cifar10_test_12ep"] == float(row["cifar10_test_12ep"])
        assert metrics["index"] == float(row["index"])
    other = NASBench201("imagenet16")
    row = csv_rows[4242]
    assert other.lookup(row["arch"])["imagenet16_test_200ep"] == float(row["imagenet16_test_200ep"])


@needs_data
def test_optimum_is_the_papers_optimal_row():
    assert round(NASBench201("cifar10").optimum(), 2) == 94.37
    assert round(NASBench201("cifar100").optimum(), 2) == 73.51
    assert round(NASBench201("imagenet16").optimum(), 2) == 47.31


@needs_data
def test_batch_forms_agree_and_gather_is_jittable(cifar10, csv_rows):
    archs = [csv_rows[i]["arch"] for i in (3, 50, 9000)]
    ops = np.asarray([tabular.arch_to_ops(a) for a in archs])
    edge_dicts = [{f"edge_{to}<-{src}": tabular.OPS[o] for (to, src), o in zip(tabular.EDGES, row)}
                  for row in ops]
    shuffled = [dict(reversed(list(d.items()))) for d in edge_dicts]  # key names give the order
    u = (ops + 0.5) / 5
    expected = np.asarray([float(csv_rows[i]["cifar10_val_12ep"]) for i in (3, 50, 9000)])
    for batch in (archs, [{"arch": a} for a in archs], edge_dicts, shuffled, u):
        np.testing.assert_array_equal(cifar10.evaluate(batch)["cifar10_val_12ep"], expected)
    table = jnp.asarray(cifar10.values("cifar10_val_12ep"), jnp.float32)
    gathered = jax.jit(lambda x: table[tabular.u_to_code(x)])(jnp.asarray(u, jnp.float32))
    np.testing.assert_allclose(gathered, expected, rtol=1e-6)


def test_missing_file_says_where_it_looked(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="path="):
        NASBench201("cifar10", path=tmp_path / "nope.csv")
    monkeypatch.setenv(tabular.ENV_VAR, str(tmp_path / "also_missing.csv"))
    monkeypatch.setattr(tabular, "RELATIVE_PATH", "no/such/nb201.csv")
    with pytest.raises(FileNotFoundError, match="also_missing.csv") as error:
        tabular.find_csv()
    assert "no/such/nb201.csv" in str(error.value)


def test_missing_columns_are_named(tmp_path):
    path = tmp_path / "small.csv"
    path.write_text("index,arch,cifar10_val_12ep\n0,|none~0|+|none~0|none~1|+|none~0|none~1|none~2|,10\n")
    with pytest.raises(ValueError, match="cifar100_val_12ep"):
        NASBench201("cifar100", path=path)
    with pytest.raises(ValueError, match="dataset must be one of"):
        NASBench201("svhn", path=path)


@needs_data
def test_env_var_is_used(monkeypatch):
    monkeypatch.setenv(tabular.ENV_VAR, str(CSV_PATH))
    assert tabular.find_csv() == CSV_PATH


@needs_data
def test_codes_agree_with_the_search_space_encoding(cifar10):
    space_lib = pytest.importorskip("vhjax.search.space")
    space = space_lib.nasbench201_space()
    assert space.dim == 6
    u = np.asarray(jax.random.uniform(jax.random.key(0), (20, 6)))
    decoded = [space.decode(row) for row in u]
    np.testing.assert_array_equal(cifar10.codes(decoded), tabular.u_to_code(u))
