"""Discovery from Python and the command line (``lens_hub.registry.catalogue``, ``lens-hub registry list``): filters,
the HTML and rich views of hostile registry text, and JSON output equal to the Python records. Real files, no mocks."""

from __future__ import annotations

import html
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from lens_hub.core.config import EvaluationInfo, LayerMetrics
from lens_hub.errors import LensNotFoundError, RegistryError
from lens_hub.registry.catalogue import LensList, LensRecord, list_pretrained, registry_entry
from lens_hub.registry.schema import RegistryEntry
from lens_hub.registry.store import REGISTRY_ENV, Registry, write_entry

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "registry"
SHA = "0123456789abcdef" * 4
COMMIT = "0123456789abcdef0123456789abcdef01234567"
HOSTILE = '<img src=x onerror="alert(1)">&[bold red]boom[/]'


@pytest.fixture(scope="module")
def generate():
    """The docs' catalogue generator (``docs/hooks/generate.py``), which needs mkdocs."""
    pytest.importorskip("mkdocs")
    sys.path.insert(0, str(REPO / "docs" / "hooks"))
    try:
        import generate
    finally:
        sys.path.remove(str(REPO / "docs" / "hooks"))
    return generate


def _entry(
    model: str, aliases=(), *, model_type="llama", status="verified", evaluation=None, training=None, untrained=None
) -> RegistryEntry:
    files = [{"path": n, "size": 10, "sha256": SHA} for n in ("config.json", "lens.safetensors")]
    version = {
        "version": "1.0.0",
        "default": True,
        "format": "safetensors",
        "status": status,
        "location": {"repo_id": f"{model}-lens", "subfolder": "sub", "revision": COMMIT},
        "files": files,
        "evaluation": evaluation,
        "training": training,
        "untrained_layers": untrained,
    }
    return RegistryEntry.model_validate(
        {
            "model": model,
            "aliases": list(aliases),
            "facts": {"model_type": model_type, "hidden_size": 32, "num_layers": 2, "vocab_size": 96},
            "lenses": [version],
        }
    )


EVALUATION = EvaluationInfo(
    dataset="heldout.txt",
    layers=[0, 1],
    tuned=LayerMetrics(kl=[1.0, 0.5]),
    logit=LayerMetrics(kl=[4.0, 2.0]),
).model_dump()


@pytest.fixture
def registry(tmp_path: Path) -> Path:
    directory = tmp_path / "registry"
    write_entry(directory, _entry("acme/tiny-llama", ["Tiny"], evaluation=EVALUATION))
    write_entry(directory, _entry("acme/small-neox", ["neo-small"], model_type="gpt_neox", status="unverified"))
    write_entry(directory, _entry("other/gpt-thing", model_type="gpt2"))
    return directory


def test_records_hold_the_facts_location_and_per_layer_kl(registry):
    records = list_pretrained(registry=registry)
    assert isinstance(records, LensList)
    assert [r.model for r in records] == ["acme/small-neox", "acme/tiny-llama", "other/gpt-thing"]
    tiny = records[1]
    assert isinstance(tiny, LensRecord)
    assert (tiny.model_type, tiny.hidden_size, tiny.num_layers, tiny.vocab_size) == ("llama", 32, 2, 96)
    assert (tiny.version, tiny.format, tiny.status, tiny.revision) == ("1.0.0", "safetensors", "verified", COMMIT)
    assert tiny.uri == f"hf://acme/tiny-llama-lens@{COMMIT}/sub"
    assert tiny.kl_layers == (0, 1)
    assert tiny.kl_tuned == (1.0, 0.5)
    assert tiny.kl_logit == (4.0, 2.0)
    assert tiny.mean_kl_tuned == pytest.approx(0.75)
    assert tiny.mean_kl_logit == pytest.approx(3.0)
    assert records[0].kl_tuned is None
    assert records[0].mean_kl_tuned is None
    with pytest.raises(AttributeError):  # frozen
        tiny.status = "deprecated"  # type: ignore[misc]


