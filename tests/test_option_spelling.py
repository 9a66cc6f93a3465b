"""One spelling ("color") in the command line and the Python API; the former spellings still work and warn.

The node input ``estimate_colours`` keeps its name: it is stored in users' workflows.
"""

from __future__ import annotations

import pytest
import torch

from icm_core.commands.cli import build_parser
from icm_core.outputs import make_outputs, parse_color, parse_colour

MATTE = ["matte", "t.png", "--sd", "sd", "--decoder", "d.pth", "--out", "out", "--reference", "r.png",
         "--reference-mask", "m.png"]


def test_no_color_estimation_and_its_former_spelling(capsys):
    assert build_parser().parse_args(MATTE).no_color_estimation is False
    assert build_parser().parse_args([*MATTE, "--no-color-estimation"]).no_color_estimation is True
    capsys.readouterr()
    assert build_parser().parse_args([*MATTE, "--no-colour-estimation"]).no_color_estimation is True
    assert "warning: --no-colour-estimation is deprecated; use --no-color-estimation" in capsys.readouterr().err


def test_the_former_spelling_is_hidden_from_help(capsys):
    with pytest.raises(SystemExit):
        build_parser().parse_args(["matte", "--help"])
    text = capsys.readouterr().out
    assert "--no-color-estimation" in text and "--no-colour-estimation" not in text


def test_every_engine_command_offers_the_same_runtime_options(capsys):
    for command in ("matte", "evaluate", "train", "demo"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([command, "--help"])
        text = capsys.readouterr().out
        for option in ("--device", "--dtype", "--autocast", "--channels-last"):
            assert option in text, (command, option)


def test_make_outputs_former_keyword_warns_and_acts_alike():
    image, alpha = torch.rand(3, 64, 64), torch.rand(64, 64)
    plain = make_outputs(image, alpha, ("foreground",), estimate_colors=False)
    with pytest.warns(DeprecationWarning, match="estimate_colors"):
        former = make_outputs(image, alpha, ("foreground",), estimate_colours=False)
    assert torch.equal(plain.foreground, former.foreground) and torch.equal(plain.foreground, image)
    assert parse_colour is parse_color and parse_color("#00ff00") == (0.0, 1.0, 0.0)
