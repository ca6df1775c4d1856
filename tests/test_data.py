"""User data: the `data` section (every file type, saved datasets, tasks, chat turns, bad rows, the seeded
order) and the fixed-schema files; a malformed row names its file and line."""

import json

import datasets
import pytest

from launch.cli import main
from rlcore.core.config import DataConfig
from rlcore.data.sources import DataError, RowStream, load_data, load_rows, prompt_text
from rlcore.models.loading import load_tokenizer


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_good_rows_load_with_extra_keys(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "1+1=", "answer": "2"}), "",
                                             json.dumps({"prompt": "2+2="})])
    loaded = load_rows(path, "prompts")
    assert loaded.skipped == 0 and loaded.rows["prompt"] == ["1+1=", "2+2="]


@pytest.mark.parametrize(
    "schema, bad_row, message",
    [
        ("prompts", '{"prompt": ""}', "'prompt' must be a non-empty string"),
        ("prompts", '{"prompt": "1+1="', "not valid JSON"),
        ("prompts", '[1, 2]', "expected a JSON object"),
        ("preferences", '{"prompt": "q", "chosen": "a"}', "'rejected' must be a non-empty string"),
        ("rankings", '{"query": "q", "responses": ["a", "b"], "scores": [1]}', "'scores' must be a list as long"),
        ("rankings", '{"query": "q", "responses": ["a"], "scores": [NaN]}', "'scores' must be finite numbers"),
        ("rankings", '{"query": "q", "responses": [], "scores": []}', "'responses' must be a non-empty list"),
    ],
)
def test_malformed_row_names_file_and_line(tmp_path, schema, bad_row, message):
    good = {"prompts": {"prompt": "q"}, "preferences": {"prompt": "q", "chosen": "a", "rejected": "b"},
            "rankings": {"query": "q", "responses": ["a", "b"], "scores": [1, 0]}}[schema]
    path = write_lines(tmp_path / "d.jsonl", [json.dumps(good), json.dumps(good), bad_row])
    with pytest.raises(DataError) as err:
        load_rows(path, schema)
    assert f"{path}:line 3: {message}" in str(err.value)
    loaded = load_rows(path, schema, on_error="skip")
    assert (len(loaded.rows), loaded.skipped) == (2, 1)


def test_parquet_rows_are_checked(tmp_path):
    import datasets

    path = tmp_path / "p.parquet"
    datasets.Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"},
                                {"prompt": "a", "chosen": "", "rejected": "c"}]).to_parquet(str(path))
    with pytest.raises(DataError, match=r"p\.parquet:row 1: 'chosen' must be a non-empty string"):
        load_rows(path, "preferences")


def test_file_level_errors(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_rows(tmp_path / "missing.jsonl", "prompts")
    with pytest.raises(DataError, match="unsupported file type '.csv'"):
        load_rows(write_lines(tmp_path / "x.csv", ["a"]), "prompts")
    with pytest.raises(DataError, match="no valid prompts rows"):
        load_rows(write_lines(tmp_path / "e.jsonl", ['{"x": 1}']), "prompts", on_error="skip")
    with pytest.raises(ValueError, match="unknown schema 'pairs'"):
        load_rows(tmp_path / "e.jsonl", "pairs")


# ---------------------------------------------------------------------------- the data section (load_data)


def data_config(**changes) -> DataConfig:
    return DataConfig(**{"shuffle": False, "eval_size": 2, **changes})


def test_every_file_type_and_a_saved_dataset_give_the_same_rows(tmp_path):
    rows = [{"question": f"{i}+1=", "solution": i + 1, "chosen": f"{i + 1}", "rejected": "0"} for i in range(6)]
    dataset = datasets.Dataset.from_list(rows)
    paths = [write_lines(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])]
    for suffix in ("parquet", "csv", "json"):
        getattr(dataset, f"to_{suffix}")(str(tmp_path / f"d.{suffix}"), **({"lines": False} if suffix == "json"
                                                                           else {}))
        paths.append(tmp_path / f"d.{suffix}")
    dataset.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": dataset, "test": dataset.select([0])}).save_to_disk(str(tmp_path / "splits"))
    paths += [tmp_path / "saved", tmp_path / "splits"]
    for path in paths:
        config = data_config(train=str(path), prompt_key="question", answer_key="solution")
        train, heldout = load_data(config, "train"), load_data(config, "eval")
        assert [r["prompt"] for r in train.rows] == ["0+1=", "1+1=", "2+1=", "3+1="], path
        assert [r["answer"] for r in heldout.rows] == ["5", "6"], path  # numbers become text
        assert train.rows[0]["chosen"] == "1" and train.task is None
    config = data_config(train=str(tmp_path / "splits"), eval=str(tmp_path / "splits"), prompt_key="question")
    assert [r["prompt"] for r in load_data(config, "eval").rows] == ["0+1="]  # eval_split "test"


