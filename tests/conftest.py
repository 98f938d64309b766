import pytest
import torch

from resnet_det.data import register_all_builtins

from engine_utils import make_tiny_shapes

# Two cores: keep intra-op threads low so parallel test workers do not oversubscribe.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA GPU; `pytest -m cuda` runs only these (benchmarks/gpu_check.py on a lent "
                   "GPU); skipped where CUDA is not available")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA is not available on this machine: the cuda subset runs on a GPU "
                                   "(`pytest -m cuda`, benchmarks/gpu_check.py)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def datasets_root(tmp_path, monkeypatch):
    """An empty data sets root for tests that must not touch ./datasets."""
    root = tmp_path / "datasets"
    root.mkdir()
    monkeypatch.setenv("RESNET_DET_DATASETS", str(root))
    return root


@pytest.fixture(scope="module")
def shapes_root(tmp_path_factory):
    """A tiny shapes set (12 train / 4 val) that the built-in catalog names point at for one test module
    (in-process training); the default registration comes back afterwards."""
    root = make_tiny_shapes(str(tmp_path_factory.mktemp("datasets")))
    register_all_builtins(root)
    yield root
    register_all_builtins()
