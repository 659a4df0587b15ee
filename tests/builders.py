"""Small model and instance builders shared by several test files."""

from __future__ import annotations

import random
import socket

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from solver_ppo.evaluation import Constraint, Model, Variable
from solver_ppo.evaluation.model import quad_key

PAD = 0


def market_split(m: int = 4, n: int = 40, seed: int = 1) -> str:
    """A random market-split instance (LP text): tiny, and far beyond SCIP in a second."""
    rng = random.Random(seed)
    lines = ["Minimize", " obj: " + " + ".join(f"x{j}" for j in range(n)), "Subject To"]
    for i in range(m):
        a = [rng.randint(0, 99) for _ in range(n)]
        lines.append(f" s{i}: " + " + ".join(f"{c} x{j}" for j, c in enumerate(a)) + f" = {sum(a) // 2}")
    lines += ["Binaries", " " + " ".join(f"x{j}" for j in range(n)), "End"]
    return "\n".join(lines)


def tiny_llama(seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with 61 tokens (pad 0, bos 1, eos 2), in eval mode."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=61, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=PAD, bos_token_id=1, eos_token_id=2,
    )
    return LlamaForCausalLM(cfg).eval()


def answer_token_loss(model_dir, problems_path, system_prompt: str | None, instruction: str | None) -> float:
    """Token-mean cross-entropy of the reference answers and their stop token, given the prompts
    (`build_messages`: None is the default text): what SFT's sft/val_loss reports."""
    from solver_ppo.data.formats import iter_problems
    from solver_ppo.data.prompts import answer_text, build_messages
    from solver_ppo.models.config import ModelConfig
    from solver_ppo.models.loading import load_model

    loaded = load_model(ModelConfig(family="chatglm", path=str(model_dir)))
    total, tokens = 0.0, 0
    for problem in iter_problems(problems_path):
        prompt = loaded.chat.encode_prompt(loaded.tokenizer, build_messages(problem, system_prompt, instruction))
        target = loaded.tokenizer.encode(answer_text(problem), add_special_tokens=False) + [loaded.chat.stop_token_ids[0]]
        ids = torch.tensor([prompt + target])
        with torch.no_grad():
            logits = loaded.model(input_ids=ids).logits[0, len(prompt) - 1 : -1]
        total += torch.nn.functional.cross_entropy(logits.float(), ids[0, len(prompt) :], reduction="sum").item()
        tokens += len(target)
    return total / tokens


def renamed_shuffled(m: Model, seed: int, negate: bool = True, scale: bool = True, row_name: str | None = None) -> Model:
    """The same model: new names, shuffled order, rows negated (sense flipped) and scaled;
    `row_name` gives every row that one name (names are labels, not keys)."""
    rng = random.Random(seed)
    names = {v.name: f"v{rng.randrange(10**6)}_{k}" for k, v in enumerate(m.variables)}
    variables = [Variable(names[v.name], v.vtype, v.lb, v.ub, v.obj) for v in m.variables]
    rng.shuffle(variables)
    rows = []
    for k, c in enumerate(m.constraints):
        f = rng.choice([-1.0, 1.0]) if negate else 1.0
        f *= rng.choice([1.0, 2.0, 0.5, 10.0]) if scale else 1.0
        sense = {"<=": ">=", ">=": "<=", "=": "="}[c.sense] if f < 0 else c.sense
        items = list(c.coefs.items())
        rng.shuffle(items)
        quad = {quad_key(names[a], names[b]): f * q for (a, b), q in c.quad.items()}
        rows.append(Constraint(row_name or f"row{k}", {names[n]: f * a for n, a in items}, sense, f * c.rhs, quad))
    rng.shuffle(rows)
    quad_obj = {quad_key(names[a], names[b]): q for (a, b), q in m.quad_obj.items()}
    return Model(variables, rows, m.sense, m.obj_constant, quad_obj)


def scripted_generation(policy, tokenizer, prompts: list[list[int]], texts: list[str], elapsed_s: float = 0.0):
    """What `policy.generate` returns when its answers to `prompts` are `texts` (each ended by the
    stop token): for tests that script a policy's answers."""
    from solver_ppo.models.generation import Generation, left_pad

    responses = [tokenizer.encode(t, add_special_tokens=False) + [policy.stop_token_ids[0]] for t in texts]
    prompt_ids, prompt_mask = left_pad(prompts, policy.pad_token_id)  # (B, P)
    R = max(len(r) for r in responses)
    response_ids = torch.full((len(prompts), R), policy.pad_token_id, dtype=torch.long)  # (B, R)
    response_mask = torch.zeros((len(prompts), R), dtype=torch.bool)
    for row, ids in enumerate(responses):
        response_ids[row, : len(ids)] = torch.tensor(ids)
        response_mask[row, : len(ids)] = True
    return Generation(sequences=torch.cat([prompt_ids, response_ids], dim=1),
                      attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1),
                      prompt_length=prompt_ids.shape[1], response_mask=response_mask,
                      response_lengths=response_mask.sum(-1), tokens_per_second=0.0, elapsed_s=elapsed_s)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for launchers that would otherwise take a fixed one
    (torchrun 29500, fabric run 29400) and collide with a run in the other pytest worker."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
