"""optdepth.wrap on transformers causal LMs (GPT-2, Llama, Qwen2), and self-speculative decoding.

Known answers: the wrapped model's last exit is the original model's logits; its cached
full-depth generation is transformers' own ``generate(do_sample=False)``; self-speculative
output is full-depth greedy output (ours and wrapped models); the CALM fills write the keys and
values the layer's own attention computes; per-token early exit equals a cache-free reference
that runs the user's layers over the copied-up states. Tiny random-init models in float64, with
weights large enough that exits disagree and no two logits tie.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import require_extra

import optdepth
from optdepth.errors import ConfigError, DataError
from optdepth.losses import create_regularizer, multi_exit_cross_entropy
from optdepth.models import create_model
from optdepth.online.generation import generate, teacher_forced_decode
from optdepth.stopping import ThresholdPolicy
from optdepth.traces import FEATURES, step_features

transformers = require_extra("transformers")
pytestmark = pytest.mark.usefixtures("one_thread")
FAMILIES = ("gpt2", "llama", "qwen2")
VOCAB, CONTEXT = 64, 48


def hf_model(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random transformers causal LM of ``family`` (4 layers, D=32), float64, eval."""
    torch.manual_seed(seed)
    if family == "gpt2":
        config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=4, n_head=4,
                                         n_positions=CONTEXT, initializer_range=0.3,
                                         resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                         bos_token_id=None, eos_token_id=None)
        return transformers.GPT2LMHeadModel(config).double().eval()
    common = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, intermediate_size=64, max_position_embeddings=CONTEXT,
                  initializer_range=0.3, bos_token_id=None, eos_token_id=None)
    if family == "llama":
        return transformers.LlamaForCausalLM(transformers.LlamaConfig(**common)).double().eval()
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common)).double().eval()


def prompts(seed: int = 1, batch: int = 2, length: int = 7) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def max_prob_policy(model, threshold: float) -> ThresholdPolicy:
    t = model.num_exits
    return ThresholdPolicy(FEATURES.index("max_prob"), threshold=threshold).fit(
        np.zeros((2, t)), np.zeros((2, t, len(FEATURES))))


# ----------------------------------------------------------------------------- the contract
@pytest.mark.parametrize("family", FAMILIES)
def test_last_exit_is_the_original_model(family):
    lm = hf_model(family)
    model = optdepth.wrap(lm)
    ids = prompts(batch=3, length=10)
    with torch.no_grad():
        reference = lm(input_ids=ids).logits.flatten(0, 1)
        out = model(ids)
        final = model.forward_final(ids)
    assert out.logits.shape == (4, 30, VOCAB) and out.residual_norms.shape == (4, 30)
    torch.testing.assert_close(out.logits[-1], reference, rtol=0, atol=1e-10)
    torch.testing.assert_close(final, reference, rtol=0, atol=0)
    costs = model.exit_costs()
    assert costs[-1] == 1.0 and bool((costs.diff() > 0).all())


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_until_runs_no_layer_beyond_the_exit(family):
    lm = hf_model(family)
    model = optdepth.wrap(lm, exits=[1, 3])
    ran = []
    for i, layer in enumerate(model._parts.layers):
        layer.register_forward_hook(lambda *_, i=i: ran.append(i))
    with torch.no_grad():
        out = model.forward_until(prompts(), 0)
    assert ran == [0, 1] and out.logits.shape[0] == 1 and out.residual_norms.shape[0] == 2


# ----------------------------------------------------------------------------- decoding
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_generation_equals_transformers_generate(family):
    lm = hf_model(family)
    ids = prompts()
    expected = lm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                           min_new_tokens=12, do_sample=False,
                           pad_token_id=0)[:, ids.shape[1]:]
    result = optdepth.generate(optdepth.wrap(lm), ids, 12)
    np.testing.assert_array_equal(result.tokens, expected.numpy())