def test_filters_by_model_or_alias_status_and_architecture(registry):
    def names(**kw):
        return [r.model for r in list_pretrained(registry=registry, **kw)]

    assert names(model="TINY") == ["acme/tiny-llama"]  # alias and id, case-insensitive
    assert names(model="neo-SM") == ["acme/small-neox"]  # a substring of an alias
    assert names(model="acme/") == ["acme/small-neox", "acme/tiny-llama"]
    assert names(model="nothing") == []
    assert names(status="unverified") == ["acme/small-neox"]
    assert names(status="verified") == ["acme/tiny-llama", "other/gpt-thing"]
    assert names(status="verif") == []  # exact
    assert names(architecture="gpt_neox") == ["acme/small-neox"]
    assert names(architecture="GPT2") == ["other/gpt-thing"]
    assert names(model="acme", status="verified", architecture="llama") == ["acme/tiny-llama"]


def test_registry_object_and_env_var_and_the_shipped_registry(registry, monkeypatch):
    assert len(list_pretrained(registry=Registry.load(registry))) == 3
    monkeypatch.setenv(REGISTRY_ENV, str(registry))
    assert len(list_pretrained()) == 3
    monkeypatch.delenv(REGISTRY_ENV)
    shipped = list_pretrained(registry=SHIPPED)
    assert len(shipped) == 34
    assert {r.model for r in list_pretrained(model="gpt2", registry=SHIPPED)} >= {"openai-community/gpt2-large"}


def test_registry_entry_returns_the_full_entry(registry):
    entry = registry_entry("tiny", registry=registry)
    assert entry.model == "acme/tiny-llama"
    assert entry.default_version.evaluation is not None
    with pytest.raises(LensNotFoundError, match="Did you mean"):
        registry_entry("tiny-lama", registry=registry)


def test_an_invalid_registry_is_refused_not_skipped(registry):
    (registry / "broken--x.yaml").write_text("model: [", encoding="utf-8")
    with pytest.raises(RegistryError, match="broken--x.yaml"):
        list_pretrained(registry=registry)


def test_markup_in_an_alias_cannot_enter_the_registry(tmp_path):
    data = _entry("acme/tiny-llama").model_dump()
    data["aliases"] = ["<script>alert(1)</script>"]
    (tmp_path / "acme--tiny-llama.json").write_text(json.dumps(data), encoding="utf-8")
    _, problems = Registry.check(tmp_path)
    assert any("aliases" in p for p in problems)


def test_html_and_rich_views_escape_hostile_registry_text(tmp_path):
    # Aliases are ASCII Hub ids (markup cannot get in, see above); model_type is free text, so it carries the attack.
    write_entry(tmp_path, _entry("acme/tiny-llama", ["tiny"], model_type=HOSTILE))
    records = list_pretrained(registry=tmp_path)
    page = records._repr_html_()
    assert "<img" not in page
    assert 'onerror="' not in page
    assert html.escape(HOSTILE, quote=True) in page
    assert page.startswith("<table>") and page.count("<tr>") == 2
    assert html.unescape(page).count(HOSTILE) == 1

    console = Console(width=400, record=True, color_system=None)
    console.print(records)
    shown = console.export_text()
    assert "[bold red]boom[/]" in shown  # shown literally, not read as rich markup
    assert "acme/tiny-llama" in shown


