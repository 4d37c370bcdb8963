"""Probe (issue 11): XLA CPU backend optimisation level against compile and step time, for a
vmapped AdamW chunk (8 MNIST-1D paper CNNs, 150 steps of batch 100, `lax.fori_loop`).

Command:  python experiments/probe_xla_opt_level.py   (about 40 s on a 2-core CPU)
Prints compile seconds and the min / median of 5 runs per setting (default, level 0, level 0
without LLVM's expensive passes, level 1). Results: experiments/README.md, "Rerun with 2, 4 and 8 slots".
"""

import time

import jax
import jax.numpy as jnp
import optax
from jax import lax

from vhjax.models import mnist1d_cnn

MEMBERS, BATCH, LENGTH, STEPS = 8, 100, 40, 150
SETTINGS = (("default", None), ("O0", {"xla_backend_optimization_level": 0}),
            ("O0+noexp", {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}),
            ("O1", {"xla_backend_optimization_level": 1}))


def main() -> None:
    model = mnist1d_cnn()
    x = jax.random.normal(jax.random.key(0), (BATCH, LENGTH))
    y = jnp.zeros(BATCH, jnp.int32)
    optimizer = optax.adamw(1e-3, weight_decay=1e-4)

    def init(key):
        params = model.init(key, x[:1])["params"]
        return params, optimizer.init(params)

    def loss(params):
        logits = model.apply({"params": params}, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), y[:, None], 1))

    def step(state):
        params, opt_state = state
        updates, opt_state = optimizer.update(jax.grad(loss)(params), opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    chunk = lambda state: lax.fori_loop(0, STEPS, lambda i, s: jax.vmap(step)(s), state)
    population = jax.vmap(init)(jax.random.split(jax.random.key(1), MEMBERS))
    for label, options in SETTINGS:
        started = time.perf_counter()
        compiled = jax.jit(chunk, compiler_options=options).lower(population).compile()
        compile_seconds = time.perf_counter() - started
        times = []
        for _ in range(5):
            started = time.perf_counter()
            jax.block_until_ready(compiled(population))
            times.append(time.perf_counter() - started)
        times.sort()
        print(f"{label:9s} compile {compile_seconds:.2f} s  {STEPS} steps min {times[0] * 1e3:.0f} ms  "
              f"median {times[2] * 1e3:.0f} ms  ({jax.devices()[0].platform})")


if __name__ == "__main__":
    main()
