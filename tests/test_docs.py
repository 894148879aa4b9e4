"""The README and docs/*.md stay true to the code: every command line they quote uses flags its
command has, and every relative link lands on a file (and heading) that exists.

    python -m pytest -q -n 0 tests/test_docs.py

Nothing is run. Each quoted command line (fenced ```bash / ```sh / ```console / ``` blocks, and
inline `code` that starts with a command) is split with shlex; the part that starts at a covid_ddp
command (`covid-ddp-*`, `python launch/X.py`, `python -m covid_ddp.X`, `python scripts/X.py`,
`python benchmarks/X.py`, `sbatch launch/slurm.sbatch`) is checked against that command's own
argparse parser: every --flag must be one of its option strings exactly (no abbreviations), and a
literal value of a flag with choices (or an int/float type) must be one it takes. What comes
before the command (`accelerate launch ...`, `torchrun ...`, `VAR=value`, `$ `) is the
launcher's and is not checked. The parsers: a console script's module's `build_parser()`
(setup.cfg), a launch script's `from covid_ddp.X import main`, and for the scripts and
benchmarks, which build their parser inside `main()`, one made from their `add_argument` calls.
"""

from __future__ import annotations

import argparse
import ast
import configparser
import functools
import importlib
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}
SEPARATORS = {"|", "||", "&&", ";", "&"}
SCRIPT = re.compile(r"^(launch|scripts|benchmarks)/[\w.-]+\.(py|sh|sbatch)$")
CONSOLE_SCRIPT = re.compile(r"^covid-ddp-[a-z-]+$")
ENV_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
NEGATIVE_NUMBER = re.compile(r"^-\d")
# Inline `code` worth checking: it starts with a command or with a launcher of one.
INLINE_COMMAND = re.compile(r"^(\$ )?([A-Z_]+=\S+ )*(covid-ddp-|python |accelerate launch |torchrun |sbatch )")

# The module whose build_parser() a console script's main() parses with, where it is not its own.
PARSER_MODULE = {"covid_ddp.commands.train": "covid_ddp.training.config"}
# Scripts that hand their arguments to covid-ddp-train (launch/slurm.sbatch: "flags after the script").
TRAIN_FLAGS_SCRIPTS = {"launch/slurm.sbatch"}
# Commands that pass flags on to covid-ddp-train: everything after `--`, and NAME=FLAGS values.
TRAIN_FLAGS_AFTER_DASHES = {"covid_ddp.commands.report", "scripts/seeds.py"}
TRAIN_FLAGS_IN_VALUE = {("covid_ddp.commands.report", "--variant"), ("benchmarks/whole_run.py", "--variant")}


# --- which parser a command line uses ---------------------------------------------------------


@functools.cache
def console_scripts() -> dict[str, str]:
    """{covid-ddp-name: module}, from setup.cfg."""
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    entries = {}
    for line in config["options.entry_points"]["console_scripts"].strip().splitlines():
        name, _, target = (part.strip() for part in line.partition("="))
        entries[name] = target.split(":")[0]
    return entries


@functools.cache
def module_parser(module: str) -> argparse.ArgumentParser:
    return importlib.import_module(PARSER_MODULE.get(module, module)).build_parser()


def train_parser() -> argparse.ArgumentParser:
    return module_parser("covid_ddp.commands.train")


@functools.cache
def launch_module(script: str) -> str | None:
    """launch/X.py's `from covid_ddp.M import main` -> covid_ddp.M."""
    for node in ast.walk(ast.parse((ROOT / script).read_text())):
        if isinstance(node, ast.ImportFrom) and any(alias.name == "main" for alias in node.names):
            return node.module
    return None


