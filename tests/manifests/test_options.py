"""One definition of each option (datl.core.options: opt / options_from / validate): the click command, the
library config and pipeline.yaml's parameter check read the same fields."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap

import click
import pytest

from datl.core.options import opt, options_from
from datl.curate.dedup import DedupConfig
from datl.curate.estimate import EstimateConfig
from datl.curate.features import FeaturesConfig
from datl.curate.sample import SampleConfig
from datl.curate.weight import WeightConfig
from datl.finetune.config import FinetuneConfig
from datl.pretrain.config import PretrainConfig
from datl.stages import click_command, negatable, option_names

CONFIGS = {
    "pretrain": PretrainConfig,
    "finetune": FinetuneConfig,
    "estimate": EstimateConfig,
    "dedup": DedupConfig,
    "features": FeaturesConfig,
    "weight": WeightConfig,
    "sample": SampleConfig,
}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_cli_defaults_are_the_configs_defaults(kind):
    """Parse each stage's command with only its required options: every parameter equals the
    config's own default (finetune's --lr once disagreed: 0.01 on the CLI, 0.1 in the library)."""
    config = CONFIGS[kind]
    command = click_command(kind)
    required = {p.name: "x" for p in command.params if p.required}
    argv = [
        a
        for name, value in required.items()
        for a in (next(o for o in command.params if o.name == name).opts[0], value)
    ]
    params = command.make_context(kind, argv).params
    library = dataclasses.asdict(config(**required))
    assert params == library


def test_finetune_library_and_cli_agree_on_the_learning_rate():
    assert FinetuneConfig(train="t", out="o", test="x").lr == 0.01
    assert PretrainConfig(manifest="t", model="m", out="o").lr == 0.1


def test_pipeline_check_sees_exactly_the_config_fields():
    """option_names (what pipeline.yaml may set) = the config's fields minus the inputs and
    the flags the runner sets itself."""
    assert option_names("sample") == {"uniform", "size", "replacement", "seed", "classes"}  # hierarchy: an input
    assert "lr" in option_names("finetune") and "adapt" in option_names("finetune")
    assert negatable("sample") == {"replacement"}


def test_options_from_makes_required_choice_flag_and_negatable_options():
    @dataclasses.dataclass(kw_only=True)
    class Toy:
        name: str = opt(short="-n", help="required")
        kind: str = opt("a", choices=("a", "b"), noun="kind")
        steps: int | None = opt(None)
        fast: bool = opt(False)
        keep: bool = opt(True, negatable=True)
        secret: int = opt(3, cli=False)

    @click.command()
    @options_from(Toy)
    def cmd(**kw):
        click.echo(repr(Toy(**kw)))

    params = {p.name: p for p in cmd.params}
    assert list(params) == ["name", "kind", "steps", "fast", "keep"]
    assert params["name"].required and "-n" in params["name"].opts
    assert params["keep"].secondary_opts == ["--no-keep"]
    ctx = cmd.make_context("cmd", ["-n", "z", "--no-keep", "--steps", "4", "--fast"])
    assert ctx.params == {"name": "z", "kind": "a", "steps": 4, "fast": True, "keep": False}
    with pytest.raises(click.BadParameter, match="unknown kind 'c' \\(pass one of a, b\\)"):
        cmd.make_context("cmd", ["-n", "z", "--kind", "c"])


def test_a_bad_choice_is_one_line_and_exit_2(tmp_path):
    script = tmp_path / "toy.py"
    script.write_text(
        textwrap.dedent("""
        import dataclasses, click
        from datl.core.options import opt, options_from
        from datl.core.cli import run_cli

        @dataclasses.dataclass(kw_only=True)
        class Toy:
            kind: str = opt("a", choices=("a", "b"), noun="kind")

        @click.command()
        @options_from(Toy)
        def cmd(**kw):
            pass

        run_cli(cmd, "toy")
    """)
    )
    res = subprocess.run([sys.executable, str(script), "--kind", "zz"], capture_output=True, text=True)
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown kind 'zz'" in lines[0] and "Traceback" not in res.stderr


BAD_NUMBERS = [
    ("pretrain", "--lr", "nan", "not a finite number"),
    ("pretrain", "--lr", "-1", "outside (0, inf)"),
    ("pretrain", "--warmup", "2", "outside [0, 1]"),
    ("pretrain", "--hflip", "2", "outside [0, 1]"),
    ("pretrain", "--stop-after-steps", "-1", "outside [1, inf)"),
    ("pretrain", "--save-every", "0", "outside [1"),
    ("pretrain", "--log-every", "0", "outside [1"),
    ("pretrain", "--seed", "-1", "outside [0"),
    ("pretrain", "--label-smoothing", "2", "outside [0, 1)"),
    ("pretrain", "--workers", "-1", "outside [0"),
    ("pretrain", "--epochs", "nan", "not a finite number"),
    ("pretrain", "--image-size", "-4", "outside [1"),
    ("pretrain", "--momentum", "inf", "not a finite number"),
    ("pretrain", "--batch-size", "x", "not an integer"),
    ("finetune", "--trade-off", "nan", "not a finite number"),
    ("finetune", "--soft-temperature", "0", "outside (0"),
    ("estimate", "--temperature", "nan", "not a finite number"),
    ("estimate", "--temperature", "0", "outside (0"),
    ("dedup", "--plant", "-3", "outside [1"),
    ("dedup", "--chunk-size", "0", "outside [1"),
    ("dedup", "--feature-threshold", "1.5", "outside (0, 1]"),
    ("sample", "--seed", "-2", "outside [0"),
]


@pytest.mark.slow
@pytest.mark.parametrize("kind, flag, value, problem", BAD_NUMBERS)
def test_bad_numbers_are_refused_before_any_work(tmp_path, kind, flag, value, problem):
    """Every numeric flag is checked where it is parsed: exit 2, one line naming the flag, the
    value and the allowed interval; nothing is written (the inputs need not even exist)."""
    from datl.stages import KINDS

    from helpers import BIN, assert_user_error

    out = tmp_path / "out"
    argv = [str(BIN / KINDS[kind].command[0]), *KINDS[kind].command[1:], "--out", str(out), flag, value]
    res = subprocess.run(argv, capture_output=True, text=True)
    assert_user_error(res, flag, problem)
    assert not out.exists() and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind, flag, value, problem", BAD_NUMBERS)
def test_the_library_refuses_the_same_numbers_with_the_same_words(kind, flag, value, problem):
    """``run(Config(...))`` checks a config against the same declarations as the command line
    (one ``validate``): a library caller's bad number is refused before any work, with the
    flag's name and the same problem text."""
    from datl.core.errors import UserError

    config = CONFIGS[kind]
    command = click_command(kind)
    field = next(p.name for p in command.params if flag in p.opts)
    kinds = {f.name: f.type for f in dataclasses.fields(config)}
    number = float(value) if value in ("nan", "inf") or "." in value else value
    if isinstance(number, str) and number.lstrip("-").isdigit():
        number = float(number) if "float" in str(kinds[field]) else int(number)
    required = {p.name: "x" for p in command.params if p.required}
    cfg = config(**{**required, "steps": 1} if kind in ("pretrain", "finetune") else required)
    setattr(cfg, field, number)
    with pytest.raises(UserError) as e:
        cfg.check()
    assert str(e.value).startswith(flag) and problem in str(e.value)


