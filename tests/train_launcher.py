"""Runs scripts/train.py in this process, with optional slow-downs so that a test can kill it at a chosen moment.

    python tests/train_launcher.py [--slow_steps_after N] [--slow_save_at_step N] -- <train.py arguments>
    accelerate launch ... tests/train_launcher.py <train.py arguments>          # no options, no "--"

--slow_steps_after N   sleep 0.5 s after each optimizer step past step N (the run is then still going when the
                       test sees checkpoint N and kills it).
--slow_save_at_step N  sleep 60 s in the middle of writing checkpoint N (after its weights, before its optimizer
                       state), so the test can kill the process during the save.
The sleeps change timing only: the training computation is exactly the script's.
"""

import os
import runpy
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main():
    argv = sys.argv[1:]
    # accelerate launch's parser drops a "--" that comes first among the script's arguments
    options, train_argv = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else ([], argv)
    options = dict(zip(options[::2], (int(value) for value in options[1::2])))

    import transformers

    if "--slow_steps_after" in options:
        after = options["--slow_steps_after"]

        class SlowSteps(transformers.TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step > after:
                    time.sleep(0.5)

        _add_callback(transformers, SlowSteps())
    if "--slow_save_at_step" in options:
        at_step = options["--slow_save_at_step"]
        save_optimizer = transformers.Trainer._save_optimizer_and_scheduler

        def slow_save_optimizer(self, output_dir):
            if self.state.global_step == at_step:
                Path(output_dir, "SAVING").write_text("")  # tells the test that the save is under way
                time.sleep(60)
            return save_optimizer(self, output_dir)

        transformers.Trainer._save_optimizer_and_scheduler = slow_save_optimizer

    sys.argv = [str(ROOT / "scripts" / "train.py"), *train_argv]
    runpy.run_path(sys.argv[0], run_name="__main__")


def _add_callback(transformers, callback):
    init = transformers.Trainer.__init__

    def init_with_callback(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.add_callback(callback)

    transformers.Trainer.__init__ = init_with_callback


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
