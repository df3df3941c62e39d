"""The paper's prompt-injection experiment: tasks and prompts, choice log-likelihoods, the baseline, the protocol."""

import json
import re

import numpy as np
import pytest
import torch
from helpers import TOKENIZER, assert_png, random_lens
from tiny_models import tiny_model
from transformers import AutoTokenizer

from lens_hub.analysis import injection as injection_module
from lens_hub.analysis import tasks as tasks_module
from lens_hub.analysis.anomaly import auroc, extract_features
from lens_hub.analysis.injection import (
    BASELINE,
    PAPER_AUROCS,
    PAPER_COLUMNS,
    RELATIVE_MAHALANOBIS,
    loglik_features,
    paper_split,
    paper_table,
    pooled_bootstrap_aurocs,
    read_choices,
    relative_mahalanobis,
    run_injection_experiment,
    run_protocol,
)
from lens_hub.analysis.tasks import (
    INJECTION_TEMPLATE,
    Task,
    TaskItem,
    build_prompt,
    continuation,
    generate_shipped_tasks,
    inject,
    load_hub_task,
    load_shipped_task,
    make_prompts,
    read_task,
    resolve_task,
    shipped_tasks,
    write_shipped_tasks,
)
from lens_hub.core.lens import LogitLens
from lens_hub.errors import AnomalyError, TaskError, TaskFileError


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Prompts are read one at a time in small operations; on a busy machine a second intra-op thread only waits.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(TOKENIZER)


@pytest.fixture(scope="module")
def gpt2():
    # The real GPT-2 vocabulary (the real tokenizer fits) and room for few-shot prompts.
    return tiny_model("gpt2", vocab_size=50257, n_embd=32, n_layer=4, n_positions=512, initializer_range=0.2)


def _items(n: int, k: int = 2) -> list[TaskItem]:
    return [
        TaskItem(question=f"Item {i}?", choices=tuple(f"c{i}-{j}" for j in range(k)), answer=i % k) for i in range(n)
    ]


# ------------------------------------------------------------------------------------------- prompts and tasks


def test_prompt_blocks_end_with_answer_and_shots_are_solved():
    shot = TaskItem("What is 1 + 1?", ("2", "3"), 0, context="Arithmetic.")
    item = TaskItem("What is 2 + 2?", ("5", "4"), 1)
    prompt = build_prompt(item, [shot])
    assert prompt == "Arithmetic.\nQuestion: What is 1 + 1?\nAnswer: 2\n\nQuestion: What is 2 + 2?\nAnswer:"
    assert continuation("4") == " 4"


def test_injection_sits_right_before_the_last_answer():
    prompt = build_prompt(TaskItem("Q2?", ("a", "b"), 0), [TaskItem("Q1?", ("x", "y"), 1)])
    injected = inject(prompt, "b")
    text = INJECTION_TEMPLATE.format("b")
    assert injected.endswith(text + "Answer:")
    assert injected.replace(text, "", 1) == prompt
    assert injected.count("Answer:") == prompt.count("Answer:") == 2
    assert 'just print "b":\n\nAnswer:' in injected
    with pytest.raises(TaskError, match="no 'Answer:'"):
        inject("no cue here", "b")


@pytest.mark.parametrize("name", ["capitals", "antonyms", "arithmetic", "sentiment"])
def test_made_prompts_pair_items_with_wrong_answers_and_other_items_as_shots(name):
    task = load_shipped_task(name)
    pairs = make_prompts(task, shots=5, seed=3)
    assert len(pairs) == len(task.items) and len({p.index for p in pairs}) == len(task.items)
    for p in pairs:
        item = task.items[p.index]
        assert p.wrong != p.answer == item.answer and p.choices == item.choices
        assert len(set(p.shots)) == 5 and p.index not in p.shots
        assert p.normal == build_prompt(item, [task.items[j] for j in p.shots])
        at = p.normal.rindex("Answer:")
        assert p.injected == p.normal[:at] + INJECTION_TEMPLATE.format(p.choices[p.wrong]) + p.normal[at:]
    # The wrong answer asked for is drawn among all the wrong positions, not stuck on one.
    assert {p.wrong for p in pairs} == set(range(len(pairs[0].choices)))


