import pytest


@pytest.fixture(scope="session")
def tiny_chatglm_dir(tmp_path_factory):
    """A tiny chatglm3-format checkpoint directory (random weights, trained tokenizer), made once per session."""
    from app.models.tiny import make_tiny_chatglm

    return make_tiny_chatglm(tmp_path_factory.mktemp("tiny_chatglm"))


def pytest_collection_modifyitems(config, items):
    """Slow tests first: under `-n 2` the long training and DDP runs start early and the quick
    tests fill the gaps, rather than one worker finishing alone on a long run at the end."""
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)
