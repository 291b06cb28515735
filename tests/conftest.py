import atexit
import gc
import os

import pytest
from helpers import run_train
from streaming.base.shared import memory as streaming_memory


class _StreamingCleanups:
    """Stands in for the `atexit` module inside Streaming's shared-memory wrapper, in the pytest process only.

    Streaming registers every shared-memory segment it creates or opens (each dataset's, and every existing
    prefix a new dataset peeks at) with `atexit`, so in one long pytest process none is ever closed: each new
    dataset opens all earlier ones again, and the open files grow with the square of the datasets made, past the
    machine's limit ("Too many open files") in a full run. Here the cleanups are kept and run after each test
    module instead (no dataset outlives its module: the session fixtures hand out folders, not datasets).
    Other processes (forked DataLoader workers) register with the real `atexit`, as Streaming does.
    """

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.pending = []

    def register(self, cleanup):
        if os.getpid() != self.pid:
            return atexit.register(cleanup)
        self.pending.append(cleanup)
        return cleanup

    def run(self) -> None:
        gc.collect()  # the module's datasets, so that nothing still views their segments
        for cleanup in self.pending:
            try:
                cleanup()
            except BufferError:  # a segment still viewed by a live object: left for the process exit
                atexit.register(cleanup)
        self.pending.clear()


_STREAMING_CLEANUPS = _StreamingCleanups()
streaming_memory.atexit = _STREAMING_CLEANUPS


@pytest.fixture(autouse=True, scope="module")
def release_streaming_shared_memory():
    yield
    _STREAMING_CLEANUPS.run()


@pytest.fixture(scope="session")
def demo_mds(tmp_path_factory):
    """The quickstart's demo dataset with cached latents, made once by a 1-batch quickstart run."""
    root = tmp_path_factory.mktemp("demo")
    result = run_train(["max_duration=1ba", "parallelism_config=null", "eval_loader=null", "run_name=setup"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    mds = root / "data" / "quickstart_mds"
    assert (mds / "index.json").exists()
    return mds
