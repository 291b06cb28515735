import pytest
from helpers import run_train


@pytest.fixture(scope="session")
def demo_mds(tmp_path_factory):
    """The quickstart's demo dataset with cached latents, made once by a 1-batch quickstart run."""
    root = tmp_path_factory.mktemp("demo")
    result = run_train(["max_duration=1ba", "parallelism_config=null", "eval_loader=null", "run_name=setup"], root)
    assert result.returncode == 0, result.stderr[-3000:]
    mds = root / "data" / "quickstart_mds"
    assert (mds / "index.json").exists()
    return mds
