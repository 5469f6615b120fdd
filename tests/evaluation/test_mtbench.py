"""MT-Bench judging against a tiny local OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from balora.evaluation import mtbench
from balora.evaluation.mtbench import (
    JudgeConfig,
    JudgeNotConfigured,
    build_judge_messages,
    chat_completion,
    judge_first_turn,
    load_judge_prompts,
    load_questions,
    load_reference_answers,
    parse_rating,
    summarize_scores,
)

PROMPTS = {
    "single-v1": {"name": "single-v1", "system_prompt": "SYS", "prompt_template": "Q={question} A={answer}"},
    "single-math-v1": {"name": "single-math-v1", "system_prompt": "SYSM",
                       "prompt_template": "Q={question} REF={ref_answer_1} A={answer}"},
}
QUESTIONS = [{"question_id": 81, "category": "writing", "turns": ["Write a poem.", "t2"]},
             {"question_id": 111, "category": "math", "turns": ["What is 2+2?", "t2"]},
             {"question_id": 90, "category": "roleplay", "turns": ["Be a pirate.", "t2"]}]


class _Judge(BaseHTTPRequestHandler):
    requests: list = []
    fail_first: list = []  # HTTP codes to answer before succeeding

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        if type(self).fail_first:
            self.send_response(type(self).fail_first.pop(0))
            self.end_headers()
            self.wfile.write(b"busy")
            return
        user = body["messages"][-1]["content"]
        reply = "Good. Rating: [[9]]" if "poem" in user else ("Correct. [[7.5]]" if "REF=4" in user else "no score")
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": reply}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def judge_server():
    _Judge.requests, _Judge.fail_first = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_judging_round_trip(judge_server):
    cfg = JudgeConfig(url=judge_server, model="judge-x", api_key="k123", retries=0)
    judged = judge_first_turn(QUESTIONS, ["roses...", "4", "arr"], cfg, PROMPTS, {111: "4"})
    assert [j["score"] for j in judged] == [9.0, 7.5, None]
    req = _Judge.requests[1]
    assert req["path"] == "/v1/chat/completions" and req["auth"] == "Bearer k123"
    assert req["body"]["model"] == "judge-x" and req["body"]["temperature"] == 0.0
    assert req["body"]["messages"] == [{"role": "system", "content": "SYSM"},
                                       {"role": "user", "content": "Q=What is 2+2? REF=4 A=4"}]
    summary = summarize_scores(judged)
    assert summary["mean_score"] == pytest.approx(8.25) and summary["n_unrated"] == 1
    assert summary["mean_score/math"] == 7.5


def test_retries_server_errors_then_fails_fast_on_client_errors(judge_server, monkeypatch):
    monkeypatch.setattr(mtbench.time, "sleep", lambda s: None)
    cfg = JudgeConfig(url=judge_server + "/chat/completions", model="m", retries=2)
    _Judge.fail_first = [503, 500]
    messages = build_judge_messages(QUESTIONS[0], "roses", PROMPTS)
    assert parse_rating(chat_completion(cfg, messages)) == 9.0
    assert len(_Judge.requests) == 3
    _Judge.fail_first = [401]
    with pytest.raises(RuntimeError, match="HTTP 401"):
        chat_completion(cfg, messages)
    dead = JudgeConfig(url="http://127.0.0.1:9/v1", model="m", retries=1, timeout_s=2)
    with pytest.raises(RuntimeError, match="failed after 2 attempts"):
        chat_completion(dead, messages)


def test_missing_judge_raises_clear_error(monkeypatch):
    for var in (mtbench.ENV_URL, mtbench.ENV_MODEL, mtbench.ENV_KEY):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(JudgeNotConfigured, match="BALORA_JUDGE_URL, BALORA_JUDGE_MODEL"):
        JudgeConfig.resolve()
    monkeypatch.setenv(mtbench.ENV_URL, "http://127.0.0.1:1/v1")
    with pytest.raises(JudgeNotConfigured, match=r"missing: BALORA_JUDGE_MODEL\)"):
        JudgeConfig.resolve()
    monkeypatch.setenv(mtbench.ENV_MODEL, "gpt-4")
    assert JudgeConfig.resolve().endpoint == "http://127.0.0.1:1/v1/chat/completions"
    with pytest.raises(ValueError, match="url must start"):
        JudgeConfig(url="localhost:8000", model="m")


def test_mtbench_task_fails_fast_without_judge(monkeypatch, tmp_path):
    from balora.evaluation.tasks import evaluate_model

    for var in (mtbench.ENV_URL, mtbench.ENV_MODEL):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(JudgeNotConfigured):
        evaluate_model("mt-bench", model=None, tokenizer=None, data_path=tmp_path, out_dir=tmp_path)


def test_parse_rating():
    assert parse_rating("blah Rating: [[10]]") == 10.0
    assert parse_rating("Rating: [6.5]") == 6.5
    assert parse_rating("Rating: eight") is None


@pytest.mark.shared_data
def test_published_prompts_and_references(shared_data):
    folder = shared_data / "mt_bench"
    prompts = load_judge_prompts(folder / "judge_prompts.jsonl")
    questions = load_questions(folder / "question.jsonl")
    refs = load_reference_answers(folder / "reference_answer" / "gpt-4.jsonl")
    assert len(questions) == 80 and len(refs) == 30
    needing = [q for q in questions if q["category"] in mtbench.NEED_REFERENCE_CATEGORIES]
    assert len(needing) == 30 and all(q["question_id"] in refs for q in needing)
    for q in questions:
        msgs = build_judge_messages(q, "ANSWER", prompts, refs.get(q["question_id"]))
        assert q["turns"][0] in msgs[1]["content"] and "ANSWER" in msgs[1]["content"]
        assert ("[The Start of Reference Answer]" in msgs[1]["content"]) == (q in needing)


def test_mtbench_task_scoring_from_a_data_folder(judge_server, tmp_path):
    from balora.evaluation.tasks import ScoreContext, load_mtbench, score_mtbench

    (tmp_path / "reference_answer").mkdir()
    (tmp_path / "question.jsonl").write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS[:2]))
    (tmp_path / "judge_prompts.jsonl").write_text("".join(json.dumps(p) + "\n" for p in PROMPTS.values()))
    (tmp_path / "reference_answer" / "gpt-4.jsonl").write_text(
        json.dumps({"question_id": 111, "choices": [{"index": 0, "turns": ["4", "x"]}]}) + "\n")
    examples = load_mtbench(str(tmp_path))
    ctx = ScoreContext(judge=JudgeConfig(url=judge_server, model="m", retries=0), data_path=str(tmp_path))
    scores = score_mtbench(examples, ["a poem", "4"], ctx)
    assert [s["score"] for s in scores] == [9.0, 7.5]
