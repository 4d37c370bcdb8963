"""Wall time and compilations of the transfer runners that train networks of their own, in this process.

    python experiments/probe_transfer_compile.py pretrain STEPS   # SimCLR, MNIST-1D paper CNN encoder
    python experiments/probe_transfer_compile.py adapt STEPS      # MMD/CORAL/DANN rows, then ADDA
    python experiments/probe_transfer_compile.py anneal STEPS     # 4 SA chains over a paper CNN's weights
    python experiments/probe_transfer_compile.py distill STEPS    # 4 paper-CNN students of a wider CNN

`pretrain`: `vhjax.transfer.pretrain` of the MNIST-1D paper CNN up to its head (SimCLR, temperature
0.2, 2 members). `adapt`: experiments/domain_adaptation_table.py's MNIST-1D pair at one seed (its 11
rows as one population, then ADDA from the source-only member). `anneal`: `vhjax.transfer.anneal`, 4
chains from a randomly initialised paper CNN on MNIST-1D (energy on 256 validation examples).
`distill`: the paper CNN with 64 channels a layer, trained STEPS steps (`fit`, not timed), then 4 paper-CNN
students distilled from it (temperature 4, soft weight 0.5 and 0.9). One CPU device. Prints each call's
seconds, compile seconds and the programs that compiled longest. Compare XLA's CPU fusion emitters
by running it in alternating fresh processes with `XLA_FLAGS=--xla_cpu_use_fusion_emitters=true`
and `=false` (experiments/README.md, session 53).
"""
import json
import sys
import time
from pathlib import Path

from vhjax.hardware import use_cpu_devices

use_cpu_devices(1)
sys.path.insert(0, str(Path(__file__).parent))

from vhjax.compilation_cache import count_compilations  # noqa: E402
from vhjax.config import TrainConfig  # noqa: E402


def timed(name: str, call) -> dict:
    start = time.perf_counter()
    with count_compilations() as compiled:
        result = call()
    row = {"call": name, "seconds": round(time.perf_counter() - start, 2), "compile_seconds": round(compiled.seconds, 2),
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
    source = {"params": models.mnist1d_cnn().init(jax.random.key(0), np.asarray(load("mnist1d", "train").x[:2]))["params"]}
    timed("anneal", lambda: anneal(config, source, chains=4, steps=steps, temperature=1e-3, step_size=1e-3,
                                   new_head=False, energy_batch=256))


def probe_distill(steps: int) -> None:
    from vhjax.train import fit
    from vhjax.transfer import distill

    teacher_config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", model_kwargs={"conv_layers": ((64, 5, 2, 1), (64, 3, 2, 1), (64, 3, 2, 1))}, batch_size=100,
                                 steps=steps, eval_every=steps, learning_rate=3e-3)
    teacher = fit(teacher_config, verbose=False)
    students = [{"seed": s, "temperature": 4.0, "soft_weight": w} for s in (0, 1) for w in (0.5, 0.9)]
    config = TrainConfig(dataset="mnist1d", model="mnist1d_cnn", batch_size=100, steps=steps, eval_every=steps,
                         learning_rate=3e-3)
    timed("distill", lambda: distill(config, teacher, students, teacher_model=teacher_config, verbose=False))


if __name__ == "__main__":
    {"pretrain": probe_pretrain, "adapt": probe_adapt, "anneal": probe_anneal, "distill": probe_distill}[sys.argv[1]](int(sys.argv[2]))
