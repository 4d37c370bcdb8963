"""Wall time and compilations of k-fold cross-validation and of an ensemble's predictions, in this process.

    python experiments/probe_eval_programs.py kfold STEPS      # 2 candidates x 5 folds, then their predictions
    python experiments/probe_eval_programs.py ensemble STEPS   # bagging 8 members, then predict_proba on test

The MNIST-1D paper CNN (dropout 0.1, Adam 3e-3, batch 100), one CPU device. `kfold`: `fit_kfold`
of two learning rates on 5 folds of the train split, then `member_probs` on the test split and
`out_of_fold_probs` (timed together as 'predictions'). `ensemble`: `bagging` of 8 members, then
`predict_proba` of the test split (the member logits program). Prints each timed part's seconds,
compile seconds and the programs that compiled longest. Compare code versions in alternating fresh
processes with PYTHONPATH at each checkout (experiments/README.md, session 53).
"""
import json
import sys
import time

from vhjax.hardware import use_cpu_devices

use_cpu_devices(1)

import jax  # noqa: E402

from vhjax.compilation_cache import count_compilations  # noqa: E402
from vhjax.config import TrainConfig  # noqa: E402
from vhjax.data import load  # noqa: E402


def timed(name: str, call):
    start = time.perf_counter()
    with count_compilations() as compiled:
        result = call()
    print(json.dumps({"call": name, "seconds": round(time.perf_counter() - start, 2),
                      "compile_seconds": round(compiled.seconds, 2),
                      "longest": {fn: round(s, 2) for fn, s in compiled.seconds_by_function.most_common(3)}}),
          flush=True)
    return result


def probe_kfold(steps: int) -> None:
    from vhjax.population.kfold import fit_kfold, member_probs, out_of_fold_probs

    config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", batch_size=100, steps=steps, eval_every=steps // 3,
                         learning_rate=3e-3, dropout_rate=0.1)
    result = timed("kfold", lambda: fit_kfold(config, [{"learning_rate": 3e-3}, {"learning_rate": 1e-2}], k=5,
                                              mesh=None, verbose=False))
    test = load("mnist1d", "test")
    timed("predictions", lambda: (member_probs(result, test.x), out_of_fold_probs(result)))


def probe_ensemble(steps: int) -> None:
    from vhjax import models
    from vhjax.ensemble import bagging

    train, test = load("mnist1d", "train[:90%]"), load("mnist1d", "test")
    ensemble = timed("bagging", lambda: bagging(models.mnist1d_cnn(), train.x, train.y, size=8, key=jax.random.key(0),
                                                steps=steps, batch_size=100, learning_rate=3e-3, dropout_rate=0.1))
    timed("predict_proba", lambda: jax.block_until_ready(ensemble.predict_proba(test.x)))


if __name__ == "__main__":
    {"kfold": probe_kfold, "ensemble": probe_ensemble}[sys.argv[1]](int(sys.argv[2]))