def test_task_sources_are_one_source_among_others():
    config = DataConfig(train="task:arithmetic", eval_size=5)
    train, heldout = load_data(config, "train", 10), load_data(config, "eval")
    assert train.task.name == "arithmetic" and len(train.rows) == 10 and len(heldout.rows) == 5
    assert all(train.task.verify(r["prompt"], r["answer"]) == 1.0 for r in train.rows + heldout.rows)
    assert all(r["chosen"] == r["answer"] != r["rejected"] for r in train.rows)
    assert not {r["prompt"] for r in train.rows} & {r["prompt"] for r in heldout.rows}


def test_malformed_rows_name_file_and_row_or_are_counted(tmp_path):
    path = write_lines(tmp_path / "p.jsonl", [json.dumps({"prompt": "a"}), json.dumps({"prompt": 3}),
                                             "{oops", json.dumps({"prompt": "b", "answer": [1]}),
                                             *[json.dumps({"prompt": f"q{i}"}) for i in range(6)]])
    with pytest.raises(DataError, match=r"p.jsonl:line 2: 'prompt' must be a non-empty string.*on_error=skip"):
        load_data(data_config(train=str(path)), "train")
    loaded = load_data(data_config(train=str(path), on_error="skip"), "train")
    assert loaded.skipped == {"malformed": 3, "too_long": 0} and len(loaded.rows) == 7 - 2
    parquet = tmp_path / "p.parquet"
    datasets.Dataset.from_list([{"text": "x"}, {"text": None}]).to_parquet(str(parquet))
    with pytest.raises(DataError, match=r"p.parquet:row 1: 'text'"):
        load_data(data_config(train=str(parquet), prompt_key="text"), "train")
    with pytest.raises(DataError, match="no such file"):
        load_data(data_config(train=str(tmp_path / "missing.parquet")), "train")


def test_chat_turns_long_prompts_and_the_seeded_order(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q" * (i + 1)}]}
            for i in range(10)]
    path = write_lines(tmp_path / "chat.jsonl", [json.dumps(r) for r in rows])
    config = data_config(train=str(path), messages_key="messages", max_prompt_tokens=5, shuffle=True)

    def tokens(turns):
        return len(turns[-1]["content"])

    loaded = load_data(config, "train", prompt_tokens=tokens)
    assert loaded.skipped == {"malformed": 0, "too_long": 5}
    lengths = [len(r["prompt"][-1]["content"]) for r in loaded.rows]
    assert len(lengths) == 3 and set(lengths) < {1, 2, 3, 4, 5}  # 5 short prompts, 2 of them held out for eval
    held_out = [tokens(r["prompt"]) for r in load_data(config, "eval", prompt_tokens=tokens).rows]
    assert sorted(lengths + held_out) == [1, 2, 3, 4, 5]
    assert prompt_text(loaded.rows[0]["prompt"]).startswith("system: be brief\nuser: q")
    again = load_data(config, "train", prompt_tokens=tokens)
    assert again.rows == loaded.rows
    with pytest.raises(DataError, match="'messages' must be a non-empty list"):
        load_data(data_config(train=str(write_lines(tmp_path / "bad.jsonl", ['{"messages": "hi"}'])),
                              messages_key="messages"), "train")


def test_row_stream_depends_on_the_step_alone():
    rows = [{"prompt": str(i)} for i in range(5)]
    stream = RowStream(rows, seed=0, shuffle=True)
    taken = [r["prompt"] for step in range(1, 6) for r in stream.take(step, 3)]  # 3 passes over 5 rows
    assert sorted(taken[:5]) == sorted(taken[5:10]) == [str(i) for i in range(5)]  # every pass sees every row
    assert taken[:5] != taken[5:10]  # each pass in its own order
    assert [r["prompt"] for r in RowStream(rows, 0, True).take(4, 3)] == taken[9:12]  # a resumed stream agrees
    assert stream.passes(5, 3) == 3.0


def test_dotted_keys_read_nested_rows_like_the_vendored_hh_preferences(tmp_path):
    """The TARA HH-RLHF rows nest their responses ({"pos_answer": {"answer": ...}}): dotted keys map them, and
    `rlcore tiny-lm` trains a tokenizer on that text for a tiny stand-in model."""
    config = DataConfig(train="data/tara/hh_rlhf_train.jsonl", prompt_key="question",
                        chosen_key="pos_answer.answer", rejected_key="neg_answer.answer", eval_size=64)
    train, heldout = load_data(config, "train"), load_data(config, "eval")
    assert len(train.rows) + len(heldout.rows) == 500 and len(heldout.rows) == 64
    assert all(r["chosen"] and r["rejected"] and r["answer"] is None for r in train.rows)
    result = main(["tiny-lm", "data/tara/hh_rlhf_train.jsonl", str(tmp_path / "lm"),
                   "--keys", "question,pos_answer.answer", "--vocab", "512"])
    assert result == 0
    tokenizer = load_tokenizer(str(tmp_path / "lm"))
    text = train.rows[0]["chosen"]
    assert len(tokenizer(text)["input_ids"]) < 0.6 * len(text.encode())  # a trained vocabulary, not bytes
