"""What users get: an ONNX folder optimum runs, tied weights stored once, quality against the parent."""

import math

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from latprune import Architecture, SearchSpace
from latprune.compress.checkpoint import cast_copy
from latprune.compress.extract import extract
from latprune.compress.quality import closeness, perplexity, quality_report
from latprune.profiling.export import export_onnx

from conftest import VOCAB, make_tiny


def test_pruned_heads_generate_the_same_tokens_and_scores_through_optimum_as_in_torch(tmp_path):
    from optimum.onnxruntime import ORTModelForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=16, tie_word_embeddings=True)
    torch.manual_seed(0)
    parent = AutoModelForCausalLM.from_config(config).eval()
    child = extract(parent, Architecture.uniform([0, 2], 4, 2, 64, 48), space=SearchSpace.from_config(config))
    assert child.config.num_attention_heads * child.config.head_dim != child.config.hidden_size  # 4 x 16 vs 48
    path = export_onnx(child, tmp_path / "onnx", final=True)
    import onnx

    vocab_sized = [i.name for i in onnx.load(path).graph.initializer if VOCAB in i.dims]
    assert len(vocab_sized) == 1  # the tied embedding / LM head is stored once
    ort = ORTModelForCausalLM.from_pretrained(tmp_path / "onnx", use_cache=True, local_files_only=True)
    ids = torch.randint(0, VOCAB, (1, 8), generator=torch.Generator().manual_seed(1))
    kw = dict(max_new_tokens=32, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    a, b = ort.generate(ids, **kw), child.generate(ids, **kw)
    assert torch.equal(a.sequences, b.sequences) and a.sequences.shape[1] == 8 + 32
    for sa, sb in zip(a.scores, b.scores):  # every step's logits, through optimum's own KV-cache handling
        assert torch.allclose(sa, sb, atol=1e-4)


def test_a_model_is_its_own_perfect_match_and_a_pruned_one_is_not(tokens):
    parent = make_tiny("llama")
    child = extract(parent, Architecture.uniform([0, 1], 4, 2, 64, 64), space=SearchSpace.from_config(parent.config))
    same = closeness(parent, parent, tokens)
    assert same["kl_to_parent"] == 0.0 and same["top1_agreement"] == 1.0
    assert math.isclose(same["perplexity"], perplexity(parent, tokens), rel_tol=1e-5)
    itself = quality_report(parent, parent, tokens, tokens[:1])  # the shortcut for the parent itself
    assert itself["kl_to_parent"] == 0.0 and itself["top1_agreement"] == 1.0
    assert math.isclose(itself["heldout_perplexity"], same["perplexity"], rel_tol=1e-5)
    other = quality_report(child, parent, tokens, tokens[:1])
    assert other["kl_to_parent"] > 0 and other["top1_agreement"] < 1
    assert math.isclose(other["second_text_perplexity"], perplexity(child, tokens[:1]), rel_tol=1e-5)


def test_the_saved_dtype_is_a_cast_copy(tokens):
    model = make_tiny("llama")
    bf16 = cast_copy(model, "bf16")
    assert next(bf16.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    back = cast_copy(bf16, "fp32")
    for (name, a), b in zip(model.state_dict().items(), back.state_dict().values()):
        assert torch.equal(a.to(torch.bfloat16).float(), b), name