@functools.cache
def source_parser(script: str) -> argparse.ArgumentParser:
    """The parser a script builds inside main(), remade from its add_argument calls (not importing
    it: the benchmarks import torch and more at the top)."""
    parser = argparse.ArgumentParser(prog=script, add_help=True)
    for node in ast.walk(ast.parse((ROOT / script).read_text())):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "add_argument"):
            continue
        names = [arg.value for arg in node.args if isinstance(arg, ast.Constant) and isinstance(arg.value, str)]
        options = [name for name in names if name.startswith("-")]
        if not options:
            continue  # a positional: any value
        keywords = {}
        for keyword in node.keywords:
            if keyword.arg in ("action", "nargs", "choices"):
                try:
                    keywords[keyword.arg] = ast.literal_eval(keyword.value)
                except ValueError:
                    pass  # not a literal: not checked
            elif keyword.arg == "type" and isinstance(keyword.value, ast.Name) and keyword.value.id in ("int", "float"):
                keywords["type"] = {"int": int, "float": float}[keyword.value.id]
        parser.add_argument(*options, **keywords)
    return parser


def resolve(program: str) -> tuple[str, argparse.ArgumentParser | None, str | None]:
    """(the command's key, its parser, or None with the reason it has none)."""
    if CONSOLE_SCRIPT.match(program):
        module = console_scripts().get(program)
        if module is None:
            return program, None, f"{program} is not a console script of setup.cfg"
        return module, module_parser(module), None
    if program.startswith("covid_ddp"):  # python -m covid_ddp.X
        if program not in console_scripts().values():
            return program, None, f"python -m {program}: not a command of covid_ddp"
        return program, module_parser(program), None
    if not (ROOT / program).is_file():
        return program, None, f"{program}: no such file"
    if program in TRAIN_FLAGS_SCRIPTS:
        return "covid_ddp.commands.train", train_parser(), None
    if program.startswith("launch/") and program.endswith(".py"):
        module = launch_module(program)
        if module is None:
            return program, None, f"{program} imports no covid_ddp main"
        return module, module_parser(module), None
    if program.endswith(".py"):
        return program, source_parser(program), None
    return program, argparse.ArgumentParser(prog=program), None  # a shell script: no flags


# --- reading the documents -----------------------------------------------------------------------


def fenced_blocks(text: str):
    """(language, line number of the first line, lines) of every fenced block."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = re.match(r"^\s*(```+|~~~+)\s*([\w+-]*)", lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.groups()
        start = index + 1
        index = start
        while index < len(lines) and not lines[index].strip().startswith(fence[:3]):
            index += 1
        yield language.lower(), start + 1, lines[start:index]
        index += 1


def block_commands(language: str, first_line: int, lines: list[str]):
    """(line number, command text) of a shell block: `\\` continuations joined, `$ ` prompts
    dropped; in a console block only the prompted lines are commands."""
    pending, pending_line = None, None
    for number, raw in enumerate(lines, first_line):
        line = raw.strip()
        if pending is None:
            if language == "console" and not line.startswith("$ "):
                continue
            pending_line, pending = number, ""
            line = line[2:] if line.startswith("$ ") else line
        if line.endswith("\\"):
            pending += line[:-1]
            continue
        command = pending + line
        pending = None
        if command.strip():
            yield pending_line, command
    if pending:
        yield pending_line, pending


def inline_commands(text: str):
    """(line number, command text) of inline `code` that starts with a command."""
    without_blocks = re.sub(r"^\s*```.*?^\s*```", lambda m: "\n" * m.group(0).count("\n"), text,
                            flags=re.S | re.M)
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", without_blocks):
        code = " ".join(match.group(1).split())
        if INLINE_COMMAND.match(code):
            yield without_blocks.count("\n", 0, match.start()) + 1, code


def simple_commands(tokens: list[str]):
    """Split a token list at |, &&, ; ..."""
    current = []
    for token in tokens:
        if token in SEPARATORS:
            yield current
            current = []
        elif token.endswith(";") and len(token) > 1:
            current.append(token[:-1])
            yield current
            current = []
        else:
            current.append(token)
    yield current


def find_program(tokens: list[str]) -> tuple[str, list[str]] | None:
    """(program, its arguments) where the tokens run a covid_ddp command; what comes before
    (VAR=value, python, accelerate launch ..., torchrun ..., sbatch ...) is the launcher's."""
    for index, token in enumerate(tokens):
        if ENV_ASSIGNMENT.match(token) and not token.startswith("-"):
            continue
        if CONSOLE_SCRIPT.match(token) or SCRIPT.match(token):
            return token, tokens[index + 1:]
        if token == "-m" and index + 1 < len(tokens) and tokens[index + 1].startswith("covid_ddp"):
            return tokens[index + 1], tokens[index + 2:]
    return None