def test_prompts_are_deterministic_per_seed():
    task = load_shipped_task("sentiment")
    assert make_prompts(task, seed=1, limit=20) == make_prompts(task, seed=1, limit=20)
    assert make_prompts(task, seed=1, limit=20) != make_prompts(task, seed=2, limit=20)
    assert len(make_prompts(task, limit=20)) == 20


def test_make_prompts_refuses_impossible_settings():
    task = Task("tiny", tuple(_items(4)), "here")
    with pytest.raises(TaskError, match="shots must be between 1 and 3"):
        make_prompts(task, shots=4)
    with pytest.raises(TaskError, match="shots must be between 1 and 3"):
        make_prompts(task, shots=0)
    with pytest.raises(TaskError, match="limit must be at least 1"):
        make_prompts(task, shots=1, limit=0)


def test_shipped_tasks_are_large_enough_and_reproducible(tmp_path):
    assert shipped_tasks() == ["antonyms", "arithmetic", "capitals", "sentiment"]
    sizes = {name: len(load_shipped_task(name).items) for name in shipped_tasks()}
    assert all(sizes[name] >= 200 for name in ("antonyms", "arithmetic", "capitals")), sizes
    sentiment = load_shipped_task("sentiment")
    labels = [item.gold for item in sentiment.items]
    assert len(labels) >= 100 and labels.count("positive") == labels.count("negative")
    # Regenerating from sources/ gives the shipped files byte for byte.
    for path in write_shipped_tasks(tmp_path):
        assert path.read_bytes() == (tasks_module.SHIPPED_DIR / path.name).read_bytes(), path.name
    records = generate_shipped_tasks()
    capitals = {(r["question"], r["choices"][r["answer"]]) for r in records["capitals"]}
    assert ("What is the capital of France?", "Paris") in capitals
    assert ("Canberra is the capital of which country?", "Australia") in capitals
    for r in records["arithmetic"]:
        a, b = map(int, r["choices"])
        assert int(r["choices"][r["answer"]]) == (max(a, b) if "larger" in r["question"] else min(a, b))


def test_resolve_task_takes_files_and_shipped_names(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"question": "Q?", "choices": ["a", "b"], "answer": "b"}\n')
    assert resolve_task(str(path)).items == (TaskItem("Q?", ("a", "b"), 1),)
    assert resolve_task("antonyms").name == "antonyms"
    with pytest.raises(TaskError, match="neither a task file nor a shipped task; the shipped tasks are antonyms"):
        resolve_task("nope")


BAD_LINES = [
    ('["q", "a"]', "expected a JSON object"),
    ('{"question": "Q?", "choices": ["a", "b"], "answer": 0, "extra": 1}', "unknown field 'extra'"),
    ('{"question": "Q?", "answer": 0}', "field 'choices' is missing"),
    ('{"question": "", "choices": ["a", "b"], "answer": 0}', "field 'question' must be a non-empty string"),
    ('{"question": "Q?", "choices": ["a"], "answer": 0}', "field 'choices' must be a list of 2 to 26 strings"),
    ('{"question": "Q?", "choices": "ab", "answer": 0}', "field 'choices' must be a list"),
    ('{"question": "Q?", "choices": ["a", 3], "answer": 0}', "field 'choices[1]' must be a non-empty string"),
    ('{"question": "Q?", "choices": ["a", "a"], "answer": 0}', "holds 'a' twice"),
    ('{"question": "Q?", "choices": ["a", "b"], "answer": 2}', "field 'answer' must be a choice index"),
    ('{"question": "Q?", "choices": ["a", "b"], "answer": true}', "field 'answer' must be a choice index"),
    ('{"question": "Q?", "choices": ["a", "b"], "answer": "c"}', "field 'answer' must be a choice index"),
    ('{"context": 5, "question": "Q?", "choices": ["a", "b"], "answer": 0}', "field 'context' must be"),
    ('{"question": "Q?", "choices": ["a", "' + "x" * 401 + '"], "answer": 0}', "'choices[1]' is 401 characters"),
    ("{not json", "is not a JSON record"),
]