@pytest.mark.parametrize("family", FAMILIES)
def test_self_speculative_output_equals_full_depth_greedy(family):
    model = optdepth.wrap(hf_model(family))
    ragged = [prompts(2, 1, 3)[0], prompts(3, 1, 9)[0], prompts(4, 1, 5)[0]]
    full = generate(model, ragged, 14)
    for draft_exit, tokens in ((0, 3), (1, 4), (2, 1)):
        spec = generate(model, ragged, 14, draft_exit=draft_exit, draft_tokens=tokens)
        np.testing.assert_array_equal(spec.tokens, full.tokens)
        assert 0 <= spec.acceptance_rate <= 1 and spec.tokens_per_round >= 1


def test_self_speculative_decoding_of_our_lm_is_lossless():
    torch.manual_seed(0)
    model = create_model("lm_tiny").double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8.0 if p.dim() > 1 else 1.0)
    batch = ["def f(x):", "import os\n", "ab"]
    full = generate(model, batch, 20)
    for draft_exit in (0, 1):
        spec = generate(model, batch, 20, draft_exit=draft_exit, draft_tokens=4)
        np.testing.assert_array_equal(spec.tokens, full.tokens)
    agreeing = generate(model, batch, 20, draft_exit=1, draft_tokens=4)
    assert agreeing.drafted.sum() >= agreeing.accepted.sum() >= 0


@pytest.mark.parametrize("family", FAMILIES)
def test_calm_fill_writes_what_the_layer_itself_computes(family):
    """fill_kv (norm and K/V projection only) against the keys/values the layer's own attention
    writes when it decodes the same state at the same position (rotary included)."""
    model = optdepth.wrap(hf_model(family))
    with torch.no_grad():
        decoded, filled = model.new_cache(2), model.new_cache(2)
        for cache in (decoded, filled):
            model.prefill(prompts(length=5), torch.tensor([5, 5]), cache)
        h = torch.randn(2, 32, dtype=torch.float64)
        at = torch.tensor([5, 5])
        model.decode_layer(2, h[:, None], decoded, None, at)
        model.fill_kv(2, h, filled, None, at)
    torch.testing.assert_close(filled.layers[2].keys[:, :, 5], decoded.layers[2].keys[:, :, 5])
    torch.testing.assert_close(filled.layers[2].values[:, :, 5], decoded.layers[2].values[:, :, 5])


def reference_early_exit(model, prompt: torch.Tensor, n_new: int, policy) -> tuple[list, list]:
    """Per-token early exit without a cache: the user's layers run over the whole sequence of
    each layer's input states, where a token that exited before a layer enters it with its
    exited state (CALM: copied up)."""
    costs = model.exit_costs().numpy()
    last, zero = model.num_exits - 1, torch.zeros(1, dtype=torch.int64)
    inputs = [[] for _ in range(model.num_blocks)]
    seq, exits = prompt.tolist(), []

    def run(p: int, full: bool) -> tuple[torch.Tensor, int]:
        h = model.embed_at(torch.tensor([[seq[p]]]), torch.tensor([p]))[0, 0]
        previous, history = None, np.zeros((1, model.num_exits, len(FEATURES)), np.float32)
        for layer in range(model.num_blocks):
            inputs[layer].append(h)
            states = torch.stack(inputs[layer])[None]  # (1, p + 1, D)
            new = model._call_layer(layer, states, None, zero, prefix=True)[0, -1]
            logits = model.exit_logits(new, layer)
            probs = logits.float().softmax(-1).numpy()[None]
            rel = ((new - h).float().norm() / h.float().norm()).numpy()[None]
            history[:, layer] = step_features(probs, previous, rel, costs[layer])
            previous, h = probs.argmax(-1), new
            stop = layer == last or (not full and bool(policy.stop_at(history[:, :layer + 1],
                                                                        layer)[0]))
            if stop:
                for above in range(layer + 1, model.num_blocks):
                    inputs[above].append(h)
                return logits, layer
        raise AssertionError("unreachable")

    with torch.no_grad():
        for p in range(len(seq)):
            logits, _ = run(p, True)
        seq.append(int(logits.argmax()))
        exits.append(last)
        for _ in range(n_new - 1):
            logits, e = run(len(seq) - 1, False)
            seq.append(int(logits.argmax()))
            exits.append(e)
    return seq[len(prompt):], exits


