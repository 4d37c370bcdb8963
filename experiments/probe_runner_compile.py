"""Wall time and compilations of the runners and evaluation programs outside `tune`, in this process.

    python experiments/probe_runner_compile.py pretrain STEPS   # SimCLR, MNIST-1D paper CNN encoder
    python experiments/probe_runner_compile.py adapt STEPS      # MMD/CORAL/DANN rows, then ADDA
    python experiments/probe_runner_compile.py anneal STEPS     # 4 SA chains over a paper CNN's weights
    python experiments/probe_runner_compile.py distill STEPS    # 4 paper-CNN students of a wider CNN
    python experiments/probe_runner_compile.py kfold STEPS      # 2 candidates x 5 folds, then their predictions
    python experiments/probe_runner_compile.py ensemble STEPS   # bagging 8 members, then predict_proba on test
    python experiments/probe_runner_compile.py KIND STEPS 2     # the same on 2 CPU devices (one per core)

`pretrain`: `vhjax.transfer.pretrain` of the MNIST-1D paper CNN up to its head (SimCLR, temperature
0.2, 2 members). `adapt`: experiments/domain_adaptation_table.py's MNIST-1D pair at one seed (its 11
rows as one population, then ADDA from the source-only member). `anneal`: `vhjax.transfer.anneal`, 4
chains from a randomly initialised paper CNN on MNIST-1D (energy on 256 validation examples).
`distill`: the paper CNN with 64 channels a layer, trained STEPS steps (`fit`, not timed), then 4
paper-CNN students distilled from it (temperature 4, soft weight 0.5 and 0.9). `kfold`: `fit_kfold`
of the paper CNN (dropout 0.1) with two learning rates on 5 folds of the train split, then
`member_probs` on the test split and `out_of_fold_probs` (timed together as 'predictions').
`ensemble`: `bagging` of 8 paper CNNs (dropout 0.1), then `predict_proba` of the test split. One
CPU device, or the third argument's number of them (`use_cpu_devices`; every entry point's default
`mesh='auto'` then shards its members over them). Prints each timed call's seconds, compile
seconds and the programs that compiled longest. Compare code versions in alternating fresh
processes with PYTHONPATH at each checkout, or XLA's CPU fusion emitters with
`XLA_FLAGS=--xla_cpu_use_fusion_emitters=true` and `=false` (experiments/README.md, session 53), or
1 and 2 CPU devices (session 54).
"""
import json
import sys
import time
from pathlib import Path

from vhjax.hardware import use_cpu_devices

use_cpu_devices(int(sys.argv[3]) if len(sys.argv) > 3 else 1)
sys.path.insert(0, str(Path(__file__).parent))

from vhjax.compilation_cache import count_compilations  # noqa: E402
from vhjax.config import TrainConfig  # noqa: E402


def timed(name: str, call):
    """`call()`, printing its seconds, compile seconds and the three programs that compiled longest."""
    start = time.perf_counter()
    with count_compilations() as compiled:
        result = call()
    row = {"call": name, "seconds": round(time.perf_counter() - start, 2),
           "compile_seconds": round(compiled.seconds, 2),
           "longest": {fn: round(s, 2) for fn, s in compiled.seconds_by_function.most_common(3)}}
    print(json.dumps(row), flush=True)
    return result


def probe_pretrain(steps: int) -> None:
    from vhjax.transfer import pretrain

    config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", batch_size=128, steps=steps, eval_every=steps,
                         learning_rate=3e-3)
    timed("pretrain", lambda: pretrain(config, [{"temperature": 0.2, "seed": s} for s in (0, 1)], verbose=False))


def probe_adapt(steps: int) -> None:
    from domain_adaptation_table import ROWS, config_for, shifted_mnist1d

    from vhjax.transfer import adapt, adda

    dataset, target = shifted_mnist1d()
    config = config_for("mnist1d", dataset, steps)
    members = [{"seed": 0, **values} for values in ROWS.values()]
    result = timed("adapt", lambda: adapt(config, members, target=target, verbose=False))
    timed("adda", lambda: adda(config, target=target, source=result, verbose=False))


def probe_anneal(steps: int) -> None:
    import jax
    import numpy as np

    from vhjax import models
    from vhjax.data import load
    from vhjax.transfer import anneal

    config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", batch_size=100, steps=steps, eval_every=steps)
    x = np.asarray(load("mnist1d", "train").x[:2])
    source = {"params": models.mnist1d_cnn().init(jax.random.key(0), x)["params"]}
    timed("anneal", lambda: anneal(config, source, chains=4, steps=steps, temperature=1e-3, step_size=1e-3,
                                   new_head=False, energy_batch=256))


def probe_distill(steps: int) -> None:
    from vhjax.train import fit
    from vhjax.transfer import distill

    wide = {"conv_layers": ((64, 5, 2, 1), (64, 3, 2, 1), (64, 3, 2, 1))}
    teacher_config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", model_kwargs=wide, batch_size=100,
                                 steps=steps, eval_every=steps, learning_rate=3e-3)
    teacher = fit(teacher_config, verbose=False)
    students = [{"seed": s, "temperature": 4.0, "soft_weight": w} for s in (0, 1) for w in (0.5, 0.9)]
    config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", batch_size=100, steps=steps, eval_every=steps,
                         learning_rate=3e-3)
    timed("distill", lambda: distill(config, teacher, students, teacher_model=teacher_config, verbose=False))


def probe_kfold(steps: int) -> None:
    from vhjax.data import load
    from vhjax.population.kfold import fit_kfold, member_probs, out_of_fold_probs

    config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", batch_size=100, steps=steps, eval_every=steps // 3,
                         learning_rate=3e-3, dropout_rate=0.1)
    result = timed("kfold", lambda: fit_kfold(config, [{"learning_rate": 3e-3}, {"learning_rate": 1e-2}], k=5,
                                              verbose=False))
    test = load("mnist1d", "test")
    timed("predictions", lambda: (member_probs(result, test.x), out_of_fold_probs(result)))


def probe_ensemble(steps: int) -> None:
    import jax

    from vhjax import models
    from vhjax.data import load
    from vhjax.ensemble import bagging

    train, test = load("mnist1d", "train[:90%]"), load("mnist1d", "test")
    ensemble = timed("bagging", lambda: bagging(models.mnist1d_cnn(), train.x, train.y, size=8, key=jax.random.key(0),
                                                steps=steps, batch_size=100, learning_rate=3e-3, dropout_rate=0.1))
    timed("predict_proba", lambda: jax.block_until_ready(ensemble.predict_proba(test.x)))


PROBES = {"pretrain": probe_pretrain, "adapt": probe_adapt, "anneal": probe_anneal, "distill": probe_distill,
          "kfold": probe_kfold, "ensemble": probe_ensemble}

if __name__ == "__main__":
    PROBES[sys.argv[1]](int(sys.argv[2]))