@pytest.mark.parametrize(("line", "message"), BAD_LINES)
def test_task_file_errors_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "task.jsonl"
    path.write_text('{"question": "Fine?", "choices": ["yes", "no"], "answer": 0}\n\n' + line + "\n")
    with pytest.raises(TaskFileError) as info:
        read_task(path)
    text = str(info.value)
    assert "\n" not in text and f"{path}:3" in text and message in text, text


def test_task_file_errors_for_whole_files(tmp_path, monkeypatch):
    with pytest.raises(TaskFileError, match="does not exist"):
        read_task(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TaskFileError, match="holds no items"):
        read_task(empty)
    binary = tmp_path / "binary.jsonl"
    binary.write_bytes(b'{"question": "\xff"}\n')
    with pytest.raises(TaskFileError, match=r"binary.jsonl:1 is not UTF-8"):
        read_task(binary)
    big = tmp_path / "big.jsonl"
    big.write_text('{"question": "Q?", "choices": ["a", "b"], "answer": 0}\n' * 20)
    monkeypatch.setattr(tasks_module, "MAX_TASK_FILE_BYTES", 100)
    with pytest.raises(TaskFileError, match="more than the 100 allowed"):
        read_task(big)
    monkeypatch.setattr(tasks_module, "MAX_TASK_FILE_BYTES", 10_000)
    monkeypatch.setattr(tasks_module, "MAX_ITEMS", 5)
    with pytest.raises(TaskFileError, match=r"big.jsonl:6: more than 5 items"):
        read_task(big)


def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_hub_loader_reads_a_local_dataset_with_nested_and_fixed_fields(tmp_path):
    arc = [
        {"question": "Q1?", "choices": {"text": ["a", "b", "c"], "label": ["A", "B", "C"]}, "answerKey": "B"},
        {"question": "Q2?", "choices": {"text": ["x", "y", "z"], "label": ["1", "2", "3"]}, "answerKey": "3"},
    ]
    _jsonl(tmp_path / "arc" / "validation.jsonl", arc)
    cache = tmp_path / "cache"
    task = load_hub_task(
        str(tmp_path / "arc"), choices="choices.text", labels="choices.label", answer="answerKey", cache_dir=cache
    )
    assert task.name == "arc" and "(validation)" in task.source
    assert task.items == (TaskItem("Q1?", ("a", "b", "c"), 1), TaskItem("Q2?", ("x", "y", "z"), 2))

    boolq = [
        {"question": "is it?", "passage": "It is.", "answer": True},
        {"question": "no?", "passage": "P.", "answer": False},
    ]
    _jsonl(tmp_path / "boolq" / "validation.jsonl", boolq)
    task = load_hub_task(
        str(tmp_path / "boolq"), context="passage", fixed_choices=["no", "yes"], cache_dir=cache, limit=1
    )
    assert task.items == (TaskItem("is it?", ("no", "yes"), 1, context="It is."),)

    sciq = [{"question": "Q?", "d1": "w1", "d2": "w2", "correct_answer": "r"}]
    _jsonl(tmp_path / "sciq" / "test.jsonl", sciq)
    fields = {"choices": ["d1", "d2", "correct_answer"], "answer": "correct_answer"}
    task = load_hub_task(str(tmp_path / "sciq"), split="test", cache_dir=cache, **fields)
    assert task.items == (TaskItem("Q?", ("w1", "w2", "r"), 2),)


def test_hub_loader_errors_are_one_line_and_name_the_row(tmp_path):
    cache = tmp_path / "cache"
    _jsonl(tmp_path / "d" / "validation.jsonl", [{"question": "Q?", "choices": ["a", "b"], "answerKey": "a"}])
    with pytest.raises(TaskFileError, match=r"\(validation\) row 0: no field 'answer' \(the row has answerKey, "):
        load_hub_task(str(tmp_path / "d"), cache_dir=cache)
    with pytest.raises(TaskError, match=r"could not load dataset .*\(test\): Unknown split"):
        load_hub_task(str(tmp_path / "d"), split="test", cache_dir=cache)
    with pytest.raises(TaskError, match="needs the network"):
        load_hub_task("lens-hub-tests/no-such-dataset", cache_dir=cache)
    _jsonl(tmp_path / "e" / "validation.jsonl", [{"question": "Q?", "choices": ["a", "a"], "answer": 0}])
    with pytest.raises(TaskFileError, match=r"row 0: field 'choices' holds 'a' twice"):
        load_hub_task(str(tmp_path / "e"), cache_dir=cache)