@pytest.mark.parametrize("family", FAMILIES)
def test_per_token_early_exit_matches_the_cache_free_reference(family):
    model = optdepth.wrap(hf_model(family))
    with torch.no_grad():
        probs = model(prompts(9, 4, 20)).logits[:-1].softmax(-1).amax(-1).flatten().sort().values
    mid = len(probs) // 2
    policy = max_prob_policy(model, float(probs[mid] + probs[mid + 1]) / 2)
    batch = prompts(5, 3, 6)
    result = generate(model, batch, 12, policy=policy)
    assert len(set(result.exit_index[:, 1:].flatten().tolist())) > 1  # tokens exit at several depths
    for b in range(len(batch)):
        tokens, exits = reference_early_exit(model, batch[b], 12, policy)
        assert result.tokens[b].tolist() == tokens
        assert result.exit_index[b].tolist() == exits


def test_a_policy_that_never_exits_is_full_depth_and_teacher_forcing_runs():
    model = optdepth.wrap(hf_model("llama"))
    never = max_prob_policy(model, 2.0)
    np.testing.assert_array_equal(generate(model, prompts(), 10, policy=never).tokens,
                                  generate(model, prompts(), 10).tokens)
    windows = prompts(6, 3, 16)
    preds, exits = teacher_forced_decode(model, windows, max_prob_policy(model, 0.0))
    assert preds.shape == exits.shape == (3, 16) and set(exits[:, 1:].flatten()) == {0}
    with torch.no_grad():  # the first token of each window is prefilled at full depth
        full = model(windows).logits[-1].argmax(-1).view(3, 16)
    np.testing.assert_array_equal(preds[:, 0], full[:, 0].numpy())


# ----------------------------------------------------------------------------- training
def test_frozen_backbone_trains_only_the_adapters():
    lm = hf_model("gpt2").float()
    model = optdepth.wrap(lm, head="adapter").train()
    assert not lm.training  # a frozen backbone stays in eval mode
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [p for p in model.parameters() if p.requires_grad]
    assert params and all(n.startswith("adapters.") for n, p in model.named_parameters()
                          if p.requires_grad)
    optimizer = torch.optim.SGD(params, lr=0.5)
    regularizer = create_regularizer("distill")
    ids = prompts(7, 4, 16)
    for _ in range(3):
        out = model(ids[:, :-1])
        loss = multi_exit_cross_entropy(out.logits, ids[:, 1:].reshape(-1)) + regularizer(out)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed and all(k.startswith("adapters.") for k in changed)


def test_a_frozen_model_with_the_shared_head_has_nothing_to_train():
    from optdepth.training import LMTrainConfig
    from optdepth.training.trainer import build_optimizer

    with pytest.raises(ConfigError, match="nothing to train.*adapter"):
        build_optimizer(optdepth.wrap(hf_model("gpt2")), LMTrainConfig())


def test_hf_gpt2_trains_evaluates_and_reloads_through_the_pipeline(tmp_path):
    from optdepth.data.text import load_text_corpus
    from optdepth.training import LMTrainConfig

    folder = tmp_path / "text"
    folder.mkdir()
    for i in range(6):
        (folder / f"f{i}.py").write_text("def add(a, b):\n    return a + b\n" * (40 + i))
    corpus = load_text_corpus([str(folder)])
    config = LMTrainConfig(model="hf-gpt2", model_kwargs={"dim": 32, "layers": 3, "heads": 2,
                                                          "context": 32},
                           epochs=1, steps_per_epoch=4, batch_size=4, eval_tokens=256)
    result = optdepth.train(config, tmp_path / "run", data=corpus, progress=False)
    evaluation = optdepth.evaluate_run(tmp_path / "run", data=corpus, progress=False, max_tokens=256)
    assert len(evaluation.summary["exit_accuracy"]) == 3
    reloaded = optdepth.load_model(tmp_path / "run")
    ids = torch.randint(0, 256, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(ids).logits, result.model(ids).logits)
    assert generate(reloaded, "def ", 6).tokens.shape == (1, 6)


