"""User data files: rows are schema-checked; a malformed row names its file and line."""

import json

import pytest

from rlcore.data.sources import DataError, load_rows


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
