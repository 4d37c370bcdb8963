"""Sequence reversal with the zoo's seq2seq models: RNNSeq2Seq (BiLSTM + attention) and TransformerSeq2Seq.

Task: a source of 6-8 random digits (vocab: pad 0, BOS 1, EOS 2, digits 3..12), target = the
digits reversed followed by EOS. Training uses a fixed set of sequences; the held-out set holds
sequences that never occur in it. Measured: exact-match accuracy of greedy decoding (every target
token up to and including EOS right) on the held-out set, per model, mean ± std over seeds. The
seeds of a model train as one population through the engine (`init_members`, `make_loss_step`,
`PopulationRunner` + `run_loop`), each member drawing its own batches.

Command:  python experiments/seq2seq_reverse.py [--steps 1500] [--seeds 3]
Hardware: 2-core CPU, a few minutes. Writes experiments/results/seq2seq_reverse.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vhjax.hardware import describe
from vhjax.models import RNNSeq2Seq, TransformerSeq2Seq, greedy_decode
from vhjax.population import init_members, make_loss_step

import member_runs

PAD, BOS, EOS, FIRST_DIGIT = 0, 1, 2, 3
VOCAB = FIRST_DIGIT + 10
MIN_LEN, MAX_LEN = 6, 8
TGT_LEN = MAX_LEN + 1  # reversed digits + EOS


def make_pairs(rng: np.random.Generator, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` (src (count, MAX_LEN), target (count, TGT_LEN)) pairs, right-padded with PAD."""
    src = np.full((count, MAX_LEN), PAD, np.int32)
    tgt = np.full((count, TGT_LEN), PAD, np.int32)
    lengths = rng.integers(MIN_LEN, MAX_LEN + 1, count)
    for i, n in enumerate(lengths):
        digits = rng.integers(0, 10, n) + FIRST_DIGIT
        src[i, :n] = digits
        tgt[i, :n] = digits[::-1]
        tgt[i, n] = EOS
    return src, tgt


def datasets(num_train: int, num_test: int, seed: int = 0):
    """Training pairs and held-out pairs whose sources do not occur in training."""
    rng = np.random.default_rng(seed)
    train_src, train_tgt = make_pairs(rng, num_train)
    seen = {row.tobytes() for row in train_src}
    test_src, test_tgt = make_pairs(rng, 3 * num_test)
    fresh = np.array([row.tobytes() not in seen for row in test_src])
    return (train_src, train_tgt), (test_src[fresh][:num_test], test_tgt[fresh][:num_test])


def teacher_input(tgt: jax.Array) -> jax.Array:
    """BOS followed by the target shifted right."""
    return jnp.concatenate([jnp.full((tgt.shape[0], 1), BOS, tgt.dtype), tgt[:, :-1]], axis=1)


def train_seeds(model, train, seeds: int, steps: int, batch_size: int, lr: float, key: jax.Array):
    """Train `seeds` initialisations of `model` as one population through the engine (each member
    draws its own batches); returns params stacked over seeds, and the (steps, seeds) losses."""
    src, tgt = jnp.asarray(train[0]), jnp.asarray(train[1])
    optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(optax.cosine_decay_schedule(lr, steps)))

    def loss_fn(params, batch, key, hparams):
        s, t = batch
        logits = model.apply({"params": params}, s, teacher_input(t))
        mask = (t != PAD).astype(jnp.float32)
        losses = optax.softmax_cross_entropy_with_integer_labels(logits, t)
        return (losses * mask).sum() / mask.sum()

    init_fn = lambda k: model.init(k, src[:2], teacher_input(tgt[:2]))["params"]
    population = member_runs.own_data(init_members(init_fn, optimizer, key, seeds))
    population, metrics = member_runs.train(population, make_loss_step(loss_fn, optimizer), (src, tgt), steps,
                                            member_runs.own_batches(batch_size, src.shape[0]))
    return population.members.params, metrics["loss"]


def exact_match(model, params, test) -> np.ndarray:
    """Per-seed fraction of held-out sequences decoded exactly (tokens up to and including EOS)."""
    src, tgt = jnp.asarray(test[0]), jnp.asarray(test[1])

    def one(p, src, tgt):
        out = greedy_decode(model, {"params": p}, src, bos_id=BOS, max_len=TGT_LEN, pad_id=PAD)
        relevant = tgt != PAD
        return jnp.mean(jnp.all((out == tgt) | ~relevant, axis=1))

    one = jax.jit(one)
    seeds = jax.tree.leaves(params)[0].shape[0]
    return np.array([float(one(jax.tree.map(lambda a: a[i], params), src, tgt)) for i in range(seeds)])


def write_snippet(path: Path, rows: list[tuple[str, np.ndarray, float]], args, num_test: int, wall: float) -> None:
    lines = ["### Seq2seq: reversing digit sequences", "",
             f"Reverse 6-8 random digits (target: reversed digits + EOS). {args.train} training pairs, "
             f"{num_test} held-out pairs whose sources never occur in training; {args.steps} Adam steps of "
             f"batch {args.batch_size}. Metric: exact-match accuracy of greedy decoding on the held-out pairs, "
             f"mean ± std over {args.seeds} seeds, trained as one population per model (the "
             f"`vhjax.population` engine).", "",
             "| model | parameters | exact match (held-out) | per seed |", "|---|---|---|---|"]
    for name, acc, n_params in rows:
        lines.append(f"| {name} | {n_params:,} | {acc.mean():.3f} ± {acc.std():.3f} | "
                     f"{', '.join(f'{a:.3f}' for a in acc)} |")
    lines += ["", f"Command: `python experiments/seq2seq_reverse.py --steps {args.steps} --seeds {args.seeds}`  ",
              f"Hardware: {describe()}  ", f"Wall time: {wall:.0f} s (both models, training and decoding)", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train", type=int, default=20000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--models", default="rnn,transformer")
    parser.add_argument("--out", default="experiments/results/seq2seq_reverse.md")
    args = parser.parse_args()
    start = time.perf_counter()
    train, test = datasets(args.train, args.test)
    models = {"rnn": ("RNNSeq2Seq (BiLSTM 64 + attention)",
                      RNNSeq2Seq(src_vocab=VOCAB, tgt_vocab=VOCAB, embed_dim=32, hidden_size=64, pad_id=PAD), 3e-3),
              "transformer": ("TransformerSeq2Seq (2+2 layers, width 64)",
                              TransformerSeq2Seq(src_vocab=VOCAB, tgt_vocab=VOCAB, width=64, num_heads=4,
                                                 num_layers=2, pad_id=PAD), 1e-3)}
    rows = []
    for number, name in enumerate(args.models.split(",")):
        label, model, lr = models[name]
        tick = time.perf_counter()
        params, losses = train_seeds(model, train, args.seeds, args.steps, args.batch_size, lr,
                                     jax.random.key(number))
        acc = exact_match(model, params, test)
        n_params = sum(x.size for x in jax.tree.leaves(params)) // args.seeds
        print(f"{label}: final train loss {np.asarray(losses)[-50:].mean():.4f}; held-out exact match "
              f"{acc.mean():.3f} ± {acc.std():.3f} ({', '.join(f'{a:.3f}' for a in acc)}); "
              f"{time.perf_counter() - tick:.0f} s", flush=True)
        rows.append((label, acc, n_params))
    wall = time.perf_counter() - start
    write_snippet(Path(args.out), rows, args, len(test[0]), wall)
    print(f"wrote {args.out}; wall time {wall:.0f} s")


if __name__ == "__main__":
    main()