def test_library_code_logs_and_the_command_prints_it(tmp_path, capsys, caplog):
    """A stage's run() prints nothing itself: it logs (here `curate sample`'s summary, at INFO
    under the datl logger); the command's terminal handler is what writes it to stdout."""
    import logging

    import numpy as np
    import pyarrow as pa

    from datl.curate.sample import SampleConfig, run
    from datl.manifests import ManifestMeta, write_manifest

    src = tmp_path / "s.parquet"
    write_manifest(
        src,
        pa.table(
            {
                "id": [f"r{i}" for i in range(10)],
                "path": ["x.png"] * 10,
                "label": pa.array(np.arange(10) % 2, pa.int32()),
            }
        ),
        ManifestMeta(classes=["a", "b"]),
    )
    with caplog.at_level(logging.INFO, logger="datl"):
        run(SampleConfig(source=str(src), uniform=True, size="4", out=str(tmp_path / "o.parquet")))
    assert capsys.readouterr().out == ""
    assert any(r.name == "datl.curate.sample" and r.getMessage().startswith("wrote ") for r in caplog.records)


def test_the_terminal_handler_sends_info_to_stdout_and_warnings_to_stderr(capsys):
    import logging

    from datl.core.cli import Console

    log = logging.getLogger("datl.test.console")
    log.addHandler(Console())
    log.propagate = False
    log.setLevel(logging.INFO)
    log.info("running ...", extra={"end": ""})
    log.info(" done")
    log.warning("warning: careful")
    out = capsys.readouterr()
    assert (out.out, out.err) == ("running ... done\n", "warning: careful\n")
