"""The one console script, ``avatar3d``, with a tyro subcommand per stage.

Each subcommand is a config dataclass (field docstrings are the help text) and a run
function taking that config. Stages register here by module path so that ``avatar3d
--help`` stays cheap and a stage's heavy imports happen only when it runs.
"""
from __future__ import annotations

import importlib
import signal
import sys

from avatar3d.errors import UserError

# name -> (module, config class, run function). Add a line per stage.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "preprocess": ("avatar3d.preprocess.pipeline", "PreprocessConfig", "run_preprocess"),
    "prior": ("avatar3d.audio.prior", "PriorCommand", "run_prior"),
    "fit": ("avatar3d.fit", "FitConfig", "run_fit"),
    "synth": ("avatar3d.synth.subject", "SynthConfig", "run_synth"),
    "demo": ("avatar3d.demo", "DemoConfig", "run_demo"),
    "render": ("avatar3d.drive.render", "RenderConfig", "run_render"),
    "eval": ("avatar3d.drive.evaluate", "EvalConfig", "run_eval"),
    "view": ("avatar3d.viewer.server", "ViewConfig", "run_view"),
    "export-web": ("avatar3d.gaussian.webpack", "ExportWebConfig", "run_export_web"),
}


def _load(name: str):
    module_name, config_name, run_name = COMMANDS[name]
    module = importlib.import_module(module_name)
    return getattr(module, config_name), getattr(module, run_name)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    import tyro

    argv = sys.argv[1:] if argv is None else list(argv)
    # Build only the chosen subcommand's parser when one is named (fast start-up, and one
    # stage's missing optional dependency never breaks another stage's command).
    names = [a for a in argv if a in COMMANDS][:1]
    chosen = names or list(COMMANDS)
    configs = {}
    runners = {}
    for name in chosen:
        config_cls, run = _load(name)
        configs[name] = config_cls
        runners[config_cls] = (name, run)
    try:
        if len(configs) == 1 and names:
            name = names[0]
            rest = argv[argv.index(name) + 1 :]
            cls = configs[name]
            # a config may start from defaults that depend on the command line (fit: the preset)
            default = cls.cli_default(rest) if hasattr(cls, "cli_default") else None
            config = tyro.cli(cls, args=rest, prog=f"avatar3d {name}", default=default)
        else:
            config = tyro.extras.subcommand_cli_from_dict(
                {n: c for n, c in configs.items()}, args=argv, prog="avatar3d"
            )
    except SystemExit as exc:  # tyro's --help / usage errors
        return int(exc.code or 0)
    except UserError as exc:  # a config's own validation (__post_init__)
        print(f"avatar3d {names[0] if names else ''}: error: {exc}", file=sys.stderr)
        return 2
    name, run = runners[type(config)]
    # SIGTERM (kill, timeout) unwinds like Ctrl-C, so atomic writers remove their temp files.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        run(config)
    except UserError as exc:
        print(f"avatar3d {name}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"avatar3d {name}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
