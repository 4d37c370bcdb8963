"""PopulationResult: choosing the best member."""

import pytest
from vhjax.population.fit import PopulationResult

def test_best_names_the_recorded_metrics_when_asked_for_one_a_run_lacks():
    members = [{"member": i, "diverged_step": None, "config": {"lr": i}, "eval": {"loss": 1.0 - i / 10}}
               for i in range(3)]
    result = PopulationResult(members, [])
    assert result.best("loss", mode="min")["member"] == 2
    with pytest.raises(ValueError, match=r"split/metric has value 'eval/accuracy'; allowed: one every member "
                                         r"records, among \['eval/loss'\]"):
        result.best()
