"""The evaluation ecosystem reads `genlab serve`: lm-evaluation-harness's `local-completions` model, scoring text
through the server's echo and logprobs, gets the perplexity its `hf` model gets from the exported folder."""

from __future__ import annotations

import json

import httpx
import lm_eval
import pytest
from lm_eval.tasks import TaskManager

from genlab.serving import ServeConfig, serve_app
from tests.conftest import running

TASK = """task: genlab_local_perplexity
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: loglikelihood_rolling
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
  - metric: byte_perplexity
    aggregation: weighted_perplexity
    higher_is_better: false
"""


def test_lm_evaluation_harness_gets_the_same_perplexity_from_the_server_and_from_the_folder(runs, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    docs = ["The with statement is used to wrap the execution of a block with methods defined by a context "
            "manager. This allows common try, except, finally usage patterns to be encapsulated for convenient "
            "reuse. " * 3, "A function definition defines a user-defined function object. The function "
            "definition does not execute the function body; this gets executed only when the function is called. "
            * 2, "Lists are mutable sequences, typically used to store collections of homogeneous items."]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    (tmp_path / "task").mkdir()
    (tmp_path / "task/perplexity.yaml").write_text(TASK.format(data=tmp_path / "docs.jsonl"))
    tasks = TaskManager(include_path=str(tmp_path / "task"))
    folder = str(runs["lm"].paths.model)
    with running(serve_app([runs["lm"].path], ServeConfig(names=["lm"], engine="thread"))) as url:
        # the README's line: max_length is the context /v1/models reports; the documents take several windows
        window = httpx.get(f"{url}/v1/models").json()["data"][0]["max_model_len"]
        assert window == runs["lm"].model.context
        assert max(len(runs["lm"].model.tokenizer(d)["input_ids"]) for d in docs) > 2 * window
        served = lm_eval.simple_evaluate(
            model="local-completions", tasks=["genlab_local_perplexity"], task_manager=tasks,
            model_args={"model": "lm", "base_url": f"{url}/v1/completions", "tokenizer": folder,
                        "tokenizer_backend": "huggingface", "max_length": window, "num_concurrent": 1,
                        "max_retries": 1, "tokenized_requests": True})
    local = lm_eval.simple_evaluate(model="hf", model_args={"pretrained": folder, "max_length": window,
                                                                 "device": "cpu"},
                                    tasks=["genlab_local_perplexity"], task_manager=tasks)
    a, b = (r["results"]["genlab_local_perplexity"] for r in (local, served))
    assert a["byte_perplexity,none"] > 1.5, "a real figure, not a constant"
    for metric in ("word_perplexity,none", "byte_perplexity,none"):
        assert b[metric] == pytest.approx(a[metric], rel=0.01), metric
