"""train.py with U's per-sample loss made NaN on rank 1 only, for that rank's calls FIRST to LAST of understand_loss
(env NAN_CALLS=FIRST:LAST): the DDP test of tests/test_train.py. Every decision taken on a loss (skip C's update,
skip U's) must be taken by both ranks together, or the next all-reduce hangs or mixes two different steps.
Run: python -m torch.distributed.run --standalone --nproc_per_node=2 tests/nan_on_one_rank.py train.py [flags]"""

import os
import runpy
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import janus  # noqa: E402
import toy_umm  # noqa: E402

first, last = (int(v) for v in os.environ['NAN_CALLS'].split(':'))
calls = 0


def poisoned(understand_loss):
    def wrapped(self, *args, **kwargs):
        global calls
        calls += 1
        ce = understand_loss(self, *args, **kwargs)  # (B,) float32
        return ce * float('nan') if os.environ['RANK'] == '1' and first <= calls <= last else ce
    return wrapped


for cls in (toy_umm.ToyUMM, janus.JanusUMM):
    cls.understand_loss = poisoned(cls.understand_loss)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
