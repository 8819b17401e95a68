"""Recipes: loading, strictness, overrides, inheritance, and the paper's numbers in `phi-4`."""

import math

import pytest

from phi4ray.config import DPOConfig, Recipe, RecipeError, TrainConfig, load_recipe, parse_override, recipe_names
from phi4ray.model import PRESETS, phi3_config
from phi4ray.train.zero import ds_config, grad_accum_steps


def _write(path, text: str):
    path.write_text(text)
    return path


# -- shipped recipes --------------------------------------------------------------------------
def test_shipped_recipes_are_listed():
    assert {"tiny", "phi-4"} <= set(recipe_names())


def test_tiny_loads():
    r = load_recipe("tiny")
    assert isinstance(r, Recipe)
    assert r.name == "tiny"
    assert r.model.preset == "tiny" and r.model.preset in PRESETS


def test_phi4_loads_with_its_name_and_preset():
    r = load_recipe("phi-4")
    assert r.name == "phi-4"
    assert r.model.preset == "phi-4"
    assert isinstance(r.dpo, DPOConfig) and isinstance(r.midtrain, TrainConfig)


# -- strictness -------------------------------------------------------------------------------
def test_unknown_key_in_yaml_names_the_key_and_the_file(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "base: tiny\npretrain:\n  learning_rate: 0.1\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(str(bad))
    msg = str(e.value)
    assert "pretrain.learning_rate" in msg
    assert str(bad) in msg
    assert "unknown key" in msg


def test_unknown_top_level_section_is_an_error(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "pretrian:\n  lr: 0.1\n")
    with pytest.raises(RecipeError, match=r"unknown key 'pretrian'"):
        load_recipe(str(bad))


def test_wrong_type_names_the_key(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "pretrain:\n  micro_batch_size: lots\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(str(bad))
    msg = str(e.value)
    assert "'pretrain.micro_batch_size'" in msg
    assert "lots" in msg and str(bad) in msg


def test_constraint_violation_names_the_key(tmp_path):
    bad = _write(tmp_path / "bad.yaml", "dpo:\n  beta: -1\n")
    with pytest.raises(RecipeError, match=r"'dpo\.beta'"):
        load_recipe(str(bad))


def test_missing_recipe_file_is_an_error(tmp_path):
    with pytest.raises(RecipeError, match="does not exist"):
        load_recipe(str(tmp_path / "nope.yaml"))


def test_unknown_recipe_name_lists_shipped_recipes():
    with pytest.raises(RecipeError) as e:
        load_recipe("phi-5")
    msg = str(e.value)
    assert "phi-5" in msg
    for name in recipe_names():
        assert name in msg


def test_non_mapping_recipe_is_an_error(tmp_path):
    bad = _write(tmp_path / "list.yaml", "- a\n- b\n")
    with pytest.raises(RecipeError, match="mapping"):
        load_recipe(str(bad))


# -- overrides --------------------------------------------------------------------------------
def test_parse_override_uses_yaml_typing():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=0.5") == (["a"], 0.5)
    assert parse_override("a=null") == (["a"], None)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=x=y") == (["a"], "x=y")  # only the first '=' splits
    with pytest.raises(RecipeError, match="key.sub=value"):
        parse_override("novalue")


def test_overrides_apply_with_yaml_typing():
    r = load_recipe(
        "tiny",
        [
            "pretrain.max_steps=7",  # int
            "pretrain.lr=0.001",  # float
            "tokenize.total_tokens=null",  # null
            "curate.inputs=[a.html, b.html]",  # list
            'synth.rewrite.sampling.stop=["\\n\\n"]',  # nested three deep
            "midtrain.rope_theta=250000",  # a section absent from the YAML is created
            "model.overrides={rope_theta: 500000}",  # a mapping
        ],
    )
    assert r.pretrain.max_steps == 7 and isinstance(r.pretrain.max_steps, int)
    assert r.pretrain.lr == 0.001
    assert r.tokenize.total_tokens is None
    assert r.curate.inputs == ["a.html", "b.html"]
    assert r.synth.rewrite.sampling.stop == ["\n\n"]
    assert r.midtrain is not None and r.midtrain.rope_theta == 250000.0
    assert r.model.overrides == {"rope_theta": 500000}


def test_override_replaces_a_value_from_the_file():
    base = load_recipe("phi-4")
    r = load_recipe("phi-4", ["pretrain.lr=0.0001"])
    assert base.pretrain.lr == 3e-4 and r.pretrain.lr == 1e-4
    assert r.pretrain.global_batch_size == base.pretrain.global_batch_size  # siblings kept


def test_unknown_override_key_says_command_line_override():
    with pytest.raises(RecipeError) as e:
        load_recipe("tiny", ["pretrain.learning_rate=0.1"])
    msg = str(e.value)
    assert "command-line override" in msg and "pretrain.learning_rate" in msg


def test_wrong_type_override_says_command_line_override():
    with pytest.raises(RecipeError) as e:
        load_recipe("tiny", ["pretrain.lr=fast"])
    msg = str(e.value)
    assert "command-line override" in msg and "'pretrain.lr'" in msg and "fast" in msg


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(RecipeError, match="not a section"):
        load_recipe("phi-4", ["pretrain.lr.peak=1"])


def test_unknown_key_inside_a_section_override_says_command_line_override():
    with pytest.raises(RecipeError) as e:
        load_recipe("tiny", ["pretrain={lr: 0.1, bogus: 2}"])
    assert "command-line override: unknown key 'pretrain.bogus'" in str(e.value)


def test_scientific_notation_override_is_a_float_in_untyped_fields():
    r = load_recipe("tiny", ["model.overrides.initializer_range=2e-2"])
    assert r.model.overrides["initializer_range"] == 0.02


# -- inheritance ------------------------------------------------------------------------------
def test_base_inheritance_merges_deeply(tmp_path):
    parent = _write(
        tmp_path / "parent.yaml",
        "base: tiny\npretrain:\n  lr: 0.002\n  warmup_steps: 5\n"
        "serve:\n  engine:\n    batch_size: 3\n    num_actors: 2\n",
    )
    child = _write(
        tmp_path / "child.yaml",
        f"base: {parent.name}\npretrain:\n  warmup_steps: 9\nserve:\n  engine:\n    batch_size: 7\n",
    )
    r = load_recipe(str(child))
    assert r.name == "child"
    assert r.model.preset == "tiny"  # from the shipped grandparent
    assert r.pretrain.lr == 0.002  # from the parent, not lost when the child sets a sibling
    assert r.pretrain.warmup_steps == 9  # the child wins
    assert r.serve.engine.num_actors == 2  # parent, two levels deep
    assert r.serve.engine.batch_size == 7  # child, two levels deep


def test_base_by_shipped_name_and_overrides_on_top(tmp_path):
    child = _write(tmp_path / "mine.yaml", "base: phi-4\nname: mine\npretrain:\n  num_workers: 960\n")
    r = load_recipe(str(child), ["pretrain.micro_batch_size=2"])
    assert r.name == "mine"
    assert r.pretrain.num_workers == 960 and r.pretrain.micro_batch_size == 2
    assert r.pretrain.lr == 3e-4 and r.midtrain.rope_theta == 250_000  # inherited from phi-4
    assert grad_accum_steps(r.pretrain, r.pretrain.num_workers) == 3  # 5760 = 2 x 960 x 3


def test_base_cycle_is_an_error(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(str(tmp_path / "a.yaml"))


def test_unknown_key_in_a_base_file_names_the_base_file(tmp_path):
    parent = _write(tmp_path / "parent.yaml", "pretrain:\n  lrr: 0.1\n")
    child = _write(tmp_path / "child.yaml", "base: parent.yaml\npretrain:\n  lr: 0.2\n")
    with pytest.raises(RecipeError) as e:
        load_recipe(str(child))
    assert f"{parent}: unknown key 'pretrain.lrr'" in str(e.value)


# -- the paper's numbers in phi-4 -------------------------------------------------------------
@pytest.fixture(scope="module")
def phi4() -> Recipe:
    return load_recipe("phi-4")


def test_phi4_pretraining_numbers_are_the_papers(phi4):
    p = phi4.pretrain
    assert p.lr == 3e-4  # peak LR 0.0003
    assert p.weight_decay == 0.1
    assert p.global_batch_size == 5760
    assert p.warmup_steps > 0 and p.min_lr_ratio == 0.0  # linear warm-up, then linear decay
    assert p.zero_stage == 3 and p.use_gpu
    assert p.init_from is None


def test_phi4_batch_divides_over_the_cluster(phi4):
    for stage in ("pretrain", "midtrain", "sft", "dpo"):
        cfg = getattr(phi4, stage)
        accum = grad_accum_steps(cfg, cfg.num_workers)
        assert cfg.micro_batch_size * cfg.num_workers * accum == cfg.global_batch_size, stage
        ds = ds_config(cfg, cfg.num_workers, bf16=True)
        assert ds["train_batch_size"] == ds["train_micro_batch_size_per_gpu"] * ds["gradient_accumulation_steps"] * cfg.num_workers
        assert ds["zero_optimization"]["stage"] == 3 and ds["bf16"]["enabled"]


def test_phi4_tokens_and_mixture_are_the_papers(phi4):
    t = phi4.tokenize
    assert t.seq_len == 4096
    assert t.total_tokens == 10**13 and isinstance(t.total_tokens, int)
    assert t.mixture == {"web": 0.15, "web_rewrite": 0.15, "synthetic": 0.40, "code": 0.20, "acquired": 0.10}
    assert math.isclose(sum(t.mixture.values()), 1.0, abs_tol=1e-12)


def test_phi4_midtraining_numbers_are_the_papers(phi4):
    m = phi4.midtrain
    assert m is not None
    assert m.init_from == "pretrain"
    assert m.rope_theta == 250_000
    assert m.seq_len == 16384
    assert math.isclose(m.lr, phi4.pretrain.lr / 10)
    # 250B tokens at 16K context
    assert m.max_steps * m.global_batch_size * m.seq_len == pytest.approx(250e9, rel=0.001)


def test_phi4_pretrains_at_4k_and_midtraining_reaches_the_released_shape(phi4):
    pre = phi3_config(phi4.model.preset, **phi4.model.overrides)
    assert pre.max_position_embeddings == phi4.tokenize.seq_len == 4096
    assert pre.rope_parameters["rope_theta"] < phi4.midtrain.rope_theta
    released = phi3_config("phi-4")
    assert released.rope_parameters["rope_theta"] == phi4.midtrain.rope_theta
    assert released.max_position_embeddings == phi4.midtrain.seq_len


def test_phi4_post_training_chain(phi4):
    assert phi4.sft.init_from == "midtrain"
    assert phi4.sft.lr == 1e-6  # paper §4.1
    assert phi4.dpo.init_from == "sft" and phi4.dpo.pairs == "pts" and phi4.dpo.beta > 0
    assert phi4.dpo.lr <= phi4.sft.lr
    assert (phi4.pts.p_min, phi4.pts.p_max) == (0.2, 0.8)


def test_phi4_serves_the_final_model_with_vllm(phi4):
    s = phi4.serve
    assert s.engine.engine == "vllm" and s.engine.num_gpus_per_actor >= 1
    assert s.checkpoint == "dpo"
    assert s.max_model_len == phi4.midtrain.seq_len
