"""The quick-start CLI on a tiny random SANA transformer: files, compare strip, metrics, errors, Ctrl-C."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from lab.fixtures import tiny_transformer
from temporal_tiling import cli, pipeline
from temporal_tiling.atomic import write_atomic
from temporal_tiling.border_resample import BorderResample

COMPRESSION = 8
# 64×32 px canvas, 32 px tiles with 8 px overlap: 3 × 2 tiles of 4×4 latent cells.
BASE = ["generate", "--prompt", "one sun over a red sky", "--width", "64", "--height", "40", "--tile", "32",
        "--overlap", "8", "--fit", "shift", "--steps", "2", "--cfg", "2.0", "--threads", "1"]  # fmt: skip


def tiny_loader(folder: Path, device: torch.device) -> cli.LoadedModel:
    transformer = tiny_transformer()

    def encode_prompt(prompt: str) -> torch.Tensor:
        generator = torch.Generator().manual_seed(zlib.crc32(prompt.encode()))
        return torch.randn(
            1, 3 + len(prompt.split()), 16, generator=generator
        )  # lengths differ like real ones

    def decode(latent: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(F.interpolate(latent[:, :3], scale_factor=COMPRESSION, mode="bilinear"))

    return cli.LoadedModel(transformer, encode_prompt, decode, COMPRESSION, 3.0, "tiny")


def run(argv: list[str], loader=tiny_loader) -> int:
    return cli.main(argv, loader=loader)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


def test_causal_writes_one_png_of_the_canvas_size(tmp_path: Path, capsys) -> None:
    assert run([*BASE, "--method", "causal", "--out", str(tmp_path)]) == 0
    with Image.open(tmp_path / "causal.png") as image:
        assert image.size == (64, 40) and image.mode == "RGB"
    assert (tmp_path / "metrics.md").is_file()
    assert leftovers(tmp_path) == []
    err = capsys.readouterr().err
    assert "causal" in err and "12/12" in err  # tqdm: 6 tiles × 2 steps


def test_compare_writes_each_method_a_strip_and_the_metrics(tmp_path: Path, capsys) -> None:
    assert run([*BASE, "--method", "compare", "--reference", "--out", str(tmp_path)]) == 0
    for name in ("independent", "multidiffusion", "causal", "guided", "full"):
        with Image.open(tmp_path / f"{name}.png") as image:
            assert image.size == (64, 40)
    with Image.open(tmp_path / "compare.png") as strip:
        assert strip.size == (64, 5 * (40 + 16))  # wide canvas: panels stacked, 16 px label each
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics) == {"independent", "multidiffusion", "causal", "guided"}
    for report in metrics.values():
        assert report["gradient_ratio_mean"] > 0 and report["psnr"] is not None and report["seconds"] > 0
    # Independent tiles disagree in their overlaps; causal tiles copy the locked content there.
    assert metrics["causal"]["overlap_psnr_mean"] > metrics["independent"]["overlap_psnr_mean"]
    table = (tmp_path / "metrics.md").read_text()
    assert "| independent |" in table and "| causal |" in table
    assert "| causal |" in capsys.readouterr().out
    assert leftovers(tmp_path) == []


def test_lock_flags_reach_the_causal_sampler(tmp_path: Path) -> None:
    images = {}
    for name, flags in (("locked", []), ("released", ["--lock-release", "1", "--release-band", "1"])):
        assert run([*BASE, "--method", "causal", *flags, "--out", str(tmp_path / name)]) == 0
        with Image.open(tmp_path / name / "causal.png") as image:
            images[name] = np.asarray(image)
    assert not np.array_equal(images["locked"], images["released"])


def test_lock_margin_flag_reaches_the_causal_sampler(tmp_path: Path, monkeypatch) -> None:
    margins = []

    def recording_generate(*args, **kwargs):
        margins.append(kwargs["lock_margin"])
        return generate(*args, **kwargs)

    generate = pipeline.generate  # the CLI imports it when a run starts
    monkeypatch.setattr(pipeline, "generate", recording_generate)
    assert run([*BASE, "--method", "causal", "--lock-margin", "2", "--out", str(tmp_path)]) == 0
    assert margins == [2]


def test_global_context_flags_render_a_guide(tmp_path: Path) -> None:
    argv = [
        *BASE,
        "--method",
        "causal",
        "--context-skip",
        "0.5",
        "--context-stats",
        "0.5",
        "--context-seed",
        "1.0",
        "--out",
        str(tmp_path),
    ]
    assert run(argv) == 0
    with Image.open(tmp_path / "guide.png") as guide:
        assert guide.size == (32, 24)  # the tile's long side, canvas aspect rounded to whole cells
    assert (tmp_path / "causal.png").is_file()


def test_guided_renders_the_whole_scene_first_with_either_upscale(tmp_path: Path) -> None:
    def loader_with_encoder(folder: Path, device: torch.device) -> cli.LoadedModel:
        model = tiny_loader(folder, device)

        def encode(image: torch.Tensor) -> torch.Tensor:
            rgb = torch.logit(F.avg_pool2d(image, COMPRESSION).clamp(0.01, 0.99))
            return torch.cat([rgb, torch.zeros_like(rgb[:, :1])], 1)

        model.encode = encode
        return model

    outputs = {}
    for upscale in ("latent", "pixel"):
        out = tmp_path / upscale
        argv = [
            *BASE,
            "--method",
            "guided",
            "--context-seed",
            "1",
            "--guide-upscale",
            upscale,
            "--out",
            str(out),
        ]
        assert run(argv, loader_with_encoder) == 0
        with Image.open(out / "guide.png") as guide, Image.open(out / "guided.png") as canvas:
            assert guide.size == (32, 24) and canvas.size == (64, 40)
            outputs[upscale] = np.asarray(canvas)
    assert not np.array_equal(outputs["latent"], outputs["pixel"])


def test_seam_refine_and_halo_flags_reach_every_method(tmp_path: Path, monkeypatch) -> None:
    refines = []

    def recording_generate(*args, **kwargs):
        refines.append((kwargs["method"], kwargs["seam_refine"], kwargs["halo"]))
        return generate(*args, **kwargs)

    generate = pipeline.generate  # the CLI imports it when a run starts
    monkeypatch.setattr(pipeline, "generate", recording_generate)
    assert run([*BASE, "--method", "independent", "--out", str(tmp_path / "off")]) == 0
    on = ["--method", "compare", "--seam-refine", "0.3", "--halo", "1", "--out", str(tmp_path / "on")]
    assert run([*BASE, *on]) == 0
    assert refines[0] == ("independent", None, None)  # no --halo: the method's own (RunSettings.tile_halo)
    assert {method for method, _, _ in refines[1:]} == set(cli.COMPARE)
    assert all(refine.denoise == 0.3 and halo == 1 for _, refine, halo in refines[1:])


def test_border_resample_flag_reaches_the_causal_methods_only(tmp_path: Path, monkeypatch) -> None:
    seen = {}

    def recording_generate(*args, **kwargs):
        seen[kwargs["method"]] = kwargs["border_resample"]
        return generate(*args, **kwargs)

    generate = pipeline.generate
    monkeypatch.setattr(pipeline, "generate", recording_generate)
    assert run([*BASE, "--method", "compare", "--border-resample", "2", "--out", str(tmp_path)]) == 0
    assert seen["causal"] == seen["guided"] == BorderResample(repeats=2)
    assert seen["independent"] is seen["multidiffusion"] is None


@pytest.mark.parametrize(
    ("flags", "flag", "message"),
    [
        (["--tile", "30"], "--tile", "multiple of the VAE's compression factor 8"),
        (["--tile", "128"], "--tile", "larger than the canvas"),
        (["--overlap", "32"], "--overlap", "must be smaller than the tile"),
        (["--width", "60"], "--width", "multiple"),
        (["--steps", "0"], "--steps", "must be >= 1"),
        (["--cfg", "nan"], "--cfg", "must be > 0"),
        (["--context-stats", "2"], "--context-stats", "must be <= 1"),
        (["--lock-release", "2"], "--lock-release", "must be <= 1"),
        (["--release-band", "-1"], "--release-band", "must be >= 0"),
        (["--lock-margin", "-1"], "--lock-margin", "must be >= 0"),
        (["--seam-refine", "1.5"], "--seam-refine", "must be <= 1"),
        (["--guide-denoise", "0"], "--guide-denoise", "must be > 0"),
        (["--method", "guided", "--guide-upscale", "pixel"], "--guide-upscale", "no image encoder"),
        (["--method", "magic"], "--method", "invalid choice"),
        (["--device", "warp9"], "--device", "unknown torch device"),
        (
            ["--method", "independent", "--context-skip", "0.5"],
            "--method",
            "only used by the causal and guided",
        ),
        (["--context-stats", "0.5", "--context-size", "1"], "--context-size", "needs at least 8 px"),
        (["--method", "guided", "--context-size", "1"], "--context-size", "needs at least 8 px"),
        (["--width", "100000"], "--width", "must be <= 16384"),
        (
            ["--width", "16384", "--height", "16384", "--tile", "64", "--overlap", "0"],
            "--max-tiles",
            "65536 tiles",
        ),
        (["--max-tiles", "5"], "--max-tiles", "more than the ceiling of 5"),
    ],
)
def test_bad_flags_end_with_an_argparse_error_naming_the_flag(
    tmp_path: Path, capsys, flags: list[str], flag: str, message: str
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run([*BASE, *flags, "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_a_failure_mid_run_leaves_the_output_folder_as_it_was(tmp_path: Path, capsys) -> None:
    """The first method's PNG is written, then the second fails: no file, no new folder remains."""
    from temporal_tiling.sampling import SamplingError

    def failing_loader(folder: Path, device: torch.device) -> cli.LoadedModel:
        model = tiny_loader(folder, device)
        decoded = []

        def decode(latent: torch.Tensor) -> torch.Tensor:
            decoded.append(1)
            if len(decoded) > 2:  # canvas + tiles of the first method decode; the second method fails
                raise SamplingError("the second method failed")
            return model.decode(latent)

        return cli.LoadedModel(model.transformer, model.encode_prompt, decode, COMPRESSION, 3.0, "tiny")

    with pytest.raises(SystemExit) as exit_info:
        run([*BASE, "--method", "compare", "--out", str(tmp_path / "new")], loader=failing_loader)
    assert exit_info.value.code == 2 and "the second method failed" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "causal.png").write_bytes(b"an earlier run")
    with pytest.raises(SystemExit):
        run([*BASE, "--method", "compare", "--out", str(tmp_path / "old")], loader=failing_loader)
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["causal.png"]
    assert (tmp_path / "old" / "causal.png").read_bytes() == b"an earlier run"


