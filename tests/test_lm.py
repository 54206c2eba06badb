"""The multi-exit causal LM: contract, KV cache, per-token early exit with CALM fills, bad input.

Correctness is checked in float64 against independent slow references: a full forward without
cache, and a cache-free re-implementation of per-token early exit (copied-up states, attention
written out by hand), so the cached, batched, shrinking-batch decoder has a known answer.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optdepth.errors import CheckpointError, DataError
from optdepth.losses import create_regularizer, multi_exit_cross_entropy
from optdepth.models import create_model
from optdepth.models.causal_lm import CausalLM
from optdepth.online.generation import _Decoder, encode_prompts, generate, teacher_forced_decode
from optdepth.stopping import ThresholdPolicy
from optdepth.traces import FEATURES, step_features

MAX_PROB = FEATURES.index("max_prob")


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_lm(seed: int = 0, **kwargs) -> CausalLM:
    torch.manual_seed(seed)
    model = create_model("lm_tiny", **kwargs).double().eval()
    with torch.no_grad():  # larger weights than the GPT init: exits disagree, max_prob spreads
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    return model


def threshold_policy(model: CausalLM, threshold: float) -> ThresholdPolicy:
    """A max_prob threshold fitted (shape only) for this model's T exits and the trace FEATURES."""
    t = model.num_exits
    return ThresholdPolicy(MAX_PROB, threshold=threshold).fit(np.zeros((2, t)),
                                                              np.zeros((2, t, len(FEATURES))))


