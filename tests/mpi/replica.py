"""Run under mpiexec -n 2: a parameter that differs on rank 1 stops both ranks with one clear error."""
import sys

from dualtensor import distributed
from dualtensor.train import TrainConfig, fit
from dualtensor.train.callbacks import Callback


class Drift(Callback):
    def on_step_end(self, run, out, stats):
        if run.comm.rank == 1 and run.state.step + stats.steps == 3:
            next(iter(run.model.parameters())).data[0] += 1e-6


comm = distributed.init(require=True)
config = TrainConfig(limit=128, epochs=1, batch_size=16, width=8, depth=1, k=2, quiet=True, parallel="tangents",
                     check_every=2)
try:
    fit(config, [Drift()])
except distributed.DistributedError as e:
    print(f"rank {comm.rank}: {e}", flush=True)
    sys.exit(0 if "at step 4" in str(e) and "rank(s) 1 " in str(e) else 1)
print(f"rank {comm.rank}: no error", flush=True)
sys.exit(1)