# --- checking one command ------------------------------------------------------------------------


def is_placeholder(value: str) -> bool:
    """DIR, <run>, $R, {data}, ...: a value the reader fills in."""
    return (any(mark in value for mark in "$<>{}") or "..." in value
            or re.fullmatch(r"[A-Z][A-Z0-9_]*", value) is not None)


def option_like(token: str) -> bool:
    return token.startswith("-") and token != "-" and not NEGATIVE_NUMBER.match(token)


def check_arguments(key: str, parser: argparse.ArgumentParser, arguments: list[str], where: str) -> list[str]:
    """Problems with these arguments of the command `key` (its parser: `parser`)."""
    problems = []
    tokens = [token.lstrip("[").rstrip("]") for token in arguments]  # [--threshold 0.5]: optional in the doc
    tokens = [token for token in tokens if token]
    index = 0
    while index < len(tokens):
        token = tokens[index]
        index += 1
        if token == "--":
            if key in TRAIN_FLAGS_AFTER_DASHES:
                problems += check_arguments("covid_ddp.commands.train", train_parser(), tokens[index:], where)
            break
        if not option_like(token):
            continue  # a positional argument
        flag, has_value, value = token.partition("=")
        action = parser._option_string_actions.get(flag)  # exact: no abbreviations
        if action is None:
            problems.append(f"{where}: {parser.prog} has no {flag}")
            continue
        if has_value:
            values = [value]
        elif action.nargs == 0:
            values = []
        elif action.nargs in (None, 1, "?"):
            if index < len(tokens) and not option_like(tokens[index]):
                values = [tokens[index]]
                index += 1
            else:
                values = []
                if action.nargs != "?":
                    problems.append(f"{where}: {parser.prog} {flag} needs a value")
        else:  # +, *, N
            values = []
            while index < len(tokens) and not option_like(tokens[index]) and tokens[index] != "--":
                values.append(tokens[index])
                index += 1
        for value in values:
            problems += check_value(parser.prog, flag, action, value, where)
            if (key, flag) in TRAIN_FLAGS_IN_VALUE and "=" in value:
                flags = shlex.split(value.partition("=")[2])
                problems += check_arguments("covid_ddp.commands.train", train_parser(), flags, f"{where} ({flag} {value})")
    return problems


def check_value(prog: str, flag: str, action: argparse.Action, value: str, where: str) -> list[str]:
    if is_placeholder(value):
        return []
    if action.choices is not None and value not in action.choices:
        return [f"{where}: {prog} {flag} {value}: not one of {', '.join(map(str, action.choices))}"]
    if action.type in (int, float):
        try:
            action.type(value)
        except ValueError:
            return [f"{where}: {prog} {flag} {value}: not a number"]
    return []


def check_command(command: str, where: str, strict: bool = True) -> tuple[int, list[str]]:
    """(how many covid_ddp commands the line runs, problems with them). A line shlex cannot
    split is a problem where `strict` (a code block), skipped otherwise (inline prose)."""
    try:
        tokens = shlex.split(command, comments=True)
    except ValueError as error:
        return 0, [f"{where}: shlex cannot split {command!r}: {error}"] if strict else []
    checked, problems = 0, []
    for simple in simple_commands(tokens):
        found = find_program(simple)
        if found is None:
            continue
        program, arguments = found
        key, parser, missing = resolve(program)
        checked += 1
        if parser is None:
            problems.append(f"{where}: {missing}")
        else:
            problems += check_arguments(key, parser, arguments, where)
    return checked, problems


