"""Run under mpiexec -n 2: rank 1 raises in epoch 2; the job must end at once (not hang)."""
import sys

from dualtensor import distributed
from dualtensor.train import TrainConfig, fit
from dualtensor.train.callbacks import Callback


class Boom(Callback):
    def on_step_end(self, run, out, stats):
        if run.comm.rank == 1 and run.state.epoch == 1 and stats.steps == 2:
            raise RuntimeError("rank 1 broke")


comm = distributed.init(require=True)
config = TrainConfig(limit=128, epochs=5, batch_size=16, width=8, depth=1, k=2, quiet=True, parallel="data",
                     out=sys.argv[1])
with distributed.abort_on_error(comm):
    fit(config, [Boom()])
