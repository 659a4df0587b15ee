import pytest


@pytest.fixture(scope="session")
def tiny_chatglm_dir(tmp_path_factory):
    """A tiny chatglm3-format checkpoint directory (random weights, trained tokenizer), made once per session."""
    from solver_ppo.models.tiny import make_tiny_chatglm

    return make_tiny_chatglm(tmp_path_factory.mktemp("tiny_chatglm"))
