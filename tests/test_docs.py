"""Every command in README.md and docs/**/*.md is checked: `luban ...` lines parse with luban's own argument parser
(each alternative of `a | b` and each `[optional]` part), example configs they name exist and validate, YAML
configs shown in the docs validate, documented executables exist in this environment and accept their documented
sub-commands, documented benchmark scripts exist and take the documented flags, and links between the pages
resolve. (A few documented commands are also really run by other tests: the demo config, predict, serve.)"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

from luban.cli import build_parser
from luban.config import load_config, validate

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
BIN = Path(sys.executable).parent
SHELL_LANGS = {"bash", "sh", "shell", "console", "zsh"}
# tools of the operating system or of other projects that the docs use beside luban's own environment
SYSTEM_TOOLS = {"curl", "pip", "pip3", "python3", "ln", "cd", "git", "export", "kill", "ps", "ls", "cat", "mkdir",
                "chromium", "docker", "pipx", "uvx", "wget", "jq", "head", "tail", "echo", "unset", "source"}


def _rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


def code_blocks(page: Path):
    """(language, first line number, lines) of each fenced block of a Markdown page."""
    lang, start, lines = None, 0, []
    for i, line in enumerate(page.read_text(encoding="utf-8").splitlines(), start=1):
        m = re.match(r"^\s*```\s*([\w+-]*)", line)
        if m and lang is None:
            lang, start, lines = m.group(1).lower() or "text", i + 1, []
        elif m and lang is not None:
            yield lang, start, lines
            lang = None
        elif lang is not None:
            lines.append(line)


def _split(text: str) -> list[str] | None:
    try:
        return shlex.split(text, comments=True)
    except ValueError:  # an unclosed quote: the command goes on on the next line
        return None


def shell_commands(page: Path):
    """(line number, tokens) of every command in the page's shell blocks; continuation lines are joined (a trailing
    backslash, a quote still open, or an indented `[--option]` / `| alternative` line after a luban command)."""
    for lang, start, lines in code_blocks(page):
        if lang not in SHELL_LANGS:
            continue
        i = 0
        while i < len(lines):
            line, at = lines[i], start + i
            i += 1
            if lang == "console":
                if not line.startswith("$ "):
                    continue
                line = line[2:]
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            text = line
            while i < len(lines):
                nxt = lines[i]
                if text.rstrip().endswith("\\"):
                    text = text.rstrip()[:-1] + " " + nxt.strip()
                elif _split(text) is None:
                    text += "\n" + nxt
                elif (nxt.startswith(" ") and re.match(r"\s+(\[|\||--)", nxt)
                      and (_split(text) or [""])[0].endswith("luban")):
                    text += " " + nxt.strip()
                else:
                    break
                i += 1
            tokens = _split(text)
            assert tokens is not None, f"{_rel(page)}:{at}: unbalanced quotes in {text!r}"
            if tokens:
                yield at, tokens


def _strip_env(tokens: list[str]) -> list[str]:
    while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):
        tokens = tokens[1:]
    return tokens


def variants(args: list[str]) -> list[list[str]]:
    """The concrete argument lists a documented synopsis stands for: `[optional]` parts included, each value of
    `a|b|c` (one at a time), and each alternative of a standalone `|` (between option groups) on its own."""
    flat: list[list[str]] = []
    for t in args:
        if t.startswith("[") and not re.match(r"^\[[\d., \[\]'\"-]*\]$", t):
            t = t[1:]
        if t.endswith("]") and not re.search(r"=\[.*\]$|^\[.*\]$", t):
            t = t[:-1]
            if t == "...":  # `[ITEM ...]`, `[--set KEY=VALUE ...]`: more of the same
                continue
        if t == "":
            continue
        alts = t.split("|") if "|" in t and t != "|" and not t.startswith("--set") else [t]
        flat.append(alts)
    base = [alts[0] for alts in flat]
    lists = [base] + [base[:k] + [v] + base[k + 1:] for k, alts in enumerate(flat) for v in alts[1:]]
    out = []
    for tokens in lists:
        if "|" not in tokens:
            out.append(tokens)
            continue
        first_opt = next((k for k, t in enumerate(tokens) if t.startswith("-")), len(tokens))
        prefix, groups, cur = tokens[:first_opt], [], []
        for t in tokens[first_opt:]:
            if t == "|":
                groups.append(cur)
                cur = []
            else:
                cur.append(t)
        out += [prefix + g for g in groups + [cur]]
    return out


def _luban_cases():
    cases = []
    for page in PAGES:
        for n, tokens in shell_commands(page):
            tokens = _strip_env(tokens)
            if tokens and Path(tokens[0]).name == "luban":
                cases.append(pytest.param(tokens[1:], id=f"{_rel(page)}:{n}"))
    return cases


LUBAN_CASES = _luban_cases()


def test_the_docs_have_commands():
    assert len(LUBAN_CASES) > 60  # README + docs/ hold well over a hundred luban commands


@pytest.mark.parametrize("args", LUBAN_CASES)
def test_documented_luban_command_parses(args, capsys):
    parser = build_parser()
    for argv in variants(args):
        try:
            ns = parser.parse_args(argv)
        except SystemExit:
            pytest.fail(f"`luban {' '.join(argv)}` does not parse: {capsys.readouterr().err.strip()}")
        for t in argv:  # files of this repository that a command names must exist
            if t.startswith("examples/") or t.startswith("benchmarks/"):
                assert (ROOT / t).exists(), f"`luban {' '.join(argv)}`: {t} does not exist"
        config = getattr(ns, "config", None)
        if config and config.endswith((".yaml", ".yml")) and (ROOT / config).is_file():
            load_config(ROOT / config, getattr(ns, "set", None))  # raises ConfigError naming the problem


def _yaml_configs():
    cases = []
    for page in PAGES:
        for lang, start, lines in code_blocks(page):
            if lang in ("yaml", "yml"):
                tree = yaml.safe_load("\n".join(lines))
                if isinstance(tree, dict) and "task" in tree:
                    cases.append(pytest.param(tree, id=f"{_rel(page)}:{start}"))
    return cases


@pytest.mark.parametrize("tree", _yaml_configs())
def test_documented_yaml_config_validates(tree):
    validate(tree, "docs")


def _other_commands():
    cases = []
    for page in PAGES:
        venvs = set()
        for n, tokens in shell_commands(page):
            tokens = _strip_env(tokens)
            if not tokens:
                continue
            exe = tokens[0]
            if "-m" in tokens and "venv" in tokens:  # a helper environment made by the docs themselves
                venvs.add(tokens[tokens.index("venv") + 1].rstrip("/"))
            if Path(exe).name == "luban" or exe.split("/")[0] in venvs:
                continue
            cases.append(pytest.param(exe, tokens[1:], id=f"{_rel(page)}:{n}:{Path(exe).name}"))
    return cases


@lru_cache(maxsize=None)
def _help_rc(exe: str, sub: tuple[str, ...]) -> tuple[int, str]:
    r = subprocess.run([exe, *sub, "--help"], capture_output=True, text=True, timeout=180)
    return r.returncode, (r.stdout + r.stderr)[-2000:]


@pytest.mark.parametrize("exe,args", _other_commands())
def test_documented_executables_exist(exe, args):
    name = Path(exe).name
    if name in ("python", "python3") and args and args[0].endswith(".py"):
        script = ROOT / args[0]
        assert script.is_file(), f"{args[0]} does not exist"
        source = script.read_text(encoding="utf-8")
        for flag in (a.split("=")[0] for a in args[1:] if a.startswith("--")):
            flag = flag.strip("[]")
            assert f'"{flag}"' in source or f"'{flag}'" in source, f"{args[0]} has no option {flag}"
        return
    if name == "make":
        targets = re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(encoding="utf-8"), re.M)
        for t in args:
            assert t in targets, f"make {t}: no such target in the Makefile"
        return
    if name in SYSTEM_TOOLS or name in ("python", "python3"):
        return
    path = BIN / name
    assert path.is_file(), f"`{name}` is documented but not installed in {BIN} (add it to an extra)"
    sub = tuple(a for a in _leading_words(args))
    rc, out = _help_rc(str(path), sub)
    assert rc == 0, f"`{name} {' '.join(sub)} --help` failed:\n{out}"


def _leading_words(args):
    for a in args:
        if not re.fullmatch(r"[a-z][a-z-]*", a):
            return
        yield a


def test_links_between_pages_resolve():
    bad = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        text = re.sub(r"```.*?```", "", text, flags=re.S)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue
            path = target.split("#")[0]
            if not (page.parent / path).resolve().exists():
                bad.append(f"{_rel(page)}: {target}")
    # pages that other parts of issue 17 add; the lead merges them (drop a name once its page is in)
    pending = set()
    bad = [b for b in bad if b.split(": ", 1)[1] not in pending]
    assert not bad, "broken links:\n" + "\n".join(bad)


def test_readme_stays_short():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) <= 300


def test_every_optional_module_names_an_extra_that_installs_it():
    import tomllib

    from luban.extras import EXTRA_OF

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]["optional-dependencies"]
    for module, (package, extra) in EXTRA_OF.items():
        names = [re.split(r"[<>=;\[ ]", req)[0].lower() for req in extras[extra]]
        assert package.lower() in names, f"{module}: {package} is not in the {extra!r} extra"
    assert "luban[" in extras["all"][0] and all(e in extras["all"][0] for e in {x for _, x in EXTRA_OF.values()})


def test_a_missing_extra_is_one_clear_error(monkeypatch, capsys):
    import luban.cli as cli

    def needs_pillow(a):
        raise ModuleNotFoundError("No module named 'PIL'", name="PIL")

    monkeypatch.setattr(cli, "_cmd_datasets_list", needs_pillow)
    assert cli.main(["datasets", "list"]) == 2
    assert capsys.readouterr().err == "error: luban datasets needs pillow (not installed): pip install 'luban[vision]'\n"

    def other(a):
        raise ModuleNotFoundError("No module named 'nothing_of_ours'", name="nothing_of_ours")

    monkeypatch.setattr(cli, "_cmd_datasets_list", other)
    assert cli.main(["datasets", "list"]) == 1  # not an optional dependency: a bug, reported as one (exit 1)
    assert "internal error (ModuleNotFoundError: No module named 'nothing_of_ours')" in capsys.readouterr().err
