"""The differences named by the errors that refuse to resume a workdir or a search store."""

from vhjax.diffs import ABSENT, describe, differences, place


def test_differences_name_each_nested_place_and_only_those():
    stored = {"model": "mlp", "model_kwargs": {"width": 32, "depth": 2},
              "augment": [{"name": "shift", "strength": 0.1}], "steps": 100, "seed": 0}
    current = {"model": "mlp", "model_kwargs": {"width": 64}, "augment": [{"name": "shift", "strength": 0.3}],
               "steps": 100, "seed": 0, "dropout_rate": 0.1}
    assert differences(stored, current) == [
        (("augment", 0, "strength"), 0.1, 0.3),
        (("dropout_rate",), ABSENT, 0.1),
        (("model_kwargs", "depth"), 2, ABSENT),
        (("model_kwargs", "width"), 32, 64),
    ]
    assert differences(stored, dict(stored)) == []
    assert differences({"a": 1}, {"a": 1.0}) == []  # equal as JSON numbers, as the refusals compared before


def test_lists_of_other_lengths_and_other_types_are_one_difference():
    assert differences([1, 2], [1, 2, 3]) == [((), [1, 2], [1, 2, 3])]
    assert differences({"a": [1]}, {"a": {"b": 1}}) == [(("a",), [1], {"b": 1})]
    assert differences(None, 0) == [((), None, 0)]


def test_describe_reads_as_places_with_both_values_cut_and_counted():
    found = differences([{"learning_rate": 1e-3}, {"learning_rate": 3e-3, "arch.width": 8}],
                        [{"learning_rate": 1e-3}, {"learning_rate": 1e-2}])
    assert describe(found, "members") == ("members[1].arch.width: stored 8, now absent; "
                                          "members[1].learning_rate: stored 0.003, now 0.01")
    assert place(()) == "the value" and place(("a", 0, "b")) == "a[0].b" and place((2,), "rows") == "rows[2]"
    many = differences({f"k{i}": i for i in range(9)}, {f"k{i}": -i - 1 for i in range(9)})
    text = describe(many, most=3, width=8)
    assert text == "k0: stored 0, now -1; k1: stored 1, now -2; k2: stored 2, now -3; and 6 more"
    assert describe(differences("x" * 50, "y"), width=10) == "the value: stored 'xxxxxx..., now 'y'"  # 10 characters