def check_document(text: str, name: str) -> tuple[int, list[str]]:
    """(commands checked, problems) of one markdown document."""
    checked, problems = 0, []
    for language, first_line, lines in fenced_blocks(text):
        if language not in SHELL_BLOCKS:
            continue
        for number, command in block_commands(language, first_line, lines):
            count, found = check_command(command, f"{name}:{number}")
            checked += count
            problems += found
    for number, command in inline_commands(text):
        count, found = check_command(command, f"{name}:{number}", strict=False)
        checked += count
        problems += found
    return checked, problems


# --- links -----------------------------------------------------------------------------------


def heading_anchors(text: str) -> set[str]:
    """GitHub's anchors of a document's headings (lower case, punctuation dropped, spaces to
    dashes, -1, -2 ... for repeats)."""
    anchors, seen = set(), {}
    without_blocks = re.sub(r"^\s*```.*?^\s*```", "", text, flags=re.S | re.M)
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", without_blocks, flags=re.M):
        title = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link in a heading: its text
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def relative_links(text: str):
    """(line number, target) of every markdown link that is not a URL."""
    without_blocks = re.sub(r"^\s*```.*?^\s*```", lambda m: "\n" * m.group(0).count("\n"), text,
                            flags=re.S | re.M)
    without_code = re.sub(r"`[^`\n]*`", "", without_blocks)
    for match in re.finditer(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", without_code):
        target = match.group(1)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            yield without_code.count("\n", 0, match.start()) + 1, target


def link_problems(document: Path, text: str) -> list[str]:
    problems = []
    for number, target in relative_links(text):
        path, _, anchor = target.partition("#")
        where = f"{document.relative_to(ROOT)}:{number}"
        destination = (document.parent / path).resolve() if path else document
        if not destination.exists():
            problems.append(f"{where}: {target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in heading_anchors(destination.read_text()):
            problems.append(f"{where}: {target}: no heading #{anchor} in {destination.relative_to(ROOT)}")
    return problems


# --- the tests -------------------------------------------------------------------------------


def test_every_quoted_command_uses_flags_its_command_has():
    checked, problems = 0, []
    for document in DOCS:
        count, found = check_document(document.read_text(), str(document.relative_to(ROOT)))
        checked += count
        problems += found
    assert not problems, "flags the documents quote that their commands lack:\n" + "\n".join(problems)
    assert checked > 50, f"only {checked} commands found in the documents: is the extraction broken?"


def test_the_checker_catches_a_misspelt_flag():
    doc = "\n".join([
        "```bash",
        "covid-ddp-train --data-dir DIR --epoch 3          # --epochs, abbreviated: refused",
        "python launch/train.py --epochs 3 --mixed-precision fp8",
        "covid-ddp-predict --weights W.pth --gradcams out/ scans/",
        "python -m covid_ddp.commands.evaluate --weights W.pth --split every",
        "python scripts/seeds.py --seeds 1,2 --output-dir runs/s -- --dataset synthetic --epoch 2",
        "covid-ddp-report --data-dir A B --output-dir R --variant 'x=--augment-mark'",
        "covid-ddp-trian --epochs 3",
        "python launch/trian.py --epochs 3",
        "```",
        "Prose with `covid-ddp-evaluate --weight W.pth` inline.",
    ])
    checked, problems = check_document(doc, "fake.md")
    assert checked == 9
    expected = ["fake.md:2: covid-ddp-train has no --epoch",
                "fake.md:3: covid-ddp-train --mixed-precision fp8: not one of no, fp16, bf16, auto",
                "fake.md:4: covid-ddp-predict has no --gradcams",
                "fake.md:5: covid-ddp-evaluate --split every: not one of test, val, all",
                "fake.md:6: covid-ddp-train has no --epoch",
                "fake.md:7 (--variant x=--augment-mark): covid-ddp-train has no --augment-mark",
                "fake.md:8: covid-ddp-trian is not a console script of setup.cfg",
                "fake.md:9: launch/trian.py: no such file",
                "fake.md:11: covid-ddp-evaluate has no --weight"]
    assert problems == expected


def test_the_checker_reads_launchers_prompts_and_continuations():
    """Launcher flags before the script are not train's; after it they are; `\\` joins lines."""
    doc = "\n".join([
        "```bash",
        "# a comment line",
        "OMP_NUM_THREADS=1 torchrun --nproc_per_node 2 --max-restarts 3 launch/train.py --resume auto \\",
        "    --output-dir runs/cxr --epochs 3     # a comment after the command",
        "accelerate launch --config_file accelerate_config.yaml --num_machines 2 launch/train.py --output-dir $R",
        "RUN_DIR=/shared/runs sbatch --nodes 2 launch/slurm.sbatch --epochs 30",
        "python launch/predict.py --weights <run>/COVID_binary_classifier.pth in/ [--threshold 0.5] [--gradcam DIR]",
        "pip install -e \".[dev]\" && python benchmarks/throughput.py --precision bf16 --compile",
        "```",
        "```console",
        "$ covid-ddp-train --data-dir data/mine --resume auto --lr 0.0005",
        "covid-ddp-train: error: --resume: output, not a command --not-a-flag",
        "```",
        "```python",
        "# covid-ddp-train --not-checked: not a shell block",
        "```",
    ])
    checked, problems = check_document(doc, "fake.md")
    assert (checked, problems) == (6, [])
    broken = doc.replace("--output-dir runs/cxr --epochs 3", "--output-dir runs/cxr --epoch 3")
    assert check_document(broken, "fake.md")[1] == ["fake.md:3: covid-ddp-train has no --epoch"]


def test_every_relative_link_lands_on_a_file_and_heading():
    problems = [problem for document in DOCS for problem in link_problems(document, document.read_text())]
    assert not problems, "\n".join(problems)
    broken = "See [data](docs/data.md#no-such-part) and [gone](docs/gone.md)."
    assert link_problems(ROOT / "README.md", broken) == [
        "README.md:1: docs/data.md#no-such-part: no heading #no-such-part in docs/data.md",
        "README.md:1: docs/gone.md: no such file"]


def test_the_readme_links_every_docs_page_and_names_every_command():
    readme = (ROOT / "README.md").read_text()
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"(docs/{page.name})" in readme, f"README.md does not link docs/{page.name}"
    for name in console_scripts():
        assert f"`{name}`" in readme, f"README.md does not name the command {name}"


def test_the_readme_quotes_the_test_command_ci_runs():
    """.ci/run runs the README's test command: the two must stay the same line."""
    command = "python -m pytest -q"
    assert command in (ROOT / ".ci" / "run").read_text().splitlines()
    blocks = [line.strip() for language, _, lines in fenced_blocks((ROOT / "README.md").read_text())
              if language in SHELL_BLOCKS for line in lines]
    assert command in blocks


def test_the_configuration_table_names_flags_covid_ddp_train_has():
    table = (ROOT / "docs" / "configuration.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| `--")]
    flags = [flag for row in rows for flag in re.findall(r"`(--[\w-]+)`", row.split("|")[1])]
    assert len(flags) > 30
    options = train_parser()._option_string_actions
    assert [flag for flag in flags if flag not in options] == []


def test_the_bad_input_counts_in_testing_md_are_the_suites():
    """docs/testing.md's table of bad-input cases is the one tests/test_bad_inputs.py prints."""
    from test_bad_inputs import counts_table

    indented = "".join(f"  {line}\n" for line in counts_table().splitlines())
    assert indented in (ROOT / "docs" / "testing.md").read_text(), f"paste into docs/testing.md:\n{indented}"
