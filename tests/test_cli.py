from PIL import Image

from common.cli import main


def write_image(path, size=(32, 32)):
    from common.shapes import generate_shapes

    image, _ = generate_shapes(1, seed=len(str(path)))
    Image.fromarray(image[0].permute(1, 2, 0).numpy()).resize(size).save(path)


def test_obfuscate_writes_pngs_and_comparison(tmp_path, capsys):
    a, b = tmp_path / "a.png", tmp_path / "b.jpg"
    write_image(a)
    write_image(b, (40, 36))  # cropped to 40x32 to fit 8-pixel regions
    out = tmp_path / "out"
    code = main(["obfuscate", str(a), str(b), "--out", str(out), "--target-vfe", "0.8", "--seed", "1"])
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"a.png", "b.png", "comparison.png"}
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2
    assert all(float(line.split("VFE ")[1].split()[0]) >= 0.8 for line in lines)
    assert Image.open(out / "b.png").size == (40, 32)


def test_unreadable_files_are_reported_and_do_not_stop_the_others(tmp_path, capsys):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    write_image(good)
    bad.write_text("not an image")
    code = main(["vfe", str(bad), str(tmp_path / "missing.png"), str(good)])
    captured = capsys.readouterr()
    assert code == 1
    assert "good.png" in captured.out and "bad.png" in captured.err and "missing.png" in captured.err


def test_bad_target_is_a_clear_error(tmp_path, capsys):
    write_image(tmp_path / "a.png")
    assert main(["obfuscate", str(tmp_path / "a.png"), "--out", str(tmp_path), "--target-vfe", "3"]) == 2
    assert "target_vfe" in capsys.readouterr().err


def test_help_answers_without_importing_torch():
    """`visualmixer --help` builds the parser alone: no torch import (seconds on an edge CPU)."""
    import subprocess
    import sys

    code = "import sys, common.cli as c; c.build_parser().format_help(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_every_option_has_help_text():
    from common.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for command in commands.values():
        for action in command._actions:
            assert action.help, f"{command.prog} {action.dest} has no help"
