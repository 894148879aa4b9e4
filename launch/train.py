"""Train the chest X-ray classifier: `accelerate launch launch/train.py [flags]` (see --help)."""

import sys

from covid_ddp import launcher_watch

launcher_watch.arm("covid-ddp-train")  # first, before torch: a launcher killed now takes this process with it

from covid_ddp.commands.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