def median_threshold(model: CausalLM) -> float:
    """A threshold between two observed max_prob values near their median (no ties possible)."""
    ids = torch.randint(0, 256, (4, model.context), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        probs = model(ids).logits[:-1].softmax(-1).amax(-1).flatten().sort().values
    mid = len(probs) // 2
    return float(probs[mid] + probs[mid + 1]) / 2


PROMPTS = ["def f(x):", "import os\n", "ab"]


# ----------------------------------------------------------------------------- the contract
def test_contract_shapes_costs_and_losses():
    model = tiny_lm()
    ids = torch.randint(0, 256, (2, 7))
    out = model(ids)
    t = model.num_exits
    assert out.logits.shape == (t, 14, 256)
    assert out.residual_norms.shape == out.state_norms.shape == (t, 14)
    costs = model.exit_costs()
    assert costs.shape == (t,) and costs[-1] == 1.0 and bool((costs.diff() > 0).all())
    # the CALM fills are charged: exit 0 costs more than its share of layers
    assert costs[0] > model.layer_fractions()[0]
    torch.testing.assert_close(model.forward_final(ids), out.logits[-1])
    targets = torch.randint(0, 256, (14,))
    ce = multi_exit_cross_entropy(out.logits, targets)
    reg = create_regularizer("relative", beta=0.5)(out)
    assert torch.isfinite(ce) and reg > 0


def test_row_b_s_predicts_next_token_of_sequence_b():
    """Flattening is (batch, seq): a row's logits depend on its own prefix only (causality)."""
    model = tiny_lm()
    ids = torch.randint(0, 256, (2, 6))
    changed = ids.clone()
    changed[1, 4] = (changed[1, 4] + 1) % 256
    a, b = model(ids).logits, model(changed).logits
    same = torch.ones(12, dtype=torch.bool)
    same[6 + 4:] = False  # rows b*S + s of sequence 1 from position 4 on see the change
    torch.testing.assert_close(a[:, same], b[:, same])
    assert not torch.allclose(a[:, ~same], b[:, ~same])


# ----------------------------------------------------------------------------- KV cache
def test_cached_decoding_matches_the_uncached_forward():
    model = tiny_lm()
    ids = torch.randint(0, 256, (2, model.context))
    full = model(ids).logits[-1].view(2, model.context, 256)
    cache = model.new_cache(2)
    prompt = 5
    logits = [model.prefill(ids[:, :prompt], torch.tensor([prompt, prompt]), cache)]
    decoder = _Decoder(model, None)
    with torch.no_grad():
        for s in range(prompt, model.context):
            logits.append(decoder.step(ids[:, s], cache)[0])
    torch.testing.assert_close(torch.stack(logits, 1), full[:, prompt - 1:], rtol=0, atol=1e-10)


def test_prefill_of_right_padded_prompts_matches_each_prompt_alone():
    model = tiny_lm()
    encoded = encode_prompts(PROMPTS)
    batch = generate(model, PROMPTS, 12)
    for b, prompt in enumerate(encoded):
        alone = model(torch.tensor([prompt])).logits[-1, -1]
        assert batch.tokens[b, 0] == int(alone.argmax())
        assert batch.prompt_lengths[b] == len(prompt)


@pytest.mark.parametrize("early_exit", [False, True])
def test_batched_and_one_by_one_decoding_agree(early_exit):
    model = tiny_lm()
    policy = threshold_policy(model, median_threshold(model)) if early_exit else None
    batch = generate(model, PROMPTS, 16, policy=policy)
    for b, prompt in enumerate(PROMPTS):
        alone = generate(model, prompt, 16, policy=policy)
        np.testing.assert_array_equal(alone.tokens[0], batch.tokens[b])
        np.testing.assert_array_equal(alone.exit_index[0], batch.exit_index[b])


# ----------------------------------------------------------------------------- early exit
def test_a_policy_that_never_exits_reproduces_full_depth_generation():
    model = tiny_lm()
    never = threshold_policy(model, 2.0)  # max_prob never reaches 2
    full = generate(model, PROMPTS, 20)
    early = generate(model, PROMPTS, 20, policy=never)
    np.testing.assert_array_equal(early.tokens, full.tokens)
    assert (early.exit_index == model.num_exits - 1).all() and early.mean_compute == 1.0


def reference_early_exit(model: CausalLM, prompt: list[int], n_new: int,
                         policy: ThresholdPolicy) -> tuple[list[int], list[int]]:
    """Per-token early exit without a cache, written out by hand (the slow known answer).

    inputs[l][p] is the state entering layer l at position p; a token that exited after layer
    e has inputs[layer][p] = its exited state for every layer > e + 1 (CALM: copied up). Every step
    recomputes each layer's keys/values for the whole prefix from these states.
    """
    costs = model.exit_costs().numpy()
    n_layers, last = model.num_blocks, model.num_exits - 1
    inputs: list[list[torch.Tensor]] = [[] for _ in range(n_layers)]
    seq, exits = list(prompt), []

    def run(p: int, exit_at: int | None) -> tuple[torch.Tensor, int]:
        h = model.embed.weight[seq[p]] + model.pos.weight[p]
        previous, history = None, np.zeros((1, model.num_exits, len(FEATURES)), np.float32)
        for layer, block in enumerate(model.blocks):
            inputs[layer].append(h)
            attn = block.attn
            a = block.ln1(torch.stack(inputs[layer]))  # (p + 1, D)
            q = attn.q(a[-1]).view(attn.heads, -1)
            k, v = (x.view(p + 1, attn.heads, -1) for x in attn.kv(a).chunk(2, dim=-1))
            w = torch.einsum("hd,phd->hp", q, k).div(math.sqrt(attn.head_dim)).softmax(-1)
            new = block.finish(h, attn.proj(torch.einsum("hp,phd->hd", w, v).reshape(-1)))
            logits = model.exit_logits(new, layer)
            probs = logits.float().softmax(-1).numpy()[None]
            rel = ((new - h).float().norm() / h.float().norm()).numpy()[None]
            history[:, layer] = step_features(probs, previous, rel, costs[layer])
            previous, h = probs.argmax(-1), new
            stop = layer == last if exit_at is None else layer == exit_at
            if exit_at is None and layer < last:
                stop = bool(policy.stop_at(history[:, : layer + 1], layer)[0])
            if stop:
                for above in range(layer + 1, n_layers):  # CALM: the exited state, copied up
                    inputs[above].append(h)
                return logits, layer
        raise AssertionError("unreachable")

    with torch.no_grad():
        for p in range(len(prompt)):  # prefill: full depth
            logits, _ = run(p, last)
        seq.append(int(logits.argmax()))
        exits.append(last)
        for _ in range(n_new - 1):
            logits, e = run(len(seq) - 1, None)
            seq.append(int(logits.argmax()))
            exits.append(e)
    return seq[len(prompt):], exits


def test_early_exit_matches_the_cache_free_reference():
    model = tiny_lm()
    policy = threshold_policy(model, median_threshold(model))
    result = generate(model, PROMPTS, 18, policy=policy)
    all_exits = set()
    for b, prompt in enumerate(encode_prompts(PROMPTS)):
        tokens, exits = reference_early_exit(model, prompt, 18, policy)
        assert result.tokens[b].tolist() == tokens
        assert result.exit_index[b].tolist() == exits
        all_exits |= set(exits[1:])
    assert len(all_exits) >= 2, "the policy should stop tokens at different layers"
    np.testing.assert_allclose(result.compute, model.exit_costs().numpy()[result.exit_index])


def test_calm_fill_writes_the_copied_up_keys_and_values():
    model = tiny_lm()
    first_exit = threshold_policy(model, -1.0)  # every token stops at exit 0
    cache = model.new_cache(2)
    ids = torch.tensor([[1, 2, 3], [4, 5, 6]])
    with torch.no_grad():
        model.prefill(ids, torch.tensor([3, 3]), cache)
        _, exits = _Decoder(model, first_exit).step(torch.tensor([7, 8]), cache)
        assert exits.tolist() == [0, 0] and cache.lengths.tolist() == [4, 4]
        full = torch.cat([ids, torch.tensor([[7], [8]])], dim=1)
        h1 = model.blocks[0](model.stem(full))[:, 3]  # the new token's state after layer 0
        for layer in range(1, model.num_blocks):
            k, v = model.blocks[layer].attn.keys_values(model.blocks[layer].ln1(h1)[:, None])
            torch.testing.assert_close(cache.keys[layer, :, :, 3], k[:, :, 0], rtol=0, atol=1e-12)
            torch.testing.assert_close(cache.values[layer, :, :, 3], v[:, :, 0], rtol=0, atol=1e-12)


def test_teacher_forced_decoding_matches_the_full_forward_at_full_depth():
    model = tiny_lm()
    inputs = torch.randint(0, 256, (3, 12), generator=torch.Generator().manual_seed(1))
    expected = model(inputs).logits[-1].argmax(-1).view(3, 12).numpy()
    for policy in (None, threshold_policy(model, 2.0)):
        preds, exits = teacher_forced_decode(model, inputs, policy, batch_size=2)
        np.testing.assert_array_equal(preds, expected)
        assert (exits == model.num_exits - 1).all()
    preds, exits = teacher_forced_decode(model, inputs, threshold_policy(model, -1.0))
    assert (exits[:, 1:] == 0).all() and (exits[:, 0] == model.num_exits - 1).all()


# ----------------------------------------------------------------------------- sampling
def test_sampling_is_seeded_and_top_k_1_is_greedy():
    model = tiny_lm()
    a = generate(model, PROMPTS, 10, temperature=1.0, seed=3)
    b = generate(model, PROMPTS, 10, temperature=1.0, seed=3)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    greedy = generate(model, PROMPTS, 10)
    top1 = generate(model, PROMPTS, 10, temperature=0.7, top_k=1, seed=0)
    np.testing.assert_array_equal(top1.tokens, greedy.tokens)
    assert isinstance(a.texts[0], str)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("prompts, message", [
    ("", "empty"), ([], "at least one prompt"), (["ok", ""], "empty"),
    ([1, 2, 256], "unknown token id 256"), ([[3, -1]], "unknown token id -1"),
    ("x" * 40, "context"),
])
def test_bad_prompts_raise_clear_errors(prompts, message):
    with pytest.raises(DataError, match=message):
        generate(tiny_lm(), prompts, 1)


def test_prompt_plus_new_tokens_over_the_context_is_refused():
    with pytest.raises(DataError, match="does not fit the model's context of 32"):
        generate(tiny_lm(), "x" * 30, 4)
    assert generate(tiny_lm(), "x" * 30, 3).tokens.shape == (1, 3)


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be > 0"), ({"temperature": -1}, "temperature"),
    ({"top_k": 0}, "top_k"), ({"max_new_tokens": 0}, "max_new_tokens"),
])
def test_bad_sampling_settings_raise(kwargs, message):
    kwargs = {"max_new_tokens": 2, **kwargs}
    with pytest.raises(ValueError, match=message):
        generate(tiny_lm(), "ab", **kwargs)


def test_a_policy_of_another_model_is_refused():
    model = tiny_lm()
    other = ThresholdPolicy(MAX_PROB, threshold=0.5).fit(np.zeros((2, 5)),
                                                          np.zeros((2, 5, len(FEATURES))))
    with pytest.raises(ValueError, match="5 exits"):
        generate(model, "ab", 2, policy=other)


def test_bad_token_tensors_raise_data_errors():
    model = tiny_lm()
    with pytest.raises(DataError, match="int64"):
        model(torch.zeros(2, 3))
    with pytest.raises(DataError, match="longer than the model's context"):
        model(torch.zeros(1, 33, dtype=torch.int64))


def test_a_checkpoint_of_another_model_is_refused(tmp_path):
    from optdepth.checkpoints import load_model, save_checkpoint
    from optdepth.models.causal_lm import CausalLM

    resnet = create_model("resnet20")
    save_checkpoint(tmp_path / "resnet.pt", {"arch": {"name": "resnet20", "kwargs": {}},
                                             "state_dict": resnet.state_dict()})
    with pytest.raises(CheckpointError, match="not a CausalLM"):
        load_model(tmp_path / "resnet.pt", model_type=CausalLM)