def test_one_cell_tiles_run(tmp_path: Path) -> None:
    assert run([*BASE, "--tile", "8", "--overlap", "0", "--out", str(tmp_path)]) == 0
    with Image.open(tmp_path / "guided.png") as image:  # the default method
        assert image.size == (64, 40)


def test_prompt_notes_and_long_runs_are_warned_about(tmp_path: Path, capsys) -> None:
    def noting_loader(folder: Path, device: torch.device) -> cli.LoadedModel:
        model = tiny_loader(folder, device)
        model.prompt_notes = lambda prompt: [f"words the model does not know: {prompt.split()[0]}"]
        return model

    argv = [*BASE, "--negative", "blurry", "--max-tiles", "2000", "--out", str(tmp_path)]
    argv[argv.index("--tile") + 1], argv[argv.index("--overlap") + 1] = "8", "0"
    argv[argv.index("--width") + 1], argv[argv.index("--height") + 1] = "160", "104"  # 20 × 13 tiles
    argv[argv.index("--steps") + 1] = "1"
    assert run(argv, loader=noting_loader) == 0
    err = capsys.readouterr().err
    assert "warning: --prompt: words the model does not know: one" in err
    assert "warning: --negative: words the model does not know: blurry" in err
    assert "warning: 260 tiles × 1 step × 1 method = 260 tile passes" in err