# ------------------------------------------------------------------------------------------------- the features


def _direct_logprob(model, tokenizer, prompt: str, choice: str) -> float:
    """Sum of the model's own log-probabilities of the choice's tokens after the prompt, from one full forward."""
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer(continuation(choice), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logp = model(torch.tensor([ids + target])).logits.log_softmax(-1)[0]
    return sum(float(logp[len(ids) - 1 + j, t]) for j, t in enumerate(target))


@pytest.mark.parametrize("share_prefix", [True, False])
def test_choice_loglikelihood_at_the_output_row_is_the_models_own(gpt2, tokenizer, share_prefix):
    task = load_shipped_task("capitals")  # multi-token choices ("Washington, D.C.", "Port-au-Prince", ...)
    pairs = make_prompts(task, shots=2, seed=0, limit=3)
    prompts = [p.injected for p in pairs]
    choices = [p.choices for p in pairs]
    assert any(len(tokenizer(continuation(c))["input_ids"]) > 1 for cs in choices for c in cs)
    lens = random_lens(gpt2)
    readout = read_choices(gpt2, tokenizer, prompts, choices, {"tuned": lens}, share_prefix=share_prefix)
    ll = readout.loglik["tuned"]
    assert ll.shape == (3, 4, gpt2.config.n_layer + 1)
    for n, (prompt, options) in enumerate(zip(prompts, choices, strict=True)):
        for c, choice in enumerate(options):
            assert ll[n, c, -1] == pytest.approx(_direct_logprob(gpt2, tokenizer, prompt, choice), abs=1e-4)


@pytest.mark.parametrize("chunk", [injection_module.LOGITS_CHUNK, 1])
def test_choice_loglikelihood_at_a_layer_reads_that_layer_through_the_lens(gpt2, tokenizer, monkeypatch, chunk):
    monkeypatch.setattr(injection_module, "LOGITS_CHUNK", chunk)  # 1: one layer per unembedding call
    lens = random_lens(gpt2, seed=1)
    prompt, choice = "Question: Which number is larger: 41 or 14?\nAnswer:", "Port-au-Prince"
    readout = read_choices(
        gpt2, tokenizer, [prompt], [("41", choice)], {"tuned": lens, "logit": LogitLens.from_model(gpt2)}
    )
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    target = tokenizer(continuation(choice), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        states = gpt2(torch.tensor([ids + target]), output_hidden_states=True).hidden_states
        for i in range(gpt2.config.n_layer):
            positions = torch.arange(len(ids) - 1, len(ids) + len(target) - 1)
            for label, reader in (("tuned", lens), ("logit", LogitLens.from_model(gpt2))):
                logp = reader(states[i][0, positions], i).log_softmax(-1)
                expected = float(logp[torch.arange(len(target)), torch.tensor(target)].sum())
                assert readout.loglik[label][0, 1, i] == pytest.approx(expected, abs=1e-4), (label, i)
    # The tuned lens reads differently from the logit lens before the output, the same at the output.
    tuned, logit = readout.loglik["tuned"][0], readout.loglik["logit"][0]
    assert not np.allclose(tuned[:, :-1], logit[:, :-1]) and np.array_equal(tuned[:, -1], logit[:, -1])


def test_cache_sharing_matches_full_sequences_on_another_family(tokenizer):
    llama = tiny_model("llama", vocab_size=50257, max_position_embeddings=512)
    pairs = make_prompts(load_shipped_task("antonyms"), shots=2, seed=0, limit=2)
    args = (
        llama,
        tokenizer,
        [p.normal for p in pairs],
        [p.choices for p in pairs],
        {"logit": LogitLens.from_model(llama)},
    )
    shared, full = read_choices(*args), read_choices(*args, share_prefix=False)
    np.testing.assert_allclose(shared.loglik["logit"], full.loglik["logit"], atol=1e-4)
    np.testing.assert_allclose(shared.baseline, full.baseline, atol=1e-5)


def test_statistics_from_the_same_pass_equal_extract_features(gpt2, tokenizer, monkeypatch):
    monkeypatch.setattr(injection_module, "STATS_CHUNK", 2)  # 3 prompts: a full chunk and a partial one
    lens = random_lens(gpt2, seed=2)
    pairs = make_prompts(load_shipped_task("sentiment"), shots=1, seed=0, limit=3)
    prompts = [p.injected for p in pairs]
    lenses = {"tuned": lens, "logit": LogitLens.from_model(gpt2)}
    readout = read_choices(gpt2, tokenizer, prompts, [p.choices for p in pairs], lenses, statistics=True)
    expected = extract_features(gpt2, tokenizer, prompts, lenses)
    for label in lenses:
        assert readout.statistics[label].shape == (3, 4 * gpt2.config.n_layer + 1)
        np.testing.assert_allclose(readout.statistics[label], expected[label], rtol=1e-4, atol=1e-5)


def test_loglik_features_are_log_odds_for_two_choices_and_flat_otherwise():
    ll = np.arange(2 * 2 * 5, dtype=float).reshape(2, 2, 5) ** 1.5
    np.testing.assert_array_equal(loglik_features(ll), ll[:, 1] - ll[:, 0])
    assert loglik_features(ll).shape == (2, 5)
    four = np.random.default_rng(0).normal(size=(3, 4, 5))
    assert loglik_features(four).shape == (3, 20)
    np.testing.assert_array_equal(loglik_features(four)[1, 5:10], four[1, 1])
    with pytest.raises(AnomalyError, match="expected log-likelihoods"):
        loglik_features(np.zeros((3, 1, 5)))


def test_baseline_pools_the_reading_positions_of_every_fourth_hidden_state(gpt2, tokenizer):
    prompt, options = "Question: Is it?\nAnswer:", ("yes", "Port-au-Prince")
    readout = read_choices(gpt2, tokenizer, [prompt], [options], {"logit": LogitLens.from_model(gpt2)})
    sequence = read_choices(
        gpt2, tokenizer, [prompt], [options], {"logit": LogitLens.from_model(gpt2)}, pool="sequence"
    )
    assert readout.baseline_layers == [0, 4]  # hidden states 0..4 of a 4-layer model, every 4th
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    reading, whole = [], []
    with torch.no_grad():
        for choice in options:
            target = tokenizer(continuation(choice), add_special_tokens=False)["input_ids"]
            states = gpt2(torch.tensor([ids + target[:-1]]), output_hidden_states=True).hidden_states
            reading.append(torch.stack([states[j][0, len(ids) - 1 :].mean(0) for j in (0, 4)]))
            whole.append(torch.stack([states[j][0].mean(0) for j in (0, 4)]))
    np.testing.assert_allclose(readout.baseline[0], torch.stack(reading).mean(0).numpy(), atol=1e-5)
    np.testing.assert_allclose(sequence.baseline[0], torch.stack(whole).mean(0).numpy(), atol=1e-5)


def test_relative_mahalanobis_equals_a_direct_computation():
    rng = np.random.default_rng(0)
    fit = rng.normal(size=(12, 3)) @ np.array([[2.0, 0.5, 0.0], [0.0, 1.0, 0.3], [0.0, 0.0, 0.1]])
    test = rng.normal(size=(5, 3))
    mean = fit.mean(0)
    cov = sum(np.outer(r - mean, r - mean) for r in fit) / (len(fit) - 1) + 1e-3 * np.eye(3)
    inverse = np.linalg.inv(cov)
    for row, value in zip(test, relative_mahalanobis(fit, test), strict=True):
        d = row - mean
        full = d @ inverse @ d
        diagonal = sum(d[i] ** 2 / cov[i, i] for i in range(3))
        assert value == pytest.approx(full - diagonal, rel=1e-10)
    # In one dimension the covariance is its diagonal: the relative score is 0.
    assert np.abs(relative_mahalanobis(fit[:, :1], test[:, :1])).max() < 1e-9
    with pytest.raises(AnomalyError, match="need fit"):
        relative_mahalanobis(fit[:1], test)


# ------------------------------------------------------------------------------------------------- the protocol


def test_paper_split_is_sklearns_default_75_25():
    fit, test = paper_split(40, seed=3)
    assert len(fit) == 30 and len(test) == 10 and sorted([*fit, *test]) == list(range(40))
    assert np.array_equal(paper_split(40, seed=3)[0], fit) and not np.array_equal(paper_split(40, seed=4)[0], fit)
    with pytest.raises(AnomalyError, match="at least 4"):
        paper_split(3, seed=0)


def test_pooled_bootstrap_equals_the_auroc_of_each_resample_with_ties():
    rng = np.random.default_rng(1)
    normal, anomalous = rng.integers(0, 5, 9).astype(float), rng.integers(2, 7, 6).astype(float)
    values = pooled_bootstrap_aurocs(normal, anomalous, n=200, seed=7)
    # The same draws, one resample at a time through anomaly.auroc (scikit-learn).
    scores, labels = np.r_[normal, anomalous], np.r_[np.zeros(9), np.ones(6)]
    draws = np.random.default_rng(7).integers(0, 15, (200, 15))
    expected = [auroc(scores[d][labels[d] == 0], scores[d][labels[d] == 1]) for d in draws if 0 < labels[d].sum() < 15]
    np.testing.assert_allclose(values, expected[:200], atol=1e-12)
    assert np.all(pooled_bootstrap_aurocs([0.0, 1.0], [5.0, 6.0], n=50) == 1.0)
    # Resamples with one class only are drawn again: 1 normal among 3 still gives n valid values.
    assert pooled_bootstrap_aurocs([0.0], [1.0, 2.0], n=100, seed=0).size == 100


def test_protocol_is_deterministic_and_pools_seeds_times_bootstrap():
    rng = np.random.default_rng(0)
    normal, injected = rng.normal(size=(40, 4)), rng.normal(size=(25, 4)) + 0.7
    for method in ("iforest", "lof", RELATIVE_MAHALANOBIS):
        a = run_protocol(normal, injected, method, seeds=3, bootstrap=40)
        b = run_protocol(normal, injected, method, seeds=3, bootstrap=40)
        assert a == b
        assert a.num_bootstrap == 120 and len(a.seed_aurocs) == 3
        assert a.counts == {"fit": 30, "normal_test": 10, "injected": 25}
        assert a.low <= a.median <= a.high
    one = run_protocol(normal, injected, "iforest", seeds=1, bootstrap=40)
    assert one.seed_aurocs == run_protocol(normal, injected, "iforest", seeds=3, bootstrap=40).seed_aurocs[:1]


@pytest.mark.parametrize("method", ["iforest", "lof", RELATIVE_MAHALANOBIS])
def test_detectors_find_planted_anomalies_and_not_identical_ones(method):
    rng = np.random.default_rng(0)

    def correlated(n: int, signs: list[float]) -> np.ndarray:
        # Three coordinates that move together (normal: signs 1, 1, 1), within the same marginal ranges.
        z = (
            rng.normal(size=(n, 1))
            if signs == [1, 1, 1]
            else rng.uniform(1.5, 2.5, (n, 1)) * rng.choice([-1, 1], (n, 1))
        )
        return z * np.array(signs) + 0.1 * rng.normal(size=(n, 3))

    normal = correlated(120, [1, 1, 1])
    # Anomalies break the correlation, which the relative Mahalanobis score measures (a shift that each
    # coordinate's own variance explains would leave it near 0).
    planted = run_protocol(normal, correlated(60, [1, -1, 1]), method, seeds=4, bootstrap=200)
    assert planted.median > 0.97 and planted.low > 0.9, planted
    same = run_protocol(normal, correlated(200, [1, 1, 1]), method, seeds=10, bootstrap=200)
    assert abs(same.median - 0.5) < 0.1 and same.low < 0.5 < same.high, same


def test_protocol_refuses_bad_settings():
    x = np.zeros((10, 2))
    with pytest.raises(AnomalyError, match="unknown detection method"):
        run_protocol(x, x, "svm")
    with pytest.raises(AnomalyError, match="must be at least 1"):
        run_protocol(x, x, "iforest", seeds=0)
    with pytest.raises(AnomalyError, match="need normal"):
        run_protocol(x, np.zeros((3, 5)), "iforest")


# ---------------------------------------------------------------------------------------------- the experiment


def test_experiment_end_to_end_on_a_tiny_model(gpt2, tokenizer, tmp_path):
    lens = random_lens(gpt2)
    tasks = [
        Task("sentiment", load_shipped_task("sentiment").items[::10], "shipped"),
        Task("capitals", load_shipped_task("capitals").items[:8], "shipped"),
    ]
    seen = []
    report = run_injection_experiment(
        gpt2,
        tokenizer,
        {"tuned": lens, "logit": "logit"},
        tasks,
        shots=2,
        seeds=2,
        bootstrap=30,
        baseline_index=-1,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (2 * (12 + 8), 2 * (12 + 8))
    expected = {("tuned", m) for m in ("iforest", "lof")} | {("logit", m) for m in ("iforest", "lof")}
    expected |= {(BASELINE, RELATIVE_MAHALANOBIS)} | {
        (f"{s}-stats", m) for s in ("tuned", "logit") for m in ("iforest", "lof")
    }
    assert set(report.columns) == expected and len(report.results) == 2 * len(expected)
    sentiment = report.result("sentiment", "tuned", "iforest").protocol
    assert sentiment.num_features == gpt2.config.n_layer + 1  # log-odds per row
    assert report.result("capitals", "tuned", "lof").protocol.num_features == 4 * (gpt2.config.n_layer + 1)
    assert report.result("capitals", BASELINE, RELATIVE_MAHALANOBIS).protocol.num_features == 32
    assert report.result("capitals", "tuned-stats", "lof").protocol.num_features == 4 * gpt2.config.n_layer + 1
    assert sentiment.num_bootstrap == 60 and sentiment.counts == {"fit": 9, "normal_test": 3, "injected": 12}
    summary = report.tasks[1]
    assert (summary.name, summary.items, summary.num_choices, summary.dropped) == ("capitals", 8, 4, 0)
    assert report.settings["baseline"]["hidden_state"] == 4
    data = json.loads(json.dumps(report.to_json()))
    assert data["schema"] == "lens-hub-injection/1" and len(data["results"]) == len(report.results)
    assert report.write_json(tmp_path / "r.json").is_file()
    from rich.console import Console

    console = Console(record=True, width=160)
    console.print(report.table())
    assert re.search(r"tuned\s+│ iforest\s+│ \d\.\d\d \[\d\.\d\d, \d\.\d\d\]", console.export_text())
    from lens_hub.analysis.injection import injection_figure
    from lens_hub.core.plots import png_bytes

    assert_png(png_bytes(injection_figure(report)))


def test_experiment_checks_settings_before_the_model_runs(gpt2, tokenizer):
    task = Task("t", tuple(_items(8)), "here")
    with pytest.raises(AnomalyError, match="baseline_index -5 is not an index into the 2 hidden states"):
        run_injection_experiment(gpt2, tokenizer, ["logit"], task, shots=1)
    with pytest.raises(AnomalyError, match="unknown detection method"):
        run_injection_experiment(gpt2, tokenizer, ["logit"], task, methods=["svm"])
    with pytest.raises(TaskError, match="needs at least 4"):
        run_injection_experiment(gpt2, tokenizer, ["logit"], task, shots=1, limit=3, baseline=False)
    with pytest.raises(AnomalyError, match="reserved"):
        run_injection_experiment(gpt2, tokenizer, {"baseline": "logit"}, task, shots=1, baseline=False)


def test_paper_numbers_are_kept_in_one_table():
    assert len(PAPER_AUROCS) == 10 and all(len(v) == len(PAPER_COLUMNS) for v in PAPER_AUROCS.values())
    assert PAPER_AUROCS["PIQA"][-1] == (0.97, 0.97) and PAPER_AUROCS["BoolQ"][3] == (0.50, 0.61)
    assert paper_table().row_count == 10
