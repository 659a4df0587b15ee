"""Rollout record: minibatch slicing, device moves, and the partial-KL mask."""

from types import SimpleNamespace

import pytest
import torch

from solver_ppo.ppo.rollout import Rollout, concat_rollouts, first_token_at, partial_kl_mask, truncated_rows


def make_rollout(B: int = 7, P: int = 3, R: int = 4) -> Rollout:
    rows = torch.arange(B, dtype=torch.float32)
    per_token = rows[:, None].expand(B, R).clone()
    return Rollout(
        problems=[SimpleNamespace(id=f"p{i}") for i in range(B)],
        responses=[f"response {i}" for i in range(B)],
        sequences=torch.arange(B)[:, None].expand(B, P + R).clone(),
        attention_mask=torch.ones(B, P + R, dtype=torch.long),
        prompt_length=P,
        response_mask=torch.ones(B, R),
        old_logprobs=per_token,
        values=per_token + 100,
        scores=rows,
        breakdowns=[{"row": i} for i in range(B)],
        advantages=per_token * 2,
    )


def test_minibatches_cover_every_row_once_per_epoch():
    rollout = make_rollout(B=7)
    generator = torch.Generator().manual_seed(0)
    orders = []
    for _ in range(3):  # epochs
        seen = []
        sizes = []
        for mb in rollout.minibatches(3, generator):
            sizes.append(len(mb))
            rows = mb.sequences[:, 0].tolist()
            # every field of a minibatch row comes from the same original row
            assert mb.scores.tolist() == rows
            assert mb.old_logprobs[:, 0].tolist() == rows
            assert mb.values[:, -1].tolist() == [r + 100 for r in rows]
            assert mb.ids == [f"p{r}" for r in rows]
            assert mb.responses == [f"response {r}" for r in rows]
            assert [b["row"] for b in mb.breakdowns] == rows
            assert mb.ref_logprobs is None and mb.prompt_length == 3
            seen.extend(rows)
        assert sizes == [3, 3, 1]
        assert sorted(seen) == list(range(7))
        orders.append(seen)
    assert orders[0] != list(range(7)) or orders[1] != list(range(7))  # shuffled
    assert len({tuple(o) for o in orders}) > 1  # a fresh permutation each epoch


def test_minibatches_reproducible_by_generator():
    rollout = make_rollout(B=9)
    first = [mb.sequences[:, 0].tolist() for mb in rollout.minibatches(4, torch.Generator().manual_seed(5))]
    again = [mb.sequences[:, 0].tolist() for mb in rollout.minibatches(4, torch.Generator().manual_seed(5))]
    assert first == again
    with pytest.raises(ValueError, match="got 0"):
        next(rollout.minibatches(0))


def test_to_moves_tensors_and_keeps_the_rest():
    moved = make_rollout().to("meta")
    assert moved.sequences.device.type == "meta" and moved.scores.device.type == "meta"
    assert moved.responses[0] == "response 0" and moved.kl is None and len(moved) == 7


class CharTokenizer:
    """A toy vocabulary of strings: decode concatenates them (some tokens span several characters)."""

    def __init__(self, vocab: list[str]):
        self.vocab = vocab

    def decode(self, token_ids: list[int]) -> str:
        return "".join(self.vocab[i] for i in token_ids)

    def encode(self, pieces: list[str]) -> list[int]:
        return [self.vocab.index(p) for p in pieces]


VOCAB = ["<pad>", "a", "b", " ", "\n", "``", "`lp", "```lp\n", "<mod", "el>", "x", "Max", "```", "</model>"]


def test_first_token_at_by_hand():
    tok = CharTokenizer(VOCAB)
    ids = tok.encode(["a", "b", "Max", "x"])  # text "abMaxx"
    assert [first_token_at(ids, off, tok) for off in range(6)] == [0, 1, 2, 2, 2, 3]


def test_partial_kl_mask_marks_block_start_onwards():
    tok = CharTokenizer(VOCAB)
    rows = [
        ["a", " ", "b", "```lp\n", "Max", "x", "```"],  # fence in one token at index 3
        ["a", "\n", "``", "`lp", "\n", "x"],  # fence split over tokens 2 and 3: starts in token 2
        ["b", "<mod", "el>", "x", "</model>"],  # <model> starts in token 1
        ["a", "b", "x"],  # no block: penalized everywhere
    ]
    R = 8
    ids = torch.zeros(len(rows), R, dtype=torch.long)
    mask = torch.zeros(len(rows), R)
    for i, pieces in enumerate(rows):
        ids[i, : len(pieces)] = torch.tensor(tok.encode(pieces))
        mask[i, : len(pieces)] = 1
    out = partial_kl_mask(ids, mask, tok)
    assert out.tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 0],
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0, 0, 0, 0],
    ]
    assert out.dtype == torch.float32


def test_concat_rollouts_pads_prompts_left_and_responses_right():
    wide_prompt, long_response = make_rollout(B=2, P=3, R=2), make_rollout(B=1, P=2, R=4)
    long_response.sequences += 10
    merged = concat_rollouts([wide_prompt, long_response], pad_token_id=-1)
    assert merged.prompt_length == 3 and merged.sequences.shape == (3, 7)
    assert merged.sequences.tolist() == [[0, 0, 0, 0, 0, -1, -1], [1, 1, 1, 1, 1, -1, -1], [-1, 10, 10, 10, 10, 10, 10]]
    assert merged.attention_mask.tolist() == [[1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 0, 0], [0, 1, 1, 1, 1, 1, 1]]
    assert merged.response_mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert merged.old_logprobs.tolist() == [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
    assert merged.scores.tolist() == [0, 1, 0] and merged.ids == ["p0", "p1", "p0"]
    assert merged.ref_logprobs is None and len(merged.breakdowns) == 3


def test_truncated_rows_end_without_a_stop_token():
    ids = torch.tensor([[5, 2, 0], [5, 6, 7], [2, 0, 0]])  # stop token 2
    mask = torch.tensor([[1, 1, 0], [1, 1, 1], [1, 0, 0]])
    assert truncated_rows(ids, mask, [2]).tolist() == [False, True, False]