def test_help_and_argument_errors_load_no_torch_and_print_each_default_once() -> None:
    code = (
        "import sys\n"
        "from temporal_tiling import cli\n"
        "cli.build_parser().parse_args(['generate', '--prompt', 'x', '--out', 'o'])\n"
        "print(sorted(m for m in ('torch', 'diffusers', 'numpy', 'PIL') if m in sys.modules))\n"
    )
    root = Path(cli.__file__).resolve().parents[1]
    loaded = subprocess.run(
        [sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
    help_text = subprocess.run(
        [sys.executable, "-m", "temporal_tiling", "generate", "--help"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout
    entries = help_text.split("\n  --")[1:]
    assert len(entries) > 20 and any(e.startswith("max-tiles") for e in entries)
    assert all(" ".join(e.split()).count("default") <= 1 for e in entries), entries
    assert "(default: )" not in help_text


def test_cli_defaults_are_the_engines() -> None:
    from temporal_tiling.bcla import BCLAConfig
    from temporal_tiling.flow import SAMPLERS

    args = cli.build_parser().parse_args(["generate", "--prompt", "x", "--out", "o"])
    engine = BCLAConfig()
    assert (args.bcla_mode, args.bcla_strength, args.bcla_source) == (
        engine.mode,
        engine.strength,
        engine.source,
    )
    assert tuple(SAMPLERS) == cli.SAMPLER_NAMES


def test_missing_embedded_model_says_so(tmp_path: Path, capsys, monkeypatch) -> None:
    missing = tmp_path / "embedded" / "seamlab-sana"
    monkeypatch.setattr(cli, "EMBEDDED_MODEL", missing)
    with pytest.raises(SystemExit) as exit_info:
        cli.main([*BASE, "--model", str(missing), "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --model: the embedded model is missing" in err
    assert "lab.training build" in err


def test_not_a_model_folder(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        cli.main([*BASE, "--model", str(tmp_path), "--out", str(tmp_path / "out")])
    assert "is not a diffusers SANA folder" in capsys.readouterr().err


def test_interrupt_leaves_no_partial_file(tmp_path: Path, capsys, monkeypatch) -> None:
    def interrupted_fsync(fd: int) -> None:
        assert next(tmp_path.rglob(".independent.png.*.tmp")).stat().st_size > 0  # half-way through
        raise KeyboardInterrupt  # Ctrl-C while the first PNG is being written

    monkeypatch.setattr(os, "fsync", interrupted_fsync)
    assert run([*BASE, "--method", "independent", "--out", str(tmp_path)]) == 130
    assert list(tmp_path.iterdir()) == []
    assert "interrupted" in capsys.readouterr().err


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "a.png"
    write_atomic(target, b"first")
    write_atomic(target, b"second")
    assert target.read_bytes() == b"second" and leftovers(tmp_path) == []
    mask = os.umask(0o022)
    try:
        write_atomic(target, b"third")
    finally:
        os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o644  # not mkstemp's private 0600


def test_module_entry_point_prints_help(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "argv", ["python -m temporal_tiling", "generate", "--help"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("temporal_tiling", run_name="__main__")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--method" in out and "compare" in out and "--context-seed" in out


@pytest.mark.skipif(
    not (cli.EMBEDDED_MODEL / "model_index.json").is_file(), reason="the embedded model has not been built"
)
def test_embedded_model_renders_through_the_real_loader(tmp_path: Path) -> None:
    prompt = "a blue to pink sky with one sun at top left"
    size = ["--width", "128", "--height", "64", "--tile", "64", "--overlap", "16"]
    argv = ["generate", "--prompt", prompt, *size, "--steps", "3", "--threads", "1", "--out", str(tmp_path)]
    assert cli.main(argv) == 0
    with Image.open(tmp_path / "guided.png") as image:
        assert image.size == (128, 64)
        pixels = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).float()
    assert pixels.std() > 5  # a picture, not a flat or black canvas


# --- every wrong input: one line, exit 2, before the model loads ------------------------------------


def one_error_line(capsys, argv: list[str], loader=tiny_loader) -> str:
    """Run the CLI expecting a user error: exit 2 and exactly one stderr line, no usage, no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        run(argv, loader)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert re.match(r"python -m temporal_tiling( generate)?: error: \S", lines[0]), lines
    return lines[0]


def refusing_loader(folder: Path, device: torch.device) -> cli.LoadedModel:
    raise AssertionError("the model was loaded before the settings were checked")


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        (["--seed", str(2**64)], "argument --seed: must be <= 18446744073709551615"),
        (["--seed", "-1"], "argument --seed: must be >= 0"),
        (["--seed", "2^63"], "argument --seed: expected a whole number, got '2^63'"),
        (["--out", ""], "argument --out: expected a folder name, got an empty path"),
        (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
        (["--method", "magic"], "argument --method: invalid choice: 'magic'"),
        (["--tile"], "argument --tile: expected one argument"),
        (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
    ],
)
def test_argument_errors_are_one_line_without_the_usage_block(
    tmp_path: Path, capsys, flags: list[str], expected: str
) -> None:
    line = one_error_line(capsys, [*BASE, "--out", str(tmp_path / "out"), *flags], refusing_loader)
    assert expected in line


def test_a_missing_required_flag_is_one_line(capsys) -> None:
    line = one_error_line(capsys, ["generate", "--out", "x"], refusing_loader)
    assert line.endswith("the following arguments are required: --prompt")


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (["--tile", "30"], "--tile"),
        (["--tile", "128"], "--tile"),
        (["--overlap", "32"], "--overlap"),
        (["--width", "60"], "--width"),
        (["--max-tiles", "5"], "--max-tiles"),
        (["--method", "guided", "--context-size", "1"], "--context-size"),
    ],
)
def test_plan_errors_come_before_the_model_loads(tmp_path: Path, capsys, flags: list[str], flag: str) -> None:
    line = one_error_line(capsys, [*BASE, *flags, "--out", str(tmp_path / "out")], refusing_loader)
    assert f"error: argument {flag}: " in line
    assert not (tmp_path / "out").exists()


def test_plan_errors_name_flags_not_engine_parameters(tmp_path: Path, capsys) -> None:
    line = one_error_line(capsys, [*BASE, "--max-tiles", "5", "--out", str(tmp_path)], refusing_loader)
    assert "argument --max-tiles: The plan has 6 tiles" in line and "raise --max-tiles" in line
    assert "max_tiles" not in line
    line = one_error_line(capsys, [*BASE, "--tile", "30", "--out", str(tmp_path)], refusing_loader)
    assert "argument --tile: --tile = 30 px is not a multiple" in line and "tile_width" not in line
    flags = ["--tile-height", "20", "--out", str(tmp_path)]
    line = one_error_line(capsys, [*BASE, *flags], refusing_loader)
    assert "argument --tile-height: --tile-height = 20 px" in line


def test_an_unwritable_out_is_found_before_the_model_loads_and_named(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    out = tmp_path / "out"

    def read_only(prefix: str, dir: Path) -> str:
        raise PermissionError(13, "Permission denied", str(Path(dir) / f"{prefix}abc123"))

    monkeypatch.setattr(cli.tempfile, "mkdtemp", read_only)
    line = one_error_line(capsys, [*BASE, "--out", str(out)], refusing_loader)
    assert line.endswith(f"argument --out: cannot write into '{out}': Permission denied")
    assert ".partial" not in line and not out.exists()


def test_a_full_disk_names_the_output_folder_not_the_staging_folder(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    def full_disk(path: Path, data: bytes) -> None:
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(cli, "write_atomic", full_disk)
    with pytest.raises(SystemExit) as exit_info:
        run([*BASE, "--method", "independent", "--out", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    line = capsys.readouterr().err.splitlines()[-1]  # after the run's progress lines
    assert line.endswith(f"argument --out: cannot write into '{tmp_path / 'out'}': No space left on device")
    assert not (tmp_path / "out").exists()


def test_a_seed_past_32_bits_runs_and_says_which_noise_it_draws(tmp_path: Path, capsys) -> None:
    """torch's CPU generator keeps a seed's low 32 bits: 2^63 draws seed 0's noise, and is told so."""
    images = {}
    for seed in (0, 2**63, 2**64 - 1, 2**32 - 1):
        assert (
            run([*BASE, "--method", "independent", "--seed", str(seed), "--out", str(tmp_path / str(seed))])
            == 0
        )
        with Image.open(tmp_path / str(seed) / "independent.png") as image:
            images[seed] = np.asarray(image)
        err = capsys.readouterr().err
        said = f"warning: --seed: {seed} draws the same canvas noise as --seed {seed % 2**32}"
        assert (said in err) == (seed >= 2**32), err
    assert np.array_equal(images[0], images[2**63])  # what the warning says
    assert np.array_equal(images[2**32 - 1], images[2**64 - 1])
    assert not np.array_equal(images[0], images[2**32 - 1])


def test_any_user_input_error_of_any_command_is_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    """main() is the one place: any command's UserInputError (even multi-line) or OSError is one line."""
    from temporal_tiling.errors import UserInputError

    def failing(error: Exception):
        def run_command(args, loader) -> None:
            raise error

        return run_command

    for error, expected in (
        (
            UserInputError("the first line\n  and its continuation"),
            "error: the first line and its continuation",
        ),
        (cli.CLIError("too big", "--width"), "error: argument --width: too big"),
        (FileNotFoundError(2, "No such file or directory", "x.json"), "No such file or directory: 'x.json'"),
    ):
        monkeypatch.setattr(cli, "run_generate", failing(error))  # build_parser binds run at main()
        assert one_error_line(capsys, [*BASE, "--out", str(tmp_path)]).endswith(expected)


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    from lab.fixtures import write_pipeline_folder

    return write_pipeline_folder(tmp_path_factory.mktemp("models") / "tiny-sana")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("file", "damage", "says"),
    [
        ("transformer/config.json", lambda p: p.write_text('{"num_layers": '), "is corrupt: not valid JSON"),
        ("vae/config.json", lambda p: p.write_text("nope"), "is corrupt: not valid JSON"),
        ("scheduler/scheduler_config.json", lambda p: p.write_text("{"), "is corrupt: not valid JSON"),
        ("tokenizer/tokenizer.json", lambda p: p.write_text('{"model": '), "is corrupt: not valid JSON"),
        ("text_encoder/model.safetensors", _truncate, "is truncated or corrupt"),
        ("transformer/diffusion_pytorch_model.safetensors", _truncate, "is truncated or corrupt"),
        ("vae/diffusion_pytorch_model.safetensors", _truncate, "is truncated or corrupt"),
    ],
)
def test_a_broken_model_file_is_named_once_in_one_line(
    tmp_path: Path, capsys, tiny_folder: Path, file: str, damage, says: str
) -> None:
    folder = shutil.copytree(tiny_folder, tmp_path / "model")
    damage(folder / file)
    argv = [*BASE, "--method", "independent", "--model", str(folder), "--out", str(tmp_path / "out")]
    line = one_error_line(capsys, argv, cli.load_sana_folder)
    assert f"argument --model: '{folder / file}' {says}" in line
    assert line.count(str(folder)) == 1 and "Traceback" not in line
    assert not (tmp_path / "out").exists()


def test_a_config_diffusers_cannot_build_is_one_line_naming_the_file(
    tmp_path: Path, capsys, tiny_folder: Path
) -> None:
    folder = shutil.copytree(tiny_folder, tmp_path / "model")
    config = json.loads((folder / "transformer" / "config.json").read_text())
    (folder / "transformer" / "config.json").write_text(json.dumps({**config, "num_layers": "lots"}))
    argv = [*BASE, "--model", str(folder), "--out", str(tmp_path / "out")]
    line = one_error_line(capsys, argv, cli.load_sana_folder)
    config_path = folder / "transformer" / "config.json"
    assert f"argument --model: '{config_path}' holds a value of the wrong type" in line
    assert line.endswith("restore the model folder's config.json.")


def test_the_tiny_folder_loads_through_the_real_loader(tmp_path: Path, tiny_folder: Path) -> None:
    """The broken-file cases above fail because of the damage, not because the folder never loads."""
    argv = [*BASE, "--method", "independent", "--model", str(tiny_folder), "--out", str(tmp_path)]
    assert cli.main(argv) == 0 and (tmp_path / "independent.png").is_file()


def test_one_dropped_token_is_said_in_the_singular(tiny_folder: Path) -> None:
    from temporal_tiling.sana import load_text_encoder

    text = load_text_encoder(tiny_folder, instruction="never")
    prompt = "a sky " * 5
    count = len(text.tokenizer(prompt).input_ids)
    text.max_sequence_length = count - 1
    assert text.prompt_notes(prompt)[-1] == "the prompt is cut short: its last 1 token is dropped"
    text.max_sequence_length = count - 2
    assert text.prompt_notes(prompt)[-1] == "the prompt is cut short: its last 2 tokens are dropped"


def test_help_shows_every_default() -> None:
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer), pytest.raises(SystemExit):
        cli.main(["generate", "--help"])
    help_text = buffer.getvalue()
    entries = help_text.split("\n  --")[1:]
    without = [
        e.split()[0]
        for e in entries
        if "default" not in e and e.split()[0] not in ("prompt", "out", "reference")
    ]
    assert without == []


@pytest.mark.parametrize(
    ("environ", "cpus", "threads"),
    [
        ({}, 2, 1),
        ({}, 16, 8),
        ({}, 1, 1),
        ({"OMP_NUM_THREADS": "3"}, 16, 3),
        ({"OMP_NUM_THREADS": "x"}, 4, 2),
    ],
)
def test_default_threads_leave_half_the_machine_to_others(
    monkeypatch, environ, cpus: int, threads: int
) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for key, value in environ.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cpus)))
    assert cli.default_threads() == threads
    assert cli.build_parser().parse_args(["generate", "--prompt", "x", "--out", "o"]).threads == threads


def test_the_thread_count_reaches_torch(tmp_path: Path, monkeypatch) -> None:
    counts = []
    monkeypatch.setattr(torch, "set_num_threads", counts.append)
    argv = BASE[: BASE.index("--threads")]
    monkeypatch.setattr(cli, "default_threads", lambda: 3)
    assert run([*argv, "--method", "independent", "--out", str(tmp_path)]) == 0
    assert counts == [3]


def test_the_module_entry_point_gives_one_line_and_exit_2() -> None:
    """The real `python -m temporal_tiling`, as a user runs it: no usage block, no traceback."""
    root = Path(cli.__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "temporal_tiling",
            "generate",
            "--prompt",
            "x",
            "--seed",
            str(2**64),
            "--out",
            "o",
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "python -m temporal_tiling generate: error: argument --seed: must be <= 18446744073709551615, "
        f"got {2**64}"
    ]
