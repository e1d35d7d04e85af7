import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

# GUIDE section 8: two OpenMP threads spin-wait and make timings swing; tests run on one thread.
torch.set_num_threads(1)