def test_hf_gpt2_takes_the_users_weights_and_refuses_another_size(tmp_path):
    from safetensors.torch import save_model

    from optdepth.errors import CheckpointError

    shape = {"dim": 32, "layers": 3, "heads": 2, "context": 32}
    torch.manual_seed(3)
    source = create_model("hf-gpt2", **shape)
    save_model(source.lm, tmp_path / "gpt2.safetensors")  # the tied LM head is stored once
    model = create_model("hf-gpt2", **shape, weights_path=str(tmp_path / "gpt2.safetensors"),
                         head="adapter")
    assert not model.train_backbone and not any(p.requires_grad for p in model.lm.parameters())
    ids = torch.randint(0, 256, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model.forward_final(ids), source.forward_final(ids))
    with pytest.raises(CheckpointError, match="does not fit GPT2LMHeadModel"):
        create_model("hf-gpt2", **{**shape, "dim": 64},
                     weights_path=str(tmp_path / "gpt2.safetensors"))


# ----------------------------------------------------------------------------- bad input
def test_a_model_without_a_layer_list_is_refused_with_what_was_looked_for():
    class NoLayers(torch.nn.Module):
        config = transformers.GPT2Config()

        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 4)

        def get_output_embeddings(self):
            return self.head

    with pytest.raises(ConfigError, match="looked for a ModuleList at transformer.h.*layers="):
        optdepth.wrap(NoLayers())
    with pytest.raises(ConfigError, match="no ModuleList"):
        optdepth.wrap(hf_model("gpt2"), layers="transformer.nothing")


def test_bad_exits_heads_and_decoding_arguments_are_refused():
    lm = hf_model("gpt2")
    with pytest.raises(ConfigError, match="exits"):
        optdepth.wrap(lm, exits=[7])
    with pytest.raises(ConfigError, match="head"):
        optdepth.wrap(lm, head="linear")
    model = optdepth.wrap(lm)
    with pytest.raises(ValueError, match="draft_exit"):
        generate(model, prompts(), 4, draft_exit=3)
    with pytest.raises(ValueError, match="not both"):
        generate(model, prompts(), 4, draft_exit=0, policy=max_prob_policy(model, 0.5))
    with pytest.raises(DataError, match="unknown token id 64"):
        generate(model, [[1, 64]], 4)
    with pytest.raises(DataError, match="tokenizer"):
        generate(model, "some text", 4)


def test_a_sliding_window_shorter_than_the_context_is_refused():
    config = transformers.MistralConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2,
                                        intermediate_size=64, max_position_embeddings=CONTEXT,
                                        sliding_window=16)
    with pytest.raises(ConfigError, match="sliding window of 16"):
        optdepth.wrap(transformers.MistralForCausalLM(config))


def test_a_tokenizer_of_another_vocabulary_is_refused():
    tokenizers = require_extra("tokenizers")
    vocab = {f"w{i}": i for i in range(VOCAB)} | {"[UNK]": VOCAB - 1}
    small = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    small.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    fits = transformers.PreTrainedTokenizerFast(tokenizer_object=small)
    model = optdepth.wrap(hf_model("gpt2"))
    assert generate(model, "w1 w2 w3", 3, tokenizer=fits).tokens.shape == (1, 3)
    big = tokenizers.Tokenizer(tokenizers.models.WordLevel(
        {f"w{i}": i for i in range(500)} | {"[UNK]": 500}, unk_token="[UNK]"))
    with pytest.raises(DataError, match="does not match the model"):
        generate(model, "w1", 3, tokenizer=transformers.PreTrainedTokenizerFast(tokenizer_object=big))


def test_a_cache_from_another_model_is_refused():
    a, b = optdepth.wrap(hf_model("gpt2")), optdepth.wrap(hf_model("gpt2", seed=1))
    with pytest.raises(DataError, match="another model"):
        b.prefill(prompts(), torch.tensor([7, 7]), a.new_cache(2))
