"""One bagging call's wall time and compilations: 8 members of a zoo CNN, in this process.

    python experiments/probe_ensemble_compile.py mnist1d cnn1d 600
    python experiments/probe_ensemble_compile.py digits cnn2d 300

MNIST-1D's paper CNN or a digits 2-D CNN (16 and 32 channels), 8 bootstrap members, Adam 3e-3,
dropout 0.1, weight decay 1e-4, one CPU device. Prints the call's seconds, the compile seconds and
the three programs that compiled longest. Compare code versions by running it in alternating fresh
processes with PYTHONPATH at each checkout (experiments/README.md, session 51).
"""
import json
import sys
import time

from vhjax.hardware import use_cpu_devices

use_cpu_devices(1)

import jax  # noqa: E402

from vhjax import models  # noqa: E402
from vhjax.compilation_cache import count_compilations  # noqa: E402
from vhjax.data import load  # noqa: E402
from vhjax.ensemble import bagging  # noqa: E402

dataset, kind, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
train = load(dataset, "train[:90%]")
model = (models.mnist1d_cnn() if kind == "cnn1d" else
         models.get_model("cnn2d", num_classes=10, conv_layers=((16, 3, 1, "SAME"), (32, 3, 1, "SAME"))))
start = time.perf_counter()
with count_compilations() as compiled:
    bagging(model, train.x, train.y, size=8, key=jax.random.key(0), steps=steps, batch_size=100,
            learning_rate=3e-3, dropout_rate=0.1, weight_decay=1e-4)
print(json.dumps({"seconds": round(time.perf_counter() - start, 2), "compile_seconds": round(compiled.seconds, 2),
                  "longest": {name: round(s, 2) for name, s in compiled.seconds_by_function.most_common(3)}}))
