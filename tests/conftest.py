
import pytest
import torch

# Two cores: keep intra-op threads low so parallel test workers do not oversubscribe.
torch.set_num_threads(1)


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


