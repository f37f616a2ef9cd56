"""The label map typed as text: one parser (data/label_text.py) behind the UI's label box, the CLI's --label
and GET /api/labels/parse."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from data.errors import InvalidInput
from data.label_text import PALETTE, parse_label_text


def test_parse_labels_defaults_values_and_colours():
    labels = parse_label_text("anterior\nposterior #3CB44B")
    assert labels == [
        {"value": 1, "name": "anterior", "color": PALETTE[0]},
        {"value": 2, "name": "posterior", "color": "#3cb44b"},
    ]


def test_parse_labels_explicit_values_commas_and_multiword_names():
    labels = parse_label_text("3 left hippocampus #112233, 7 right hippocampus")
    assert [(l["value"], l["name"]) for l in labels] == [(3, "left hippocampus"), (7, "right hippocampus")]
    assert labels[0]["color"] == "#112233"


def test_the_command_line_colon_form_reads_the_same():
    assert parse_label_text("1:anterior:#E6194B\n2:left hippocampus:#3cb44b") == [
        {"value": 1, "name": "anterior", "color": "#e6194b"},
        {"value": 2, "name": "left hippocampus", "color": "#3cb44b"},
    ]
    assert parse_label_text("2 a\nb") == [
        {"value": 2, "name": "a", "color": PALETTE[0]},
        {"value": 1, "name": "b", "color": PALETTE[1]},
    ]
    assert parse_label_text("note: liver")[0]["name"] == "note: liver"  # a colon inside a name stays


@pytest.mark.parametrize(
    "text, words",
    [
        ("", "at least one"),
        (" ,\n, ", "at least one"),
        ("a #12345", "colour"),
        ("1:a:#12345", "colour '#12345' must look like #e6194b"),
        ("1 a\n1 b", "used twice"),
        ("a\nA", "used twice"),
        ("255 x", "1..254"),
        ("0 x", "1..254"),
        ("1:x:#ff0000, 0:y:#00ff00", "value 0 must be 1..254 (0 is background, 255 'not painted')"),
        ("#e6194b", "no name"),
        ("7 #e6194b", "has no name"),
    ],
)
def test_parse_labels_refuses_with_a_reason(text, words):
    with pytest.raises(InvalidInput, match=re.escape(words)):
        parse_label_text(text)


def test_the_api_reads_label_text_and_refuses_bad_text_with_the_reason(tmp_path):
    with TestClient(create_app(Settings(workspace=tmp_path / "ws", demo=False))) as client:
        read = client.get("/api/labels/parse", params={"text": "liver, 4 spleen #00FF00"})
        assert read.status_code == 200
        assert read.json() == [
            {"value": 1, "name": "liver", "color": PALETTE[0]},
            {"value": 4, "name": "spleen", "color": "#00ff00"},
        ]
        refused = client.get("/api/labels/parse", params={"text": "1 a\n1 b"})
        assert refused.status_code == 422 and refused.json()["detail"] == "label value 1 is used twice"
        assert client.get("/api/projects").json() == []


def test_cli_import_reads_labels_with_the_same_parser(tmp_path, capsys):
    from app.cli import main
    from data.store import Workspace

    workspace = tmp_path / "ws"
    missing = tmp_path / "missing.nii.gz"
    args = ["import", "--workspace", str(workspace), "--project", "P"]
    assert main([*args, "--label", "1:a:#12345", str(missing)]) == 2
    assert "--label: label '1:a:#12345': colour '#12345' must look like #e6194b" in capsys.readouterr().err
    assert Workspace(workspace).list_projects() == []
    assert main([*args, "--label", "1:lesion:#FF0000", "--label", "oedema", str(missing)]) == 1
    (project,) = Workspace(workspace).list_projects()
    assert project["labels"] == [
        {"value": 1, "name": "lesion", "color": "#ff0000"},
        {"value": 2, "name": "oedema", "color": PALETTE[1]},
    ]
