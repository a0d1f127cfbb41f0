"""The model server (peftlab.serve) on tiny runs, in process through FastAPI's test client: predictions per adapter as
predict gives them, dynamic batching, OpenAI-style completions with streaming, metrics, API key, and every kind of
bad request answered 4xx with a message; adapters of another base or task refused at start-up."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from peftlab import inference, serve, serving
from peftlab.artifacts import load_trained

from conftest import make_bert, run_recipe, sentiment_rows, write_recipe, write_tsv
from test_causal_lm import make_llama, sums
from test_causal_lm import write_jsonl as write_causal_jsonl
from test_causal_lm import write_recipe as causal_recipe
from test_tasks import squad_examples, task_recipe, write_squad

QUICK = "epochs=2, lr=5e-3, batch_size=16, logging_steps=5"
TEXTS = [text for text, _ in sentiment_rows(6, seed=7)]


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory, tiny_bert, data_dir) -> dict[str, Path]:
    """Two runs on the same base: sentiment as labelled, and with every label flipped (so they must disagree)."""
    tmp = tmp_path_factory.mktemp("serve-cls")
    flipped = tmp / "flipped"
    for split in ("train", "validation"):
        rows = [line.split("\t") for line in (data_dir / "sst2" / f"{split}.tsv").read_text().splitlines()[1:]]
        write_tsv(flipped / "sst2" / f"{split}.tsv", [(text, 1 - int(label)) for text, label in rows])
    return {"default": run_recipe(tmp / "a", write_recipe(tmp / "a.py", tiny_bert, train=QUICK), data_dir),
            "flipped": run_recipe(tmp / "b", write_recipe(tmp / "b.py", tiny_bert, train=QUICK), flipped)}


@pytest.fixture(scope="module")
def causal(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("serve-causal")
    data = tmp / "data"
    write_causal_jsonl(data / "sums" / "train.jsonl", sums(40, seed=1))
    write_causal_jsonl(data / "sums" / "test.jsonl", sums(4, seed=2))
    recipe = causal_recipe(tmp / "r.py", make_llama(tmp / "llama"), train="max_steps=4, lr=1e-2, batch_size=8")
    return run_recipe(tmp, recipe, data)


def client_for(adapters: dict, **options) -> TestClient:
    return TestClient(serving.create_app(adapters, **options))


@pytest.fixture(scope="module")
def two_adapters(classifiers):
    return serving.load_adapters(classifiers["default"], {"flipped": classifiers["flipped"]})


@pytest.fixture(scope="module")
def client(two_adapters):
    with client_for(two_adapters, limits=serving.Limits(max_inputs=8, max_body_bytes=4000)) as client:
        yield client


def metric_values(client) -> dict[tuple, float]:
    """(sample name, labels as sorted tuples) -> value, parsed from /metrics."""
    text = client.get("/metrics").text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(values: dict, name: str, **labels) -> float:
    return values.get((name, tuple(sorted(labels.items()))), 0.0)


# ------------------------------------------------------------------------------------------ /v1/predict

def test_each_adapter_predicts_as_its_run_alone(client, classifiers):
    served = {name: client.post("/v1/predict", json={"adapter": name, "inputs": TEXTS}) for name in classifiers}
    assert all(r.status_code == 200 for r in served.values())
    for name, run_dir in classifiers.items():
        alone = inference.predict_texts(load_trained(run_dir), TEXTS)  # predict's records, one run loaded by itself
        got = served[name].json()["predictions"]
        assert [r["label"] for r in got] == [r["label"] for r in alone]
        assert [r["probability"] for r in got] == pytest.approx([r["probability"] for r in alone], abs=1e-5)
    labels = [[r["label"] for r in served[name].json()["predictions"]] for name in classifiers]
    assert labels[0] != labels[1]  # the flipped run disagrees: the adapter really switches
    assert client.post("/v1/predict", json={"inputs": TEXTS[:1]}).json() == {"predictions": served["default"].json()[
        "predictions"][:1]}  # no adapter named: the served run's own


def concurrent_requests(adapters, requests):
    """The replies and metrics of requests queued while the model is busy, then released together."""
    with client_for(adapters) as client, ThreadPoolExecutor(len(requests)) as pool:
        batcher = client.app.state.server.batcher
        release = threading.Event()
        busy = batcher.call("default", release.wait)  # the worker holds until every request is queued
        wait_until(lambda: batcher.jobs.qsize() == 0)
        futures = [pool.submit(client.post, "/v1/predict", json={"adapter": a, "inputs": x}) for a, x in requests]
        wait_until(lambda: batcher.jobs.qsize() == len(requests))
        release.set()
        replies = [f.result() for f in futures]
        busy.result()
        values = metric_values(client)  # before the requests again one by one
        alone = [client.post("/v1/predict", json={"adapter": a, "inputs": x}).json() for a, x in requests]
        return replies, alone, values


REQUESTS = [("default", [TEXTS[0]]), ("flipped", [TEXTS[1]]), ("default", TEXTS[2:4]), ("flipped", [TEXTS[4]]),
            ("default", ["good " * 40])]  # the last one too long


def test_concurrent_requests_of_lora_adapters_share_one_model_call(two_adapters):
    """Two LoRA adapters mix in one batch (peft's adapter_names): one model call, yet each request gets what its own
    adapter predicts alone; a bad request fails alone."""
    assert serving.mixable(two_adapters)
    replies, alone, values = concurrent_requests(two_adapters, REQUESTS)
    assert [r.status_code for r in replies] == [200, 200, 200, 200, 400]
    assert "of adapter 'default'" in replies[-1].json()["error"]
    for reply, single in zip(replies[:4], alone):  # each got its own rows, as unbatched
        assert [r["label"] for r in reply.json()["predictions"]] == [r["label"] for r in single["predictions"]]
        for mixed_row, single_row in zip(reply.json()["predictions"], single["predictions"]):
            assert mixed_row["probability"] == pytest.approx(single_row["probability"], abs=1e-5)
    # the batch failed on the bad row, so each request ran again alone; the first, mixed call held all 6 rows
    assert sample(values, "peftlab_batch_rows_count", adapter="(mixed)") == 1
    assert sample(values, "peftlab_batch_rows_sum", adapter="(mixed)") == 1 + 1 + 2 + 1 + 1


def test_trained_layernorms_keep_adapters_from_mixing(tiny_bert):
    """peft routes trained copies of Linear layers per row in a mixed batch, not of LayerNorms (peftlab's SST-2
    recipes train them): such adapters are batched per adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    def lora(saved):
        model = AutoModelForSequenceClassification.from_pretrained(tiny_bert, num_labels=2)
        return get_peft_model(model, LoraConfig(r=2, target_modules=["query"], modules_to_save=saved))

    assert serving.saved_modules_mix(lora(["classifier"]))
    assert not serving.saved_modules_mix(lora(["classifier", "LayerNorm"]))


def test_adapters_that_cannot_mix_are_batched_per_adapter(two_adapters, monkeypatch):
    monkeypatch.setattr(serving, "mixable", lambda adapters: False)  # as for DoRA, IA3 or prompt tuning
    replies, alone, values = concurrent_requests(two_adapters, REQUESTS)
    assert [r.status_code for r in replies] == [200, 200, 200, 200, 400]
    for reply, single in zip(replies[:4], alone):
        assert [r["label"] for r in reply.json()["predictions"]] == [r["label"] for r in single["predictions"]]
    for adapter, rows in (("default", 1 + 2 + 1), ("flipped", 1 + 1)):  # one model call each
        assert sample(values, "peftlab_batch_rows_count", adapter=adapter) == 1
        assert sample(values, "peftlab_batch_rows_sum", adapter=adapter) == rows


def wait_until(condition, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "gave up waiting"
        time.sleep(0.01)


def test_metrics_count_requests_errors_and_latency(two_adapters):
    with client_for(two_adapters) as fresh:
        for _ in range(3):
            assert fresh.post("/v1/predict", json={"adapter": "flipped", "inputs": TEXTS[:2]}).status_code == 200
        assert fresh.post("/v1/predict", json={"adapter": "nope", "inputs": TEXTS}).status_code == 404
        values = metric_values(fresh)
    endpoint = "/v1/predict"
    assert sample(values, "peftlab_requests_total", endpoint=endpoint, adapter="flipped") == 3
    assert sample(values, "peftlab_requests_total", endpoint=endpoint, adapter="-") == 1  # unknown names are not labels
    assert sample(values, "peftlab_errors_total", endpoint=endpoint, adapter="-", status="404") == 1
    assert sample(values, "peftlab_errors_total", endpoint=endpoint, adapter="flipped", status="404") == 0
    assert sample(values, "peftlab_request_seconds_count", endpoint=endpoint, adapter="flipped") == 3
    assert sample(values, "peftlab_batch_rows_sum", adapter="flipped") == 6
    assert sample(values, "peftlab_queue_seconds_count", adapter="flipped") == 3


BAD_REQUESTS = [  # (body or raw bytes, status, words the error must name)
    ({"adapter": "nope", "inputs": ["good"]}, 404, "unknown adapter 'nope'"),
    ({"adapter": "default"}, 400, "inputs: Field required"),
    ({"inputs": "good film"}, 400, "inputs: Input should be a valid list"),
    ({"inputs": ["good"], "temperature": 1}, 400, "temperature: Extra inputs"),
    ({"inputs": []}, 400, "at least one input"),
    ({"inputs": ["good", ""]}, 400, "inputs[1]: give a non-empty text"),
    ({"inputs": ["good", 3]}, 400, "inputs[1]"),
    ({"inputs": ["good"] * 9}, 413, "9 inputs, over the limit of 8"),
    ({"inputs": ["good " * 40]}, 400, "inputs[0]: 42 tokens, over the limit of 32 of adapter 'default'"),
    ({"inputs": ["a good film"] * 8 + ["x" * 4000]}, 413, "over the limit of 4000"),
    (b'{"inputs": ["good"', 400, "not valid JSON"),
]


@pytest.mark.parametrize(("body", "status", "words"), BAD_REQUESTS, ids=[w for _, _, w in BAD_REQUESTS])
def test_bad_requests_get_4xx_with_the_problem(client, body, status, words):
    kwargs = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, bytes) else \
        {"json": body}
    reply = client.post("/v1/predict", **kwargs)
    assert reply.status_code == status
    assert set(reply.json()) == {"error"} and words in reply.json()["error"] and "\n" not in reply.json()["error"]


def test_other_bad_requests(client):
    checks = [(client.post("/v1/chat/completions", json={"model": "flipped", "messages": [{"role": "user",
                                                                                           "content": "hi"}]}),
               400, "is a classification model"),
              (client.get("/v1/nowhere"), 404, "Not Found: /v1/nowhere"),
              (client.get("/v1/predict"), 405, "Method Not Allowed"),
              (client.post("/v1/predict", content=b"x" * 10, headers={"content-length": "5000"}), 413, "5000 bytes"),
              (client.post("/v1/predict", content=iter([b'{"inputs": ["good"]}'])), 411, "no Content-Length")]
    for reply, status, words in checks:
        assert reply.status_code == status and words in reply.json()["error"]


def test_api_key_guards_all_but_health(two_adapters):
    with client_for(two_adapters, api_key="s3cret") as guarded:
        assert guarded.get("/health").json()["status"] == "ok"
        body = {"inputs": TEXTS[:1]}
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            reply = guarded.post("/v1/predict", json=body, headers=headers)
            assert reply.status_code == 401 and "API key" in reply.json()["error"]
        assert guarded.get("/metrics").status_code == 401
        assert guarded.post("/v1/predict", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_health_lists_the_adapters(client, classifiers):
    adapters = client.get("/health").json()["adapters"]
    assert {name: a["run"] for name, a in adapters.items()} == {n: str(p) for n, p in classifiers.items()}
    assert {a["task"] for a in adapters.values()} == {"classification"}


@pytest.mark.slow
def test_question_answering_takes_question_and_context(tmp_path, tiny_bert):
    data = tmp_path / "data"
    write_squad(data / "squad_v1.1" / "validation.json", squad_examples(40, seed=1))
    write_squad(data / "squad_v1.1" / "test.json", squad_examples(4, seed=2))
    run_dir = run_recipe(tmp_path, task_recipe(tmp_path / "r.py", tiny_bert, "qa", train="max_steps=2"), data)
    examples = squad_examples(3, seed=3)
    with client_for(serving.load_adapters(run_dir, {})) as qa:
        reply = qa.post("/v1/predict", json={"inputs": [{"question": e["question"], "context": e["context"]}
                                                        for e in examples]})
        assert qa.post("/v1/predict", json={"inputs": [examples[0]["question"]]}).status_code == 400
    alone = inference.predict_texts(load_trained(run_dir), [e["question"] for e in examples],
                                    context=[e["context"] for e in examples])
    assert [r["answer"] for r in reply.json()["predictions"]] == [r["answer"] for r in alone]


# ------------------------------------------------------------------------------------------ start-up refusals

def test_refuses_an_adapter_of_another_base_or_task(tmp_path, classifiers, causal, data_dir, capsys):
    other_base = make_bert(tmp_path / "other-bert", seed=1)
    other = run_recipe(tmp_path, write_recipe(tmp_path / "r.py", other_base, train="max_steps=2"), data_dir)
    for extra, words in ((other, "base weights sha256"), (causal, "its task is causal_lm")):
        capsys.readouterr()
        assert serve.main([str(classifiers["default"]), "--adapter", f"x={extra}"]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and str(extra) in errors[0] and words in errors[0]
    assert serve.main([str(classifiers["default"]), "--adapter", f"default={classifiers['flipped']}"]) == 2
    assert "names the served run itself" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        serve.main([str(classifiers["default"]), "--adapter", "no-equals-sign"])
    assert exited.value.code == 2 and "give NAME=RUN_DIR" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ completions

@pytest.fixture(scope="module")
def llm(causal):
    with client_for(serving.load_adapters(causal, {})) as client:
        yield client


def events(reply) -> list:
    """The server-sent events of a streamed reply, decoded; the last must be [DONE]."""
    chunks = [line.removeprefix("data: ") for line in reply.text.split("\n\n") if line]
    assert chunks[-1] == "[DONE]" and all(line.startswith("data: ") for line in reply.text.split("\n\n") if line)
    return [json.loads(c) for c in chunks[:-1]]


def test_chat_completion_answers_as_predict(llm, causal):
    question = sums(1, seed=9)[0]["question"]
    body = {"model": "default", "messages": [{"role": "user", "content": question}], "max_tokens": 12}
    reply = llm.post("/v1/chat/completions", json=body).json()
    expected = inference.predict_texts(load_trained(causal), [question], max_new_tokens=12)[0]["generation"]
    assert reply["object"] == "chat.completion" and reply["choices"][0]["message"]["content"] == expected
    assert reply["usage"]["completion_tokens"] >= 1 and reply["choices"][0]["finish_reason"] in ("stop", "length")
    streamed = llm.post("/v1/chat/completions", json=body | {"stream": True})
    assert streamed.headers["content-type"].startswith("text/event-stream")
    chunks = events(streamed)
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert "".join(c["choices"][0]["delta"]["content"] for c in chunks) == expected
    assert chunks[-1]["choices"][0]["finish_reason"] == reply["choices"][0]["finish_reason"]


def test_completion_stops_at_a_stop_string_and_streams(llm):
    body = {"prompt": "what is 2 plus 3", "max_tokens": 16, "temperature": 0}
    whole = llm.post("/v1/completions", json=body).json()
    text = whole["choices"][0]["text"]
    assert whole["object"] == "text_completion" and len(text) > 4
    stop = text[2:4]
    stopped = llm.post("/v1/completions", json=body | {"stop": [stop, "zzz"]}).json()["choices"][0]
    assert stopped["text"] == text[:text.find(stop)] and stopped["finish_reason"] == "stop"
    chunks = events(llm.post("/v1/completions", json=body | {"stop": stop, "stream": True}))
    assert "".join(c["choices"][0]["text"] for c in chunks) == stopped["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    generated = sample(metric_values(llm), "peftlab_generated_tokens_total", adapter="default")
    assert generated >= whole["usage"]["completion_tokens"] >= 1


def test_generation_requests_checked(llm):
    checks = [({"prompt": "what is 1 plus 1", "max_tokens": 1000}, 400, "exceed the model's 256 positions"),
              ({"prompt": ""}, 400, "prompt: String should have at least 1 character"),
              ({"prompt": "hi", "temperature": -1}, 400, "temperature: Input should be greater than or equal to 0"),
              ({"prompt": "hi", "model": "other"}, 404, "unknown adapter 'other'")]
    for body, status, words in checks:
        reply = llm.post("/v1/completions", json=body)
        assert reply.status_code == status and words in reply.json()["error"]
    bad_turn = llm.post("/v1/chat/completions", json={"messages": [{"role": "robot", "content": "hi"}]})
    assert bad_turn.status_code == 400 and "role 'robot'" in bad_turn.json()["error"]
    streamed = llm.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1000, "stream": True})
    assert streamed.status_code == 400  # the prompt is checked before the stream begins