def _cli(*args: str, env_extra: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (REGISTRY_ENV, "COLUMNS")}
    env.update(NO_COLOR="1", TERM="dumb", PYTHONIOENCODING="utf-8", **(env_extra or {}))
    return subprocess.run(
        [sys.executable, "-m", "lens_hub.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
    )


def test_cli_json_equals_the_python_records(registry):
    done = _cli("registry", "list", "--json", "--registry", str(registry))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [r.to_dict() for r in list_pretrained(registry=registry)]
    filtered = _cli("registry", "list", "--json", "--status", "unverified", "--registry", str(registry))
    assert [r["model"] for r in json.loads(filtered.stdout)] == ["acme/small-neox"]
    shipped = _cli("registry", "list", "--json", "--registry", str(SHIPPED))
    assert json.loads(shipped.stdout) == [r.to_dict() for r in list_pretrained(registry=SHIPPED)]


def test_cli_table_is_not_cut_when_piped(tmp_path):
    long_model = "an-organisation-with-a-long-name/" + "a-model-whose-name-is-long-" * 2 + "end"
    write_entry(tmp_path, _entry(long_model, ["alias-" + "x" * 80], evaluation=EVALUATION))
    done = _cli("registry", "list", "--registry", str(tmp_path), env_extra={"COLUMNS": "80"})
    assert done.returncode == 0, done.stderr
    assert long_model in done.stdout  # on one line: not folded, not cut with '…'
    assert "alias-" + "x" * 80 in done.stdout
    assert "…" not in done.stdout
    assert "KL 3.00 → 0.75" in done.stdout  # mean KL over the evaluated layers, logit → tuned


def test_docs_catalogue_page_shows_the_per_layer_kl_escaped(generate):
    evaluation = {**EVALUATION, "tuned": {"kl": [1.0, 0.5], "cross_entropy": [3.0, 2.5]}, "model_cross_entropy": 2.25}
    entry = _entry("acme/tiny-llama", ["tiny"], model_type=HOSTILE, evaluation=evaluation)
    page = generate._model_page(entry, plots={})
    assert "| Layer | KL tuned | KL logit | Cross-entropy tuned | Cross-entropy logit |" in page
    assert "| 0 | 1.000 | 4.000 | 3.000 | – |" in page
    assert "| 1 | 0.500 | 2.000 | 2.500 | – |" in page
    assert "The model's own cross-entropy: 2.250 bits per byte." in page
    assert f"| model_type | `{HOSTILE}` |" in page  # hostile text only inside a code span, shown literally
    empty = EvaluationInfo(tuned=LayerMetrics(), logit=LayerMetrics())
    assert generate._evaluation_table(empty) == []  # an evaluation without metrics adds no table


BARELY = EvaluationInfo(
    dataset="heldout.txt", layers=[0, 1], tuned=LayerMetrics(kl=[3.9, 1.9]), logit=LayerMetrics(kl=[4.0, 2.0])
).model_dump()


@pytest.fixture
def judged(tmp_path: Path) -> Path:
    """A good lens, a barely trained one with an untrained layer, and an old entry with no quality fields."""
    directory = tmp_path / "judged"
    training = {"init": "fit", "fit_tokens": 8192, "num_tokens": 4096}
    write_entry(directory, _entry("acme/good", evaluation=EVALUATION, training=training, untrained=[]))
    write_entry(directory, _entry("acme/barely", evaluation=BARELY, untrained=[1]))
    write_entry(directory, _entry("acme/old"))
    return directory


def test_quality_column_judges_each_lens_or_says_not_evaluated(judged):
    records = {r.model: r for r in list_pretrained(registry=judged)}
    assert records["acme/good"].cells()[-2:] == ("KL 3.00 → 0.75", "12,288")
    assert records["acme/barely"].cells()[-2:] == ("KL 3.00 → 2.90 (barely better), 1 untrained", "?")
    assert records["acme/old"].cells()[-2:] == ("not evaluated", "?")  # an old entry: valid, and honest
    assert records["acme/old"].status == "verified"  # integrity says nothing about quality
    good = records["acme/good"].to_dict()
    assert (good["quality"], good["quality_problems"], good["untrained_layers"]) == ("KL 3.00 → 0.75", [], [])
    problems = records["acme/barely"].to_dict()["quality_problems"]
    assert problems[0].startswith("the lens is barely better than the logit lens: mean held-out KL 2.900")
    assert problems[1] == "1 of 2 layers is untrained (1): there it reads exactly what the logit lens reads"

    done = _cli("registry", "list", "--registry", str(judged))
    assert done.returncode == 0, done.stderr
    header = next(line for line in done.stdout.splitlines() if "model" in line and "status" in line)
    assert "quality" in header and "tokens" in header and "KL" not in header
    assert "not evaluated" in done.stdout and "(barely better), 1 untrained" in done.stdout


def test_docs_catalogue_shows_quality_tokens_and_caveats(generate, judged):
    index = generate._index_page(Registry.load(judged), judged)
    assert "| Status | Quality | Tokens |" in index
    t = generate._text
    assert f"| {t('KL 3.00 → 0.75')} | 12,288 |" in index
    assert f"| {t('KL 3.00 → 2.90 (barely better), 1 untrained')} | ? |" in index
    assert f"| {t('not evaluated')} | ? |" in index
    barely = generate._model_page(Registry.load(judged).get("acme/barely"), plots={})
    assert f"| Untrained layers | {t('1')} |" in barely
    assert f"| Caveat | {t('the lens is barely better than the logit lens')}" in barely
    assert f"| Evaluated on | {t('heldout.txt')} |" in barely
    good = generate._model_page(Registry.load(judged).get("acme/good"), plots={})
    assert "| Tokens trained on | 12,288 |" in good and "Caveat" not in good
    assert f"| Untrained layers | {t('none')} |" in good
