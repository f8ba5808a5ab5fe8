"""`python -m trainer ...`. Its first act: a SIGTERM that lands while `train` imports its modules
(seconds on a busy machine) is kept for the run, which then ends at its first step with a result
(train.install_sigterm). In a box the trainer is PID 1, and PID 1 ignores a signal it has no
handler for: the runner's SIGKILL would come 10 s later, and the run would leave no result."""
import signal
import sys


class EarlySigterm:
    requested = False

    def __call__(self, signum, frame):
        self.requested = True


early = EarlySigterm()
signal.signal(signal.SIGTERM, early)

from trainer.cli import main  # noqa: E402  (after the handler, on purpose)

if sys.argv[1:2] != ["train"]:  # every other command dies of a SIGTERM, as programs do
    if early.requested:
        sys.exit(128 + signal.SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
sys.exit(main())
